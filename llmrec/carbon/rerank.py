"""Carbon-aware re-ranking: trade a CF model's relevance against the estimated PCF of each item.

For user u and item i::

    score(u, i) = (1 - lambda) * rel(u, i) - lambda * carbon(i)

- ``rel``: the model's score min-max normalised per user over the items the user has not seen
  (best unseen item 1, worst 0; a user whose unseen items all tie gets 0 everywhere).
- ``carbon``: the item's estimated PCF (kg CO2e) in log10 space, min-max normalised over the
  catalog (lowest-carbon item 0, highest 1). Footprints span orders of magnitude, so a linear scale
  would make every item but the few heaviest look carbon-free. Items without an estimate get the
  catalog median.
- Seen items (train + valid for a ``llmrec.cf`` run) get -inf and are never recommended.

lambda 0 is the model's own order, lambda 1 the lowest-carbon unseen items first.
Item PCFs come from ``llmrec carbon estimate`` (``read_pcf``: its .jsonl / .csv, or any file with
item_id/id and pcf_kg/value_kg columns).

numpy does it all: this is a weighted sum and a top-k per row, vectorised over a [users, items]
block (``rerank``); ``rerank_loop`` is the straightforward per-user version the tests and
bench/carbon_rerank.py compare it with.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmrec.errors import DataError, LlmrecError
from llmrec.jsonl import iter_jsonl

ID_COLUMNS = ("item_id", "id")
PCF_COLUMNS = ("pcf_kg", "value_kg")


def read_pcf(path: str | Path, item_ids: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(ids, pcf_kg) from a PCF file; with ``item_ids``: PCFs aligned to them (NaN where missing).

    Formats: .jsonl (``llmrec carbon estimate`` output: ``id`` + ``value_kg``, or ``item_id`` + ``pcf_kg``)
    or .csv with the same column names.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such PCF file")
    if path.suffix.lower() in (".jsonl", ".json"):
        rows = [r for _, r in iter_jsonl(path)]
        header = list(rows[0]) if rows else []
    else:
        import pandas as pd

        frame = pd.read_csv(path, dtype={c: str for c in ID_COLUMNS})
        rows, header = frame.to_dict("records"), list(frame.columns)
    if not rows:
        raise DataError("no rows", file=str(path))
    id_col = next((c for c in ID_COLUMNS if c in header), None)
    pcf_col = next((c for c in PCF_COLUMNS if c in header), None)
    if id_col is None or pcf_col is None:
        raise DataError(f"needs an id column ({' or '.join(ID_COLUMNS)}) and a PCF column "
                        f"({' or '.join(PCF_COLUMNS)}); found {header}", file=str(path))
    ids, pcf = [], np.empty(len(rows))
    for n, r in enumerate(rows):
        ids.append(str(r[id_col]))
        try:
            pcf[n] = float(r[pcf_col])
        except (TypeError, ValueError):
            raise DataError(f"PCF {r[pcf_col]!r} is not a number", file=str(path), record=n + 1,
                            field=pcf_col) from None
        if not pcf[n] > 0:
            raise DataError(f"PCF {pcf[n]} is not positive", file=str(path), record=n + 1, field=pcf_col)
    if item_ids is None:
        return ids, pcf
    table = dict(zip(ids, pcf))
    return list(item_ids), np.array([table.get(str(i), np.nan) for i in item_ids])


def carbon_penalty(pcf_kg: np.ndarray) -> np.ndarray:
    """[n_items] in [0, 1]: log10 PCF min-max normalised over the catalog; missing (NaN) -> the median."""
    logp = np.log10(np.asarray(pcf_kg, dtype=np.float64))
    known = np.isfinite(logp)
    if not known.any():
        raise LlmrecError("no item has a PCF estimate")
    logp = np.where(known, logp, np.median(logp[known]))
    lo, hi = logp.min(), logp.max()
    return np.zeros_like(logp) if hi == lo else (logp - lo) / (hi - lo)


def normalize_relevance(scores: np.ndarray, seen: np.ndarray | None = None) -> np.ndarray:
    """Per-row min-max over unseen items (float64); seen items (bool mask) become -inf."""
    s = np.array(scores, dtype=np.float64)
    if seen is not None:
        s[seen] = np.nan
    with np.errstate(all="ignore"):
        lo = np.nanmin(s, axis=1, keepdims=True)
        span = np.nanmax(s, axis=1, keepdims=True) - lo
        out = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.0)
    out[np.isnan(s)] = -np.inf
    return out


def combine(rel: np.ndarray, penalty: np.ndarray, lam: float) -> np.ndarray:
    """(1 - lam) * rel - lam * penalty (rel from ``normalize_relevance``; -inf stays -inf)."""
    if not 0.0 <= lam <= 1.0:
        raise LlmrecError(f"lambda must be in [0, 1], got {lam}")
    with np.errstate(invalid="ignore"):  # 0 * -inf at lambda 1: put the seen items' -inf back below
        out = (1.0 - lam) * rel - lam * penalty[None, :]
    out[np.isneginf(rel)] = -np.inf
    return out


def topk_rows(scores: np.ndarray, k: int) -> np.ndarray:
    """[n, k] column indices of the k largest finite values per row, best first (ties: lower index first);
    -1 where a row has fewer than k finite values."""
    n, m = scores.shape
    k = min(k, m)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < m else np.tile(np.arange(m), (n, 1))
    vals = np.take_along_axis(scores, part, 1)
    order = np.lexsort((part, -vals), axis=1)
    idx, vals = np.take_along_axis(part, order, 1), np.take_along_axis(vals, order, 1)
    return np.where(np.isfinite(vals), idx, -1)


def rerank(scores: np.ndarray, penalty: np.ndarray, lam: float, k: int = 10,
           seen: np.ndarray | None = None) -> np.ndarray:
    """Top-k item indices [n_users, k] of ``combine(normalize_relevance(scores, seen), penalty, lam)``."""
    return topk_rows(combine(normalize_relevance(scores, seen), penalty, lam), k)


def rerank_loop(scores: np.ndarray, penalty: np.ndarray, lam: float, k: int = 10,
                seen: np.ndarray | None = None) -> np.ndarray:
    """The same as ``rerank``, one user at a time in plain Python (reference for tests and the bench)."""
    out = np.full((len(scores), min(k, scores.shape[1])), -1, dtype=np.int64)
    for u, row in enumerate(scores):
        cand = [i for i in range(len(row)) if seen is None or not seen[u, i]]
        if not cand:
            continue
        lo, hi = min(row[i] for i in cand), max(row[i] for i in cand)
        comb = [((1 - lam) * ((row[i] - lo) / (hi - lo) if hi > lo else 0.0) - lam * penalty[i], i) for i in cand]
        comb.sort(key=lambda t: (-t[0], t[1]))
        best = [i for _, i in comb[:k]]
        out[u, :len(best)] = best
    return out


# -------------------------------------------------------------------------------------------------
# llmrec.cf runs


def csr_gather(indptr: np.ndarray, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(block row, position in the CSR arrays) of every stored entry of rows ``users``, without a Python loop."""
    starts, ends = indptr[users], indptr[users + 1]
    counts = ends - starts
    rows = np.repeat(np.arange(len(users)), counts)
    pos = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
    return rows, pos


