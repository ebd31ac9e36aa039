"""One table, paired tests and a chart for a ReRec comparison: policies evaluated by ``llmrec eval rerec``,
each once per training seed (non-LLM references and a shared warm start once).

``scripts/rerec_experiment.py`` trains and evaluates the policies and calls ``write_report``; it also
works on any evaluation folders, e.g. ones made by hand with the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# reasoning/*: the item the answer's reasoning names first, and how often the box then loses a target named there
COLUMNS = ("hr@1", "hr@5", "ndcg@10", "mrr", "format_valid", "lenient/ndcg@10", "reasoning/hr@1",
           "reasoning/box_lost")
# What GRPO logs per step about its sampled rollouts (metrics.jsonl of `llmrec train grpo-rerec`)
TRAINING_COLUMNS = {"rewards/ndcg/mean": "rollout NDCG@10", "rerec/format_valid": "rollout valid boxes"}


def scores(run: str | Path) -> dict:
    """The run's metrics, re-scored from its predictions with the current scorer (so folders written by older
    versions, or by hand, are comparable)."""
    from llmrec.eval.rerec_eval import read_predictions, score_completions

    predictions = read_predictions(run)
    return score_completions(predictions, [p["completion"] for p in predictions])


def summarize(policies: Mapping[str, Sequence[str | Path]]) -> dict:
    """Per policy and column: the value of each run, their mean and their standard deviation (ddof 1)."""
    out = {}
    for name, runs in policies.items():
        per_run = [scores(r) for r in runs]
        values = {c: [float(m[c]) for m in per_run] for c in COLUMNS}
        out[name] = {"runs": [str(r) for r in runs],
                     **{c: {"per_run": v, "mean": float(np.mean(v)),
                            "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0} for c, v in values.items()}}
    return out


def markdown_table(summary: Mapping[str, dict]) -> str:
    lines = ["| policy | runs | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for name, s in summary.items():
        cells = [f"{s[c]['mean']:.3f}" + (f" ± {s[c]['std']:.3f}" if len(s["runs"]) > 1 else "") for c in COLUMNS]
        lines.append(f"| {name} | {len(s['runs'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_summary(summary: Mapping[str, dict], png: str | Path,
                 columns: Sequence[str] = ("hr@1", "ndcg@10", "format_valid")) -> Path:
    """Bars: the mean over runs; dots: each run (one per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(summary)
    fig, axes = plt.subplots(1, len(columns), figsize=(len(columns) * (0.75 * len(names) + 1.2), 3.4), squeeze=False)
    for ax, col in zip(axes[0], columns):
        x = np.arange(len(names))
        ax.bar(x, [summary[n][col]["mean"] for n in names], color="#9ab7d3", edgecolor="#35618f")
        for i, n in enumerate(names):
            runs = summary[n][col]["per_run"]
            ax.scatter(np.full(len(runs), i) + np.linspace(-0.15, 0.15, len(runs)), runs, s=14, color="#1b3a5c",
                       zorder=3)
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(col)
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)


def training_curves(runs: Sequence[str | Path], columns: Sequence[str] = tuple(TRAINING_COLUMNS)) -> dict:
    """Per column, the per-step value of each training run (rows: runs, one per seed; NaN past a run's last
    step or where a step did not log the column), read from each run's ``metrics.jsonl``."""
    from llmrec.training.metrics_log import read_metrics

    per_run = []
    for run in runs:
        # the final summary line logs no rollout figures
        per_run.append({int(r["step"]): r for r in read_metrics(Path(run) / "metrics.jsonl")
                        if "step" in r and any(c in r for c in columns)})
    n = max((max(s) for s in per_run if s), default=0)
    return {c: np.array([[float(s[i][c]) if i in s and c in s[i] else np.nan for i in range(1, n + 1)]
                         for s in per_run]) for c in columns}


