"""Training metrics to a JSONL file and a PNG curve, for every llmrec recipe.

A ``TrainerCallback`` rather than ``report_to``: the hub-free integrations that ship with transformers
(tensorboard, wandb...) are optional installs, and users want a plain file they can ``jq``.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import TrainerCallback


class JsonlMetricsCallback(TrainerCallback):
    """Appends every ``on_log`` record (with step and epoch) to ``path``; plots the curve at the end.

    A run resumed from a checkpoint first drops the records past the checkpoint's step: the killed run logged
    them, the resumed one trains those steps again, and the log must hold each step once.
    """

    def __init__(self, path: str | Path, plot: bool = True):
        self.path = Path(path)
        self.plot = plot

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and self.path.exists():
            drop_records_after(self.path, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": state.global_step, "epoch": state.epoch, **logs}) + "\n")

    def on_train_end(self, args, state, control, **kwargs):
        if self.plot and state.is_world_process_zero and self.path.exists():
            plot_training_curve(self.path, self.path.with_suffix(".png"))


def drop_records_after(path: str | Path, step: int) -> int:
    """Keeps the records of steps up to ``step`` (0: none); returns how many were dropped.

    A line that is not JSON is dropped too: a run killed while writing leaves its last line cut short.
    """
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    steps = [_step_of(line) for line in lines]
    kept = [line for line, s in zip(lines, steps) if step > 0 and s is not None and s <= step]
    if len(kept) < len(lines):
        tmp = path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        tmp.replace(path)
    return len(lines) - len(kept)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return None


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def plot_training_curve(jsonl: str | Path, png: str | Path, keys: tuple[str, ...] = ("loss", "reward")) -> Path | None:
    """One panel per logged key present (loss, reward, ...) against the global step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_metrics(jsonl)
    present = [k for k in keys if any(k in r for r in records)]
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5 * len(present), 3.5), squeeze=False)
    for ax, key in zip(axes[0], present):
        pts = [(r["step"], r[key]) for r in records if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)
