"""Cross-domain retrieval evaluation of RGCD-Rep (``llmrec rgcd eval``).

For each held-out (test) user of a :class:`~llmrec.rgcd.domains.CrossDomainData`, the source-domain history is
the query and the user's target-domain items are the relevant ones; the whole target catalogue is ranked.
Recall@K and NDCG@K are :mod:`llmrec.eval.ranking`'s (trec convention, binary relevance).

A *method* is ``ENCODER`` (its vectors used as they are), ``ENCODER+nosplit`` (a head trained with the
contrastive objective alone), ``ENCODER+full`` (transferable/residual split with all losses; the
transferable part retrieves) or ``popularity`` (target items by their count among training users).
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


def evaluate_methods(cd: CrossDomainData, features: dict[str, ItemFeatures], methods: Sequence[str],
                     head_config: HeadConfig | None = None, ks: Sequence[int] = (10, 20),
                     log=print) -> list[dict]:
    """One row per method: its metrics, training time and (heads) final losses.

    ``features[encoder]`` must be in :func:`item_table` order.
    """
    head_config = head_config or HeadConfig()
    ids, doms = item_table(cd)
    domain_idx = np.array([0 if d == cd.source else 1 for d in doms])
    pairs = pair_rows(cd, ids)
    histories = [cd.history[u] for u in cd.test_users]
    kmax = max(ks)
    rows = []
    for method in methods:
        t0 = time.perf_counter()
        row: dict = {"method": method}
        if method == "popularity":
            topk = popularity_topk(cd, ids, kmax)
        else:
            encoder, _, head_kind = method.partition("+")
            if encoder not in features:
                raise LlmrecError(f"method '{method}': no features for encoder '{encoder}' "
                                  f"(have: {sorted(features)})")
            if head_kind and head_kind not in HEADS:
                raise LlmrecError(f"method '{method}': head must be one of {list(HEADS)}")
            f = features[encoder]
            if head_kind:
                cfg = replace(head_config, head_split=head_kind == "full")
                head, history = train_head(f.text, pairs, domain_idx, cfg, f.image, f.has_image)
                vectors, _ = head.embed(f.text, f.image, f.has_image)
                row["final_losses"] = {k: round(v, 4) for k, v in history[-1].items() if k != "epoch"} \
                    if history else {}
            else:
                vectors = _unit(f.text)
            topk, _ = CrossDomainRetriever(ids, doms, vectors).search(histories, cd.target, kmax)
        row.update(retrieval_metrics(topk, cd, ids, ks))
        row["seconds"] = round(time.perf_counter() - t0, 2)
        log(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict], ks: Sequence[int]) -> str:
    cols = [f"{m}@{k}" for k in ks for m in ("recall", "ndcg")]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        lines.append(f"| {r['method']} | " + " | ".join(f"{r[c]:.4f}" for c in cols) + " |")
    return "\n".join(lines)