def plot_training(curves: Mapping[str, dict], png: str | Path, smooth: int = 4) -> Path:
    """One panel per ``TRAINING_COLUMNS`` entry: per arm (its ``training_curves``), the mean over seeds at each
    step (thin) and its ``smooth``-step moving average (thick). With 8 rollouts a step the raw curve mostly shows
    sampling noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TRAINING_COLUMNS), figsize=(5.2 * len(TRAINING_COLUMNS), 3.4), squeeze=False)
    for name, arm in curves.items():
        seeds = next(iter(arm.values())).shape[0]
        label = f"{name} ({seeds} seed{'s' if seeds != 1 else ''})"
        for ax, (col, title) in zip(axes[0], TRAINING_COLUMNS.items()):
            mean = np.nanmean(arm[col], axis=0)
            steps = np.arange(1, len(mean) + 1)
            (line,) = ax.plot(steps, mean, lw=0.8, alpha=0.45)
            if len(mean) >= smooth:
                ma = np.convolve(mean, np.ones(smooth) / smooth, mode="valid")
                ax.plot(steps[smooth - 1:], ma, lw=2, color=line.get_color(), label=label)
            else:
                line.set_label(label)
            ax.set_title(f"{title} (training tasks, sampled)")
            ax.set_xlabel("GRPO step")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
    return Path(png)


def training_table(curves: Mapping[str, dict]) -> str:
    """Markdown: per arm (its ``training_curves``), each ``TRAINING_COLUMNS`` entry averaged over the first and
    the last quarter of the steps (and the seeds)."""
    lines = ["| arm | steps | " + " | ".join(f"{t}, first / last quarter" for t in TRAINING_COLUMNS.values()) + " |",
             "|---|---|" + "---|" * len(TRAINING_COLUMNS)]
    for name, arm in curves.items():
        n = next(iter(arm.values())).shape[1]
        q = max(1, n // 4)
        cells = [f"{np.nanmean(c[:, :q]):.3f} / {np.nanmean(c[:, n - q:]):.3f}" for c in arm.values()]
        lines.append(f"| {name} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_report(policies: Mapping[str, Sequence[str | Path]], comparisons: Sequence[tuple[str, str]], out: str | Path,
                 metrics: Sequence[str] = ("ndcg@10", "hr@1"), title: str = "ReRec comparison",
                 training: Mapping[str, Sequence[str | Path]] | None = None) -> dict:
    """``report.md``, ``report.json`` and ``report.png`` in ``out``: the summary table over seeds and, for
    each ``(A, B)`` in ``comparisons``, the paired test per metric (``compare_runs``, seeds averaged per task).
    A metric written ``lenient/ndcg@10`` also reads boxes with repeated or out-of-range numbers (those dropped,
    the rest in order), as ``score_completions``' lenient figures do. ``training`` (arm -> GRPO output folders,
    one per seed) adds the rollouts' NDCG and valid-box share per step: a table and ``training.png``."""
    from llmrec.eval.rerec_eval import compare_runs

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(policies)
    paired = []
    for a, b in comparisons:
        for m in metrics:
            lenient = m.startswith("lenient/")
            r = compare_runs(policies[a], policies[b], metric=m.removeprefix("lenient/"), lenient=lenient)
            paired.append({"a": a, "b": b, "metric": r["metric"], "tasks": r["tasks"], **r["paired"]})
    lines = [f"# {title}", "", "Mean ± standard deviation over training seeds (one run where there is no seed).", "",
             markdown_table(summary), "",
             "Paired over the same held-out tasks (a task's score: its mean over seeds):", "",
             "| A | B | metric | A - B | 95% CI | Wilcoxon p | wins / losses / ties |",
             "|---|---|---|---|---|---|---|"]
    for p in paired:
        lo, hi = p["ci95"]
        lines.append(f"| {p['a']} | {p['b']} | {p['metric']} | {p['mean_diff']:+.3f} | {lo:+.3f}..{hi:+.3f} | "
                     f"{p['wilcoxon_p']:.3g} | {p['wins']} / {p['losses']} / {p['ties']} |")
    if training:
        # Sampled rollouts on each arm's own training tasks: with the curriculum on, an arm sees its tasks in
        # another order (easy first from the second pass), so read these as how each run trained, not as a test.
        curves = {name: training_curves(runs) for name, runs in training.items()}  # each metrics.jsonl read once
        lines += ["", "GRPO rollouts on the training tasks (sampled; mean over seeds), `training.png`:", "",
                  training_table(curves)]
        plot_training(curves, out / "training.png")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    result = {"summary": summary, "paired": paired}
    (out / "report.json").write_text(json.dumps(result, indent=2))
    plot_summary(summary, out / "report.png")
    return result
