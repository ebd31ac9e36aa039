"""Grouped cross-validation of PCF estimators (no company in both train and test) and its metrics.

Metrics (true and predicted PCF in kg CO2e, both positive):

- ``median_abs_log10``: median of ``|log10(pred) - log10(true)|`` (0.301 = off by a factor of 2);
- ``mean_abs_log10``: its mean (sensitive to the far misses the median hides);
- ``within_2x``: share of products with ``max(pred/true, true/pred) <= 2``;
- ``mape``: mean of ``|pred - true| / true`` in percent (dominated by over-estimates; reported because
  people ask for it).

Estimators: ``global_median`` (median PCF of the training folds), ``category_median`` (median of the
training products of the same category, else the global median), ``nn`` (similarity-weighted
log-space mean of the k nearest training products), ``llm`` (the few-shot LLM's parsed answers, on the
products where it gave one) and ``hybrid`` (the LLM answer, else the NN fallback).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from llmrec.carbon.config import CarbonConfig
from llmrec.carbon.reference import ReferenceSet
from llmrec.errors import LlmrecError

LOG10_2 = math.log10(2.0)


def pcf_metrics(true_kg, pred_kg) -> dict:
    """``{"n", "median_abs_log10", "within_2x", "mape"}`` over the pairs (NaN predictions are left out)."""
    t = np.asarray(true_kg, dtype=np.float64)
    p = np.asarray(pred_kg, dtype=np.float64)
    ok = np.isfinite(p) & (p > 0)
    t, p = t[ok], p[ok]
    if len(t) == 0:
        return {"n": 0, **dict.fromkeys(("median_abs_log10", "mean_abs_log10", "within_2x", "mape"), float("nan"))}
    err = np.abs(np.log10(p) - np.log10(t))
    return {"n": len(t), "median_abs_log10": float(np.median(err)), "mean_abs_log10": float(np.mean(err)),
            "within_2x": float(np.mean(err <= LOG10_2 + 1e-12)), "mape": float(np.mean(np.abs(p - t) / t) * 100)}


def paired_bootstrap(true_kg, pred_a, pred_b, n_boot: int = 2000, seed: int = 0) -> dict:
    """Median |log10 err| of ``a`` minus that of ``b`` on the same products, with a 95% bootstrap interval.

    Products are resampled with replacement (numpy; scipy's ``bootstrap`` has no paired statistic of
    two medians of differences in one call). A negative difference means ``a`` is better.
    """
    t, a, b = (np.asarray(x, dtype=np.float64) for x in (true_kg, pred_a, pred_b))
    ea, eb = np.abs(np.log10(a) - np.log10(t)), np.abs(np.log10(b) - np.log10(t))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(t), size=(n_boot, len(t)))
    diffs = np.median(ea[idx], axis=1) - np.median(eb[idx], axis=1)
    return {"diff": float(np.median(ea) - np.median(eb)), "ci95": [float(np.percentile(diffs, 2.5)),
                                                                   float(np.percentile(diffs, 97.5))],
            "a_better_share": float(np.mean(ea < eb)), "b_better_share": float(np.mean(eb < ea)), "n": len(t)}


def company_groups(reference: ReferenceSet) -> np.ndarray:
    """One group per company; a product without a company is its own group."""
    return np.array([c if c else f"__row{i}" for i, c in enumerate(reference.frame["company"].astype(str))],
                    dtype=object)


def company_folds(reference: ReferenceSet, n_splits: int = 5) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(train_idx, test_idx)]`` from scikit-learn's ``GroupKFold`` over companies (deterministic)."""
    from sklearn.model_selection import GroupKFold

    groups = company_groups(reference)
    if len(set(groups)) < n_splits:
        raise LlmrecError(f"{n_splits} folds need at least {n_splits} companies, the reference has {len(set(groups))}")
    return [(tr, te) for tr, te in GroupKFold(n_splits=n_splits).split(np.zeros(len(groups)), groups=groups)]


