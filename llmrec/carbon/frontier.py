"""The carbon/accuracy frontier of carbon-aware re-ranking (``llmrec.carbon.rerank``) for a CF run.

For each lambda of a sweep every user's top-k is re-ranked (seen items masked, the cf run's split)
and scored against the user's test item with ``llmrec.eval.ranking.evaluate_topk`` (NDCG@k,
Recall@k), next to the estimated carbon of the recommended items: mean kg CO2e per recommended item
and total kg over all users' lists. The Pareto frontier keeps the lambdas no other lambda beats on
both NDCG (higher) and mean carbon (lower); ``reductions`` reads off how much mean carbon can be cut
for at most 1 / 5 / 10% NDCG loss relative to lambda = 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llmrec.carbon.rerank import carbon_penalty, combine, topk_rows, user_blocks

LOSSES = (0.01, 0.05, 0.10)


def sweep(cf, pcf_kg: np.ndarray, lambdas: np.ndarray, k: int = 10, batch: int = 2048,
          progress: bool = True) -> pd.DataFrame:
    """One row per lambda: ndcg@k, recall@k, mean_pcf_kg, mean_log10_pcf, total_pcf_kg, n_users.

    ``cf``: a ``llmrec.cf`` run or ``RunScores`` (then only the users the run scores). Users are those
    with a test item. The relevance of each batch of users is computed once and reused for every lambda.
    """
    from tqdm.auto import tqdm

    from llmrec.eval.ranking import evaluate_topk

    pcf_kg = np.asarray(pcf_kg, dtype=np.float64)
    penalty = carbon_penalty(pcf_kg)
    filled = 10 ** np.where(np.isfinite(pcf_kg), np.log10(pcf_kg), np.nan)
    filled = np.where(np.isfinite(filled), filled, np.nanmedian(pcf_kg))
    users = np.flatnonzero(cf.test_item >= 0)
    if hasattr(cf, "scored_users"):
        users = np.intersect1d(users, cf.scored_users)
    lambdas = np.asarray(lambdas, dtype=np.float64)
    tops = np.full((len(lambdas), len(users), k), -1, dtype=np.int64)
    n_batches = -(-len(users) // batch)
    a = 0
    for _, rel in tqdm(user_blocks(cf, users, batch), total=n_batches, desc="frontier", unit="batch",
                       disable=not progress):
        for j, lam in enumerate(lambdas):
            tops[j, a: a + len(rel)] = topk_rows(combine(rel, penalty, lam), k)
        a += len(rel)
    rows = []
    for j, lam in enumerate(lambdas):
        t = tops[j]
        m = evaluate_topk(t, cf.test_item[users], f"ndcg@{k},recall@{k}").metrics
        kg = filled[t[t >= 0]]
        rows.append({"lambda": float(lam), f"ndcg@{k}": m[f"ndcg@{k}"], f"recall@{k}": m[f"recall@{k}"],
                     "mean_pcf_kg": float(kg.mean()), "mean_log10_pcf": float(np.log10(kg).mean()),
                     "total_pcf_kg": float(kg.sum()), "n_users": len(users)})
    return pd.DataFrame(rows)


def pareto_front(ndcg: np.ndarray, carbon: np.ndarray) -> np.ndarray:
    """bool mask of the points no other point dominates (ndcg >= and carbon <=, one of them strictly)."""
    ndcg, carbon = np.asarray(ndcg, float), np.asarray(carbon, float)
    better_eq = (ndcg[None, :] >= ndcg[:, None]) & (carbon[None, :] <= carbon[:, None])
    strict = (ndcg[None, :] > ndcg[:, None]) | (carbon[None, :] < carbon[:, None])
    return ~(better_eq & strict).any(axis=1)


def reductions(table: pd.DataFrame, metric: str = "ndcg@10", carbon: str = "mean_pcf_kg",
               losses=LOSSES) -> dict[str, dict]:
    """For each allowed relative NDCG loss: the lambda with the lowest carbon among those within it,
    and its carbon reduction relative to lambda = 0 (``table`` must hold lambda 0)."""
    base = table.loc[table["lambda"] == 0.0]
    if base.empty:
        raise ValueError("the sweep needs lambda = 0 as the baseline")
    b_ndcg, b_carbon = float(base[metric].iloc[0]), float(base[carbon].iloc[0])
    out = {}
    for loss in losses:
        ok = table[table[metric] >= (1 - loss) * b_ndcg]
        best = ok.loc[ok[carbon].idxmin()]
        out[f"{loss:.0%}"] = {"lambda": float(best["lambda"]), metric: float(best[metric]),
                              carbon: float(best[carbon]), "carbon_reduction": 1 - float(best[carbon]) / b_carbon,
                              "ndcg_loss": 1 - float(best[metric]) / b_ndcg if b_ndcg > 0 else 0.0}
    return out


def plot_frontier(table: pd.DataFrame, png: str | Path, title: str, metric: str = "ndcg@10") -> Path:
    """NDCG against mean carbon for every lambda, the Pareto frontier drawn through."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    front = pareto_front(table[metric], table["mean_pcf_kg"])
    fig, ax = plt.subplots(figsize=(6, 4.2))
    sc = ax.scatter(table["mean_pcf_kg"], table[metric], c=table["lambda"], cmap="viridis", s=18)
    f = table[front].sort_values("mean_pcf_kg")
    ax.plot(f["mean_pcf_kg"], f[metric], c="crimson", lw=1.2, label="Pareto frontier")
    base = table[table["lambda"] == 0.0]
    if not base.empty:
        ax.scatter(base["mean_pcf_kg"], base[metric], marker="*", s=150, c="black", label="lambda = 0")
    fig.colorbar(sc, ax=ax, label="lambda")
    ax.set(xscale="log", xlabel="mean estimated PCF of recommended items (kg CO2e, log)", ylabel=f"test {metric}",
           title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Path(png)


def run_name(cf_dir: str | Path, scores: str | Path | None = None) -> str:
    """What a sweep's files are named after: the CF run's folder, or the score file's name up to its first dot."""
    return Path(scores).name.split(".")[0] if scores is not None else Path(cf_dir).name


def run_frontier(cf_dir: str | Path, pcf_kg: np.ndarray, out: str | Path, points: int = 50, k: int = 10,
                 progress: bool = True, scores: str | Path | None = None) -> tuple[pd.DataFrame, dict]:
    """Sweep ``points`` lambdas in [0, 1] for the run in ``cf_dir`` (or, with ``scores``, for that ranking run
    over ``cf_dir``'s split); writes <name>.csv / .png / .json to ``out``."""
    import json

    from llmrec.carbon.rerank import load_run_scores
    from llmrec.cf import load_cf

    model = load_cf(cf_dir)
    name = run_name(cf_dir, scores)
    if scores is not None:
        model = load_run_scores(scores, model)
    table = sweep(model, pcf_kg, np.linspace(0.0, 1.0, points), k=k, progress=progress)
    table["pareto"] = pareto_front(table[f"ndcg@{k}"], table["mean_pcf_kg"])
    red = reductions(table, metric=f"ndcg@{k}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{name}.csv", index=False)
    plot_frontier(table, out / f"{name}.png", f"{name}: carbon-aware re-ranking", metric=f"ndcg@{k}")
    (out / f"{name}.json").write_text(json.dumps({"cf": str(cf_dir), "scores": None if scores is None else str(scores),
                                                  "model": model.model_name, "points": points, "k": k,
                                                  "n_users": int(table["n_users"].iloc[0]), "reductions": red},
                                                 indent=2) + "\n")
    return table, red
