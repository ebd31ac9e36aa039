"""Online curriculum for GRPO: easy tasks first, trivial ones dropped, difficulty measured on the fly.

Difficulty of a task = 1 - the mean of a score (NDCG for ReRec) over its rollouts in the previous pass over
the data. At the start of each pass the scheduler drops tasks that became trivial (difficulty below
``drop_below``, never shown again), orders the rest easy to hard (tasks not yet seen count as 0.5) and fills
the pass back to its full length by cycling through that order, so the trainer's step count never changes.
Tasks of equal difficulty (all of them in the first pass) keep the order TRL's own sampler would give that pass
for the same seed, so a run with the curriculum and one without it see the same tasks in the same order until
the curriculum first acts. Every pass is written to ``curriculum.jsonl``.

TRL has no curriculum hook; the sampler mirrors TRL's ``RepeatSampler`` (same chunking and repetition, so
prompt groups stay whole across processes) with the order supplied by the scheduler.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Sampler

UNSEEN_DIFFICULTY = 0.5


@dataclass
class CurriculumScheduler:
    keys: list[str]  # one key per dataset row (task ids), in dataset order
    drop_below: float = 0.05
    seed: int = 0
    log_path: Path | None = None
    pass_no: int = 0
    difficulty: dict[str, float] = field(default_factory=dict)  # from the last pass that saw the task
    dropped: set[str] = field(default_factory=set)
    current_order: list[int] | None = None  # the pass in progress (kept so a resumed run replays it)
    _scores: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self):
        self._index = {k: i for i, k in enumerate(self.keys)}
        if len(self._index) != len(self.keys):
            raise ValueError("curriculum keys must be unique (one task id per dataset row)")

    def observe(self, keys: list[str], scores: list[float]) -> None:
        """Scores of rollouts (several per task) in the pass in progress; NaN scores are ignored."""
        for k, s in zip(keys, scores):
            if k in self._index and not math.isnan(s):
                self._scores.setdefault(k, []).append(float(s))

    def next_order(self, n: int) -> list[int]:
        """Dataset indices for the next pass, ``n`` of them, easy to hard."""
        if self.current_order is not None:  # resuming inside a pass: replay it
            order, self.current_order = self.current_order, None
            self._started(order)
            return order
        for k, scores in self._scores.items():
            self.difficulty[k] = 1.0 - float(np.mean(scores))
        self._scores = {}
        newly = {k for k, d in self.difficulty.items() if d < self.drop_below and k not in self.dropped}
        self.dropped |= newly
        shuffled = self.trl_permutation()
        keep = [i for i in shuffled if self.keys[i] not in self.dropped]
        reset = False
        if not keep:  # everything became trivial: better to keep practising than to stop
            keep, reset = shuffled, True
        # a stable sort: ties, and the whole first pass, stay in TRL's order
        keep.sort(key=lambda i: self.difficulty.get(self.keys[i], UNSEEN_DIFFICULTY))
        order = [keep[j % len(keep)] for j in range(n)]
        self._log(keep, newly, reset)
        self._started(order)
        return order

    def trl_permutation(self) -> list[int]:
        """The shuffle TRL's ``RepeatSampler`` draws for this pass: one ``randperm`` per pass from a generator
        seeded with the trainer's seed. Redrawn from the seed, so a resumed run gets it without saved state."""
        # Why match TRL's sampler: task order alone moved Amazon Beauty results by as much as the modules under
        # test (docs/training.md), so the curriculum ablation must not also change the order it starts from.
        generator = torch.Generator()
        generator.manual_seed(self.seed)
        for _ in range(self.pass_no):
            torch.randperm(len(self.keys), generator=generator)
        return torch.randperm(len(self.keys), generator=generator).tolist()

    def _started(self, order: list[int]) -> None:
        self._in_progress = order
        self.pass_no += 1

    def _log(self, keep: list[int], newly: set[str], reset: bool) -> None:
        if self.log_path is None:
            return
        d = np.array([self.difficulty.get(self.keys[i], UNSEEN_DIFFICULTY) for i in keep])
        record = {
            "pass": self.pass_no, "tasks_kept": len(keep), "dropped_now": len(newly), "dropped_total": len(self.dropped),
            "reset_all_trivial": reset, "seen": sum(self.keys[i] in self.difficulty for i in keep),
            "difficulty": {"min": float(d.min()), "median": float(np.median(d)), "max": float(d.max())},
            "first": [[self.keys[i], round(self.difficulty.get(self.keys[i], UNSEEN_DIFFICULTY), 4)] for i in keep[:5]],
            "last": [[self.keys[i], round(self.difficulty.get(self.keys[i], UNSEEN_DIFFICULTY), 4)] for i in keep[-5:]],
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {"pass_no": self.pass_no, "difficulty": self.difficulty, "dropped": sorted(self.dropped),
                "scores": self._scores, "current_order": getattr(self, "_in_progress", None)}

    def load_state_dict(self, state: dict) -> None:
        # The pass in progress is replayed from its start, so it is counted again when it restarts.
        self.pass_no = max(0, int(state["pass_no"]) - (1 if state.get("current_order") else 0))
        self.difficulty = {k: float(v) for k, v in state["difficulty"].items()}
        self.dropped = set(state["dropped"])
        self._scores = {k: list(v) for k, v in state.get("scores", {}).items()}
        self.current_order = state.get("current_order")

    def save(self, folder: str | Path) -> None:
        Path(folder, "curriculum_state.json").write_text(json.dumps(self.state_dict()))

    def load(self, folder: str | Path) -> bool:
        path = Path(folder, "curriculum_state.json")
        if not path.exists():
            return False
        self.load_state_dict(json.loads(path.read_text()))
        return True


class CurriculumRepeatSampler(Sampler):
    """TRL's ``RepeatSampler`` layout (chunks of ``batch_size`` prompts, each repeated ``mini_repeat_count``
    times in a row, each chunk ``repeat_count`` times) over the scheduler's order instead of a shuffle."""

    def __init__(self, scheduler: CurriculumScheduler, num_samples: int, mini_repeat_count: int, batch_size: int,
                 repeat_count: int = 1):
        self.scheduler = scheduler
        self.num_samples = num_samples
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count

    def __iter__(self):
        order = self.scheduler.next_order(self.num_samples)
        chunks = [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        for chunk in chunks:
            if len(chunk) < self.batch_size:
                break
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return (self.num_samples // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count