def category_median_log10(train: ReferenceSet, categories) -> np.ndarray:
    logs = pd.Series(train.log10_pcf, index=train.frame["category"].to_numpy())
    med = logs.groupby(level=0).median()
    glob = float(np.median(train.log10_pcf))
    return np.array([float(med.get(c, glob)) for c in categories])


@dataclass
class CVResult:
    predictions: pd.DataFrame  # one row per product: fold, true, and one column per estimator (kg CO2e)
    table: list[dict]
    n_splits: int
    config: dict
    llm: dict = field(default_factory=dict)  # path counts, parse/fallback rates (when an LLM ran)
    seconds: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "predictions"}


def cross_validate(reference: ReferenceSet, config: CarbonConfig, n_splits: int = 5, *, use_llm: bool = False,
                   llm_sample: int | None = None, llm_folds: list[int] | None = None, seed: int = 0,
                   embedding=None, progress: bool = True) -> CVResult:
    """Grouped CV of the baselines and NN (all products), plus the LLM and hybrid if ``use_llm``.

    The LLM runs on every test product of the folds in ``llm_folds`` (default: all), or on
    ``llm_sample`` products drawn at random (``seed``) from each such fold. The catalogue is embedded
    once; each fold gets its own FAISS index over its training products.
    """
    from dataclasses import replace

    from llmrec.carbon.estimate import CarbonEstimator
    from llmrec.carbon.retriever import SentenceTransformerEmbeddings

    embedding = embedding or SentenceTransformerEmbeddings()
    t0 = time.perf_counter()
    vectors = embedding.embed_array(reference.texts())
    seconds = {"embed": time.perf_counter() - t0, "nn": 0.0, "llm": 0.0}
    folds = company_folds(reference, n_splits)
    n = len(reference)
    pred = pd.DataFrame({"id": reference.frame["id"], "name": reference.frame["name"],
                         "company": reference.frame["company"], "category": reference.frame["category"],
                         "true_kg": reference.pcf_kg, "fold": -1})
    for col in ("global_median", "category_median", "nn"):
        pred[col] = np.nan
    llm_cols = {"llm": np.nan, "hybrid": np.nan, "path": "", "parse": "", "llm_raw": ""}
    if use_llm:
        for col, v in llm_cols.items():
            pred[col] = v
    rng = np.random.default_rng(seed)
    llm_folds = list(range(n_splits)) if llm_folds is None else llm_folds
    nn_config = replace(config, mode="nn")
    for f, (tr, te) in enumerate(folds):
        train, test = reference.subset(tr), reference.subset(te)
        pred.loc[te, "fold"] = f
        pred.loc[te, "global_median"] = 10 ** float(np.median(train.log10_pcf))
        pred.loc[te, "category_median"] = 10 ** category_median_log10(train, test.frame["category"])
        t0 = time.perf_counter()
        est = CarbonEstimator(train, nn_config, embedding=embedding, vectors=vectors[tr])
        pred.loc[te, "nn"] = [e.value_kg for e in est.estimate_many(test, vectors=vectors[te], progress=False)]
        seconds["nn"] += time.perf_counter() - t0
        if use_llm and f in llm_folds:
            sel = te if not llm_sample or llm_sample >= len(te) else np.sort(rng.choice(te, llm_sample, replace=False))
            t0 = time.perf_counter()
            hyb = CarbonEstimator(train, replace(config, mode="hybrid"), embedding=embedding, vectors=vectors[tr])
            ests = hyb.estimate_many(reference.subset(sel), vectors=vectors[sel], progress=progress)
            seconds["llm"] += time.perf_counter() - t0
            pred.loc[sel, "hybrid"] = [e.value_kg for e in ests]
            pred.loc[sel, "llm"] = [np.nan if e.llm_value_kg is None else e.llm_value_kg for e in ests]
            pred.loc[sel, "path"] = [e.path for e in ests]
            pred.loc[sel, "parse"] = [e.parse or "" for e in ests]
            pred.loc[sel, "llm_raw"] = [e.llm_raw if e.llm_raw is not None else (e.error or "") for e in ests]
    assert (pred["fold"] >= 0).all() and len(pred) == n

    table = [{"estimator": name, "products": "all", **pcf_metrics(pred["true_kg"], pred[name])}
             for name in ("global_median", "category_median", "nn")]
    llm_info: dict = {}
    if use_llm:
        sub = pred[pred["path"] != ""]
        parsed = sub["llm"].notna() & (sub["llm"] > 0)
        table += [
            {"estimator": "nn", "products": "llm subsample", **pcf_metrics(sub["true_kg"], sub["nn"])},
            {"estimator": "llm", "products": "llm subsample, parsed answers only",
             **pcf_metrics(sub["true_kg"], sub["llm"])},
            {"estimator": "nn", "products": "llm subsample, same products as llm",
             **pcf_metrics(sub["true_kg"][parsed], sub["nn"][parsed])},
            {"estimator": "hybrid", "products": "llm subsample", **pcf_metrics(sub["true_kg"], sub["hybrid"])},
        ]
        paths = Counter(sub["path"])
        answered = int(sum(v for k, v in paths.items() if k in ("llm", "nn_fallback:unparseable", "nn_fallback:unit",
                                                                  "nn_fallback:implausible")))
        llm_info = {
            "n_products": len(sub), "paths": dict(paths),
            "parse_kinds": dict(Counter(sub["parse"][sub["parse"] != ""])),
            "answered": answered,
            "parse_failure_rate": (paths["nn_fallback:unparseable"] + paths["nn_fallback:unit"]) / max(answered, 1),
            "fallback_share": float(np.mean(sub["path"].str.startswith("nn_fallback:"))) if len(sub) else float("nan"),
            "llm_coverage": float(parsed.mean()) if len(sub) else float("nan"),
            "folds": llm_folds, "sample_per_fold": llm_sample,
            "hybrid_vs_nn": paired_bootstrap(sub["true_kg"], sub["hybrid"], sub["nn"]) if len(sub) else {},
            "llm_vs_nn": paired_bootstrap(sub["true_kg"][parsed], sub["llm"][parsed], sub["nn"][parsed])
            if parsed.any() else {},
        }
    return CVResult(predictions=pred, table=table, n_splits=n_splits, config=asdict(config), llm=llm_info,
                    seconds={k: round(v, 2) for k, v in seconds.items()})


