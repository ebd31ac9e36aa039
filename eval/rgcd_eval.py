"""Cross-domain retrieval evaluation of RGCD-Rep (``llmrec rgcd eval``).

For each held-out (test) user of a :class:`~llmrec.rgcd.domains.CrossDomainData`, the source-domain history is
the query and the user's target-domain items are the relevant ones; the whole target catalogue is ranked.
Recall@K and NDCG@K are :mod:`llmrec.eval.ranking`'s (trec convention, binary relevance).

A *method* is ``ENCODER`` (its vectors used as they are), ``ENCODER+nosplit`` (a head trained with the
contrastive objective alone), ``ENCODER+full`` (transferable/residual split with all losses; the
transferable part retrieves) or ``popularity`` (target items by their count among training users).
``+pop`` after any encoder method (``minilm+nosplit+pop``) adds the popularity prior to the score:
``cosine + W * popularity_bias`` (:func:`llmrec.rgcd.export.popularity_bias`, counts of training users).
W is given, or chosen from a grid on a *dev* split of the training users (:meth:`CrossDomainData.dev_split`:
head, counts and pairs from the other training users), never on the evaluation users.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from llmrec.errors import LlmrecError
from llmrec.eval.ranking import UserItems, evaluate_topk
from llmrec.rgcd.config import HeadConfig
from llmrec.rgcd.decompose import train_head
from llmrec.rgcd.domains import CrossDomainData
from llmrec.rgcd.export import CrossDomainRetriever, ItemFeatures, _unit

HEADS = ("nosplit", "full")
POP = "pop"
POPULARITY_GRID = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)


def parse_method(method: str) -> tuple[str, str, bool]:
    """``ENCODER[+HEAD][+pop]`` -> (encoder, head kind or "", with the popularity prior)."""
    encoder, *rest = method.split("+")
    pop = POP in rest
    rest = [r for r in rest if r != POP]
    if len(rest) > 1 or (rest and rest[0] not in HEADS) or not encoder:
        raise LlmrecError(f"method '{method}': expected ENCODER[+HEAD][+{POP}] with HEAD one of {list(HEADS)}")
    return encoder, rest[0] if rest else "", pop


def item_counts(cd: CrossDomainData, ids: Sequence[str], users: Sequence[str] | None = None) -> np.ndarray:
    """``[len(ids)]`` int64: how many of ``users`` (default: the training users) interacted with each item."""
    counts = cd.interaction_counts(None if users is None else list(users))
    return np.array([counts.get(i, 0) for i in ids], dtype=np.int64)


def item_table(cd: CrossDomainData) -> tuple[list[str], list[str]]:
    """Row order used everywhere: source items then target items, each sorted by id."""
    ids = cd.domain_items(cd.source) + cd.domain_items(cd.target)
    return ids, [cd.items[i].domain for i in ids]


def pair_rows(cd: CrossDomainData, ids: Sequence[str]) -> np.ndarray:
    row = {iid: r for r, iid in enumerate(ids)}
    return np.array([(row[s], row[t]) for s, t in cd.pairs], dtype=np.int64).reshape(-1, 2)


def retrieval_metrics(topk: np.ndarray, cd: CrossDomainData, ids: Sequence[str], ks: Sequence[int]) -> dict:
    """Recall@K / NDCG@K of ranked rows ``topk [n_test, K]`` against the test users' target items."""
    row = {iid: r for r, iid in enumerate(ids)}
    positives = UserItems.from_lists([sorted({row[i] for i in cd.target_items_of[u]}) for u in cd.test_users])
    names = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    res = evaluate_topk(topk, positives, ",".join(names))
    return {n: float(res.metrics[n]) for n in names}


def popularity_topk(cd: CrossDomainData, ids: Sequence[str], k: int) -> np.ndarray:
    """Target items by interaction count among training users (ties: id order), the same list for everyone."""
    counts = Counter(i for u in cd.train_users for i in cd.target_items_of[u])
    target_rows = [r for r, iid in enumerate(ids) if cd.items[iid].domain == cd.target]
    ranked = sorted(target_rows, key=lambda r: (-counts[ids[r]], ids[r]))[:k]
    return np.tile(np.array(ranked, dtype=np.int64), (len(cd.test_users), 1))


def _method_vectors(cd: CrossDomainData, f: ItemFeatures, head_kind: str, head_config: HeadConfig
                    ) -> tuple[np.ndarray, dict]:
    """Item vectors of one encoder + head kind on ``cd``'s training pairs: (unit vectors, final losses)."""
    if not head_kind:
        return _unit(f.text), {}
    ids, doms = item_table(cd)
    domain_idx = np.array([0 if d == cd.source else 1 for d in doms])
    cfg = replace(head_config, head_split=head_kind == "full")
    head, history = train_head(f.text, pair_rows(cd, ids), domain_idx, cfg, f.image, f.has_image)
    vectors, _ = head.embed(f.text, f.image, f.has_image)
    return vectors, ({k: round(v, 4) for k, v in history[-1].items() if k != "epoch"} if history else {})


