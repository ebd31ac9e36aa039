"""Full-ranking evaluation of CF models and the popularity / random baselines, on the leave-one-out split.

Every user ranks the whole catalog with the items it already has masked: train items when ranking for
the valid item, train + valid items for the test item (the user's history before it, as RecBole
does). Metrics are ``llmrec.eval.ranking``'s (trec_eval definitions); the list is the full catalog,
so MRR is exact. This module is the one place llmrec.cf imports llmrec.eval (the evaluators are
there; the models do not depend on them).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from llmrec.cf.config import METRICS
from llmrec.cf.interactions import CFData
from llmrec.eval.ranking import UserItems, evaluate_full_ranking, parse_metrics

PARTS = ("valid", "test")


def csr_user_items(matrix) -> UserItems:
    """A scipy CSR users x items matrix -> ``UserItems`` (items sorted per user, as the evaluators need)."""
    m = matrix.tocsr(copy=True)
    m.sum_duplicates()
    m.sort_indices()
    return UserItems(m.indptr.astype(np.int64), m.indices.astype(np.int64))


def heldout(cf: CFData, part: str) -> tuple[UserItems, UserItems]:
    """(positives, seen) of ``part``: the one held-out item per user, and the items masked before it."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    target = cf.valid_item if part == "valid" else cf.test_item
    users = np.flatnonzero(target >= 0)
    positives = UserItems.from_pairs(users, target[users], n_users=cf.n_users)
    seen = csr_user_items(cf.train_matrix() if part == "valid" else cf.history_matrix())
    return positives, seen


def evaluate_part(cf: CFData, part: str, *, score_fn: Callable | None = None, user_emb=None, item_emb=None,
                  metrics: str = METRICS, users: np.ndarray | None = None, progress: bool = False) -> dict[str, float]:
    """``metrics`` on ``part``: dot products of embeddings, or ``score_fn(users [b]) -> [b, I]``.

    A metric without a cutoff (``mrr``) ranks the whole catalog; otherwise only the top max-cutoff.
    ``users``: user rows to evaluate (default all).
    """
    positives, seen = heldout(cf, part)
    whole = any(s.k is None for s in parse_metrics(metrics))
    res = evaluate_full_ranking(positives, metrics, score_fn=score_fn, user_emb=user_emb, item_emb=item_emb,
                                n_items=cf.n_items, seen=seen, k_max=cf.n_items if whole else None, users=users,
                                progress=progress)
    return res.metrics


def evaluate_model(model, cf: CFData, part: str, metrics: str = METRICS, users: np.ndarray | None = None,
                   progress: bool = False) -> dict[str, float]:
    """Full-ranking metrics of a trained model (``llmrec.cf`` model interface) on ``part``."""
    import torch

    model.eval()
    with torch.no_grad():
        if model.dot_product:
            user_emb, item_emb = model.embeddings()
            return evaluate_part(cf, part, user_emb=user_emb.detach(), item_emb=item_emb.detach(), metrics=metrics,
                                 users=users, progress=progress)
        device = next(model.parameters()).device
        return evaluate_part(cf, part, score_fn=lambda u: model.score_users(u.to(device)), metrics=metrics,
                             users=users, progress=progress)


def popularity_score_fn(cf: CFData) -> Callable:
    """Scores every item by its number of train interactions, the same for every user."""
    import torch

    counts = torch.as_tensor(cf.item_counts(), dtype=torch.float32)
    return lambda users: counts.expand(len(users), -1)


def random_expected(cf: CFData, part: str, metrics: str = METRICS) -> dict[str, float]:
    """The expected metrics of a uniformly random ranking of each user's unmasked items (chance level).

    Exact expectations instead of one random draw: no noise, and no full-catalog ranking pass (35 s
    on Beauty). A user with ``n`` candidates and the held-out item among them has it at each rank
    with probability 1/n: E[HR@k] = min(k, n)/n, E[NDCG@k] = sum_{r<=min(k,n)} 1/log2(r+1) / n,
    E[MRR] = H(n)/n. A held-out item already in the history is masked: 0.
    """
    positives, seen = heldout(cf, part)
    users = np.flatnonzero(positives.counts() > 0)
    target = positives.items[positives.indptr[users]]
    row, items, _ = seen.rows(users)
    masked = np.zeros(len(users), dtype=bool)
    masked[row[items == target[row]]] = True
    n = np.maximum(cf.n_items - seen.counts()[users], 1).astype(np.float64)  # 0 only if all are seen (masked)
    inv_log = 1.0 / np.log2(np.arange(2, cf.n_items + 2))
    cum_dcg, harmonic = np.r_[0.0, np.cumsum(inv_log)], np.r_[0.0, np.cumsum(1.0 / np.arange(1, cf.n_items + 1))]
    out = {}
    for spec in parse_metrics(metrics):
        depth = n if spec.k is None else np.minimum(spec.k, n)
        if spec.name in ("hr", "recall"):
            value = depth / n
        elif spec.name == "ndcg":
            value = cum_dcg[depth.astype(np.int64)] / n
        elif spec.name == "mrr":
            value = harmonic[depth.astype(np.int64)] / n
        else:
            raise ValueError(f"no closed form for the random baseline's {spec.text}")
        out[spec.text] = float(np.where(masked, 0.0, value).mean()) if len(users) else 0.0
    return out


def baselines(cf: CFData) -> dict[str, dict[str, dict[str, float]]]:
    """``{"popularity": {"valid": {...}, "test": {...}}, "random": {...}}``.

    Popularity is ranked exactly like the models; random is its exact expectation (``random_expected``).
    """
    pop = popularity_score_fn(cf)
    return {"popularity": {part: evaluate_part(cf, part, score_fn=pop) for part in PARTS},
            "random": {part: random_expected(cf, part) for part in PARTS}}


def evaluate_saved(rec, cf: CFData, parts: tuple[str, ...] = PARTS) -> dict[str, dict[str, float]]:
    """Re-evaluates a model read back by ``load_cf`` on ``cf`` (the same data and split it was trained on)."""
    import torch

    from llmrec.errors import LlmrecError

    if rec.user_ids != cf.user_ids or rec.item_ids != cf.item_ids:
        raise LlmrecError(f"{rec.path}: the data given does not have the users/items (or their order) the model "
                          "was trained on; pass the same data, format, item_meta, min_interactions and max_users")
    out = {}
    for part in parts:
        if rec.dot_product:
            out[part] = evaluate_part(cf, part, user_emb=torch.from_numpy(rec.user_emb),
                                      item_emb=torch.from_numpy(rec.item_emb))
        else:
            net = rec._network()
            out[part] = evaluate_part(cf, part, score_fn=net.score_users)
    return out
