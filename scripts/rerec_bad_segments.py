#!/usr/bin/env python
"""How much of a correct ReRec answer each reasoning-aware rule calls bad, read from `llmrec eval rerec` predictions.

For every answer whose box is well formed and puts a target first (an answer GRPO should reinforce whole), the share
of its characters in segments labelled bad (wrong item, unknown item, malformed box), under each `--wrong_item_rule`.
The tasks are rebuilt from the same flags the evaluation took, so pass those (they are in OUT/stages.jsonl):

    python scripts/rerec_bad_segments.py --data ../shared/data/amazon/openp5_beauty \\
        --item_meta ../shared/data/amazon/recbole_amazon_beauty/Amazon_Beauty.item --cf_dir runs/cf_lightgcn_beauty \\
        --task_prompt rerec/task_attributes_first.yaml --max_tasks 48 runs/rerec_beauty_af/eval/grpo_full_s0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def bad_shares(predictions: list[dict], tasks: dict[str, dict]) -> tuple[int, dict[str, float]]:
    """(correct well-formed answers, mean bad-character share per rule over them)."""
    from llmrec.rewards.rerec import WRONG_ITEM_RULES, parse_answer, reasoning_segments

    n, total = 0, dict.fromkeys(WRONG_ITEM_RULES, 0.0)
    for row in predictions:
        task = tasks[row["task_id"]]
        cands, text = task["candidates"], row["completion"]
        wanted = set(task["targets"])
        targets = {i for i, c in enumerate(cands) if c in wanted}
        answer = parse_answer(text, len(cands))
        if not (answer.ok and answer.ranking and answer.ranking[0] in targets and text):
            continue
        n += 1
        for rule in total:
            segments = reasoning_segments(text, task["candidate_titles"], targets, len(cands), wrong_item_rule=rule)
            total[rule] += sum(s.end - s.start for s in segments if s.label != "ok") / len(text)
    return n, {rule: v / n if n else 0.0 for rule, v in total.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("eval_dirs", nargs="+", type=Path, help="folders with predictions.jsonl")
    p.add_argument("--data", required=True)
    p.add_argument("--item_meta", default=None)
    p.add_argument("--cf_dir", default=None)
    p.add_argument("--task_prompt", default=None)
    p.add_argument("--n_candidates", type=int, default=20)
    p.add_argument("--max_history", type=int, default=10)
    p.add_argument("--max_tasks", type=int, default=None)
    args = p.parse_args(argv)

    from llmrec.training.rerec_tasks import load_rerec_tasks

    tasks = {t["task_id"]: t for t in load_rerec_tasks(
        "test", data=args.data, item_meta=args.item_meta, cf_dir=args.cf_dir, n_candidates=args.n_candidates,
        max_history=args.max_history, max_tasks=args.max_tasks, template=args.task_prompt)}
    for d in args.eval_dirs:
        rows = [json.loads(line) for line in (d / "predictions.jsonl").read_text().splitlines() if line.strip()]
        missing = [r["task_id"] for r in rows if r["task_id"] not in tasks]
        if missing:
            sys.exit(f"{d}: {len(missing)} predictions for tasks these flags do not build (e.g. {missing[0]})")
        n, shares = bad_shares(rows, tasks)
        print(f"{d}: {n} of {len(rows)} answers well formed with a target first; bad-character share "
              + ", ".join(f"{rule} {v:.3f}" for rule, v in shares.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