def seen_mask(cf, users: np.ndarray) -> np.ndarray:
    """[len(users), n_items] bool: train + valid items of each user (what ``cf.topk`` excludes)."""
    users = np.asarray(users, dtype=np.int64)
    mask = np.zeros((len(users), len(cf.item_ids)), dtype=bool)
    rows, pos = csr_gather(cf.train_indptr, users)
    mask[rows, cf.train_items[pos]] = True
    valid = cf.valid_item[users]
    mask[np.flatnonzero(valid >= 0), valid[valid >= 0]] = True
    return mask


def user_blocks(cf, users: np.ndarray | None = None, batch: int = 2048):
    """Yields (user rows, normalised relevance [b, n_items] with seen items -inf), batch by batch."""
    users = np.arange(len(cf.user_ids)) if users is None else np.asarray(users, dtype=np.int64)
    for a in range(0, len(users), batch):
        u = users[a: a + batch]
        yield u, normalize_relevance(cf._score_rows(u, None), seen_mask(cf, u))


def rerank_cf(cf, penalty: np.ndarray, lam: float, k: int = 10, users: np.ndarray | None = None,
              batch: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """(user rows, top-k item rows [n, k]) of a ``llmrec.cf`` model re-ranked with ``penalty``."""
    if len(penalty) != len(cf.item_ids):
        raise LlmrecError(f"penalty has {len(penalty)} items, the CF model {len(cf.item_ids)}")
    us, tops = [], []
    for u, rel in user_blocks(cf, users, batch):
        us.append(u)
        tops.append(topk_rows(combine(rel, penalty, lam), k))
    return np.concatenate(us), np.concatenate(tops)


# -------------------------------------------------------------------------------------------------
# Any model's scores: a ranking run file on top of a CF run's split


class RunScores:
    """Scores of any recommender (an llmrec LLM ranker, an external model) in place of the CF model's own.

    The scores come from a ranking run (TREC run or JSON ``{user: {item: score}}``, what ``llmrec eval
    ranking --run`` reads); users, items, the seen items and each user's test item come from the CF run
    whose split the model was evaluated on. An item the run does not score for a user is never
    recommended to that user (an LLM ranker typically scores a candidate list, not the catalog); users
    absent from the run get no list. Everything else reads through to the CF run.
    """

    def __init__(self, cf, user_rows: np.ndarray, item_rows: np.ndarray, scores: np.ndarray, name: str):
        # Kept sparse (CSR by user): a dense users x items table of Beauty would take 2 GB.
        order = np.lexsort((item_rows, user_rows))
        self._cf = cf
        self._items = np.asarray(item_rows, dtype=np.int64)[order]
        self._scores = np.asarray(scores, dtype=np.float64)[order]
        self._indptr = np.concatenate([[0], np.cumsum(np.bincount(user_rows, minlength=len(cf.user_ids)))])
        self.model_name = name

    def __getattr__(self, attr):
        return getattr(self._cf, attr)

    def _score_rows(self, users: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        """[len(users), n_items] (or [len(users), len(items)]) float64, NaN where the run has no score."""
        users = np.asarray(users, dtype=np.int64)
        out = np.full((len(users), len(self._cf.item_ids)), np.nan)
        rows, pos = csr_gather(self._indptr, users)
        out[rows, self._items[pos]] = self._scores[pos]
        return out if items is None else out[:, items]

    @property
    def scored_users(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self._indptr) > 0)


def load_run_scores(path: str | Path, cf) -> RunScores:
    """``RunScores`` of the run file at ``path`` over the users and items of ``cf`` (ids not in ``cf`` are an
    error: they mean the run was made on another data set or split)."""
    from llmrec.eval.run_io import read_run

    run = read_run(path)
    users = {u: i for i, u in enumerate(cf.user_ids)}
    items = {x: i for i, x in enumerate(cf.item_ids)}
    unknown_u = [u for u in run.query_ids if u not in users]
    unknown_i = [x for x in run.doc_ids if x not in items]
    if unknown_u or unknown_i:
        what = (f"{len(unknown_u)} users (e.g. {unknown_u[0]!r})" if unknown_u else
                f"{len(unknown_i)} items (e.g. {unknown_i[0]!r})")
        raise LlmrecError(f"{path}: {what} are not in the CF run {cf.path}: the scores must be over its data set")
    q = np.array([users[u] for u in run.query_ids], dtype=np.int64)[run.q]
    d = np.array([items[x] for x in run.doc_ids], dtype=np.int64)[run.d]
    return RunScores(cf, q, d, run.score, name=Path(path).name)