def popularity_sweep(cd: CrossDomainData, vectors: np.ndarray, grid: Sequence[float], ks: Sequence[int]
                     ) -> list[dict]:
    """Metrics of ``cosine + W * popularity`` on ``cd``'s evaluation users for each W of ``grid``."""
    ids, doms = item_table(cd)
    retriever = CrossDomainRetriever(ids, doms, vectors, counts=item_counts(cd, ids))
    histories = [cd.history[u] for u in cd.test_users]
    out = []
    for w in grid:
        topk, _ = retriever.search(histories, cd.target, max(ks), popularity_weight=w)
        out.append({"weight": float(w), **retrieval_metrics(topk, cd, ids, ks)})
    return out


def tune_popularity_weight(cd: CrossDomainData, f: ItemFeatures, head_kind: str, head_config: HeadConfig,
                           grid: Sequence[float] = POPULARITY_GRID, ks: Sequence[int] = (10, 20),
                           dev_frac: float = 0.2, metric: str | None = None) -> tuple[float, list[dict]]:
    """The W of ``grid`` with the best ``metric`` (default recall at the largest K) on a dev split of the
    training users; the head is retrained on the remaining training users' pairs, the counts are theirs.
    Ties go to the smaller W. Returns (W, the dev sweep)."""
    dev = cd.dev_split(dev_frac)
    metric = metric or f"recall@{max(ks)}"
    vectors, _ = _method_vectors(dev, f, head_kind, head_config)
    sweep = popularity_sweep(dev, vectors, sorted(grid), ks)
    best = max(sweep, key=lambda r: (r[metric], -r["weight"]))
    return best["weight"], sweep


def evaluate_methods(cd: CrossDomainData, features: dict[str, ItemFeatures], methods: Sequence[str],
                     head_config: HeadConfig | None = None, ks: Sequence[int] = (10, 20),
                     log=print, popularity_weight: float | None = None,
                     popularity_grid: Sequence[float] = POPULARITY_GRID, dev_frac: float = 0.2) -> list[dict]:
    """One row per method: its metrics, training time and (heads) final losses.

    ``features[encoder]`` must be in :func:`item_table` order. ``+pop`` methods use ``popularity_weight``,
    or (None) the W of ``popularity_grid`` best on the dev split; their row also holds the dev sweep and,
    for transparency, the same grid on the evaluation users (``test_grid``, not used to choose).
    """
    head_config = head_config or HeadConfig()
    ids, doms = item_table(cd)
    histories = [cd.history[u] for u in cd.test_users]
    kmax = max(ks)
    rows = []
    trained: dict[tuple[str, str], tuple[np.ndarray, dict]] = {}  # a method with and without +pop: one head
    for method in methods:
        t0 = time.perf_counter()
        row: dict = {"method": method}
        if method == "popularity":
            topk = popularity_topk(cd, ids, kmax)
        else:
            encoder, head_kind, pop = parse_method(method)
            if encoder not in features:
                raise LlmrecError(f"method '{method}': no features for encoder '{encoder}' "
                                  f"(have: {sorted(features)})")
            f = features[encoder]
            if (encoder, head_kind) not in trained:
                trained[encoder, head_kind] = _method_vectors(cd, f, head_kind, head_config)
            vectors, losses = trained[encoder, head_kind]
            if losses:
                row["final_losses"] = losses
            if pop:
                weight = popularity_weight
                if weight is None:
                    weight, row["dev_grid"] = tune_popularity_weight(cd, f, head_kind, head_config,
                                                                     popularity_grid, ks, dev_frac)
                    row["test_grid"] = popularity_sweep(cd, vectors, sorted(popularity_grid), ks)
                row["popularity_weight"] = float(weight)
                retriever = CrossDomainRetriever(ids, doms, vectors, counts=item_counts(cd, ids))
                topk, _ = retriever.search(histories, cd.target, kmax, popularity_weight=weight)
            else:
                topk, _ = CrossDomainRetriever(ids, doms, vectors).search(histories, cd.target, kmax)
        row.update(retrieval_metrics(topk, cd, ids, ks))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                     if k not in ("dev_grid", "test_grid")))
        for name in ("dev_grid", "test_grid"):
            if name in row:
                log(f"  {name} ({'chosen on' if name == 'dev_grid' else 'not used to choose'}): " + ", ".join(
                    f"W={r['weight']:g}: recall@{kmax}={r[f'recall@{kmax}']:.4f}" for r in row[name]))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], ks: Sequence[int]) -> str:
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        name = r["method"] + (f" (W={r['popularity_weight']:g})" if "popularity_weight" in r else "")
        lines.append(f"| {name} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)