def format_table(table: list[dict]) -> str:
    """A Markdown table of the CV rows."""
    lines = ["| estimator | products | n | median abs log10 err | mean abs log10 err | within 2x | MAPE % |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['estimator']} | {r['products']} | {r['n']} | {r['median_abs_log10']:.3f} | "
                     f"{r['mean_abs_log10']:.3f} | {r['within_2x']:.3f} | {r['mape']:.0f} |")
    return "\n".join(lines)


def plot_cv(pred: pd.DataFrame, path, columns=("category_median", "nn", "hybrid")) -> None:
    """Predicted vs true PCF (log-log), one panel per estimator, the factor-2 band shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = [c for c in columns if c in pred and pred[c].notna().any()]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 4.2), squeeze=False)
    lo, hi = pred["true_kg"].min() / 10, pred["true_kg"].max() * 10
    line = np.array([lo, hi])
    for ax, c in zip(axes[0], cols):
        ok = pred[c].notna()
        m = pcf_metrics(pred["true_kg"][ok], pred[c][ok])
        ax.fill_between(line, line / 2, line * 2, color="0.85", label="within 2x")
        ax.plot(line, line, "k-", lw=0.8)
        ax.scatter(pred["true_kg"][ok], pred[c][ok], s=6, alpha=0.6)
        ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="true PCF (kg CO2e)",
               ylabel="predicted PCF (kg CO2e)",
               title=f"{c} (n={m['n']})\nmed |log10 err| {m['median_abs_log10']:.2f}, within 2x {m['within_2x']:.2f}")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
