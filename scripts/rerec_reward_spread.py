#!/usr/bin/env python
"""How much of the full ReRec reward's spread comes from the ranking's tail, per `alignment_k`.

For each GRPO training task (built from the same flags `llmrec train grpo-rerec` takes): the sd of the full
reward (format + NDCG@K + w_qas QAS + w_pas PAS) over random rankings that all put the target first, and how
much the reward falls when the best-matching non-target (most target attributes, then highest PAS) goes before
the target. GRPO divides a group's rewards by their sd, so a tail sd that is not 0 means a group of correct
answers still trains, on the tail's order alone:

    python scripts/rerec_reward_spread.py --data ../shared/data/amazon/openp5_beauty \\
        --item_meta ../shared/data/amazon/recbole_amazon_beauty/Amazon_Beauty.item --cf_dir runs/cf_lightgcn_beauty \\
        --task_prompt rerec/task_attributes_first.yaml --task_seed 1 --max_tasks 16
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys


def spread(task: dict, alignment_k: int | None, rng: random.Random, n_tails: int = 30,
           k: int = 10) -> tuple[float, float]:
    """(sd of the reward over random tails after the target, mean of those minus the near-miss ranking's reward).

    The reward is ``make_rerec_reward``'s (format + NDCG@k + QAS + PAS at the default weights, the configs' too).
    """
    from llmrec.rewards.rerec import make_rerec_reward

    reward_fn = make_rerec_reward(k=k, alignment_k=alignment_k)
    kw = {c: [task[c]] for c in ("candidates", "targets", "target_attributes", "candidate_attributes",
                                 "candidate_pas")}

    def reward(ranking: list[int]) -> float:  # a well-formed answer boxing these 0-based candidate indices
        return reward_fn(None, ["Reasoning. \\boxed{" + ", ".join(str(i + 1) for i in ranking) + "}"], **kw)[0]

    target = task["candidates"].index(task["targets"][0])
    others = [i for i in range(len(task["candidates"])) if i != target]
    wanted = set(task["target_attributes"])
    rewards = [reward([target, *rng.sample(others, k - 1)]) for _ in range(n_tails)]
    near = max(others, key=lambda i: (len(wanted & set(task["candidate_attributes"][i])), task["candidate_pas"][i]))
    rest = [i for i in others if i != near][: k - 2]
    return statistics.pstdev(rewards), statistics.fmean(rewards) - reward([near, target, *rest])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--item_meta", default=None)
    p.add_argument("--cf_dir", default=None)
    p.add_argument("--task_prompt", default=None)
    p.add_argument("--task_seed", type=int, default=0)
    p.add_argument("--max_tasks", type=int, default=16)
    p.add_argument("--alignment_k", type=int, nargs="+", default=[10, 1])
    args = p.parse_args(argv)

    from llmrec.training.rerec_tasks import load_rerec_tasks

    tasks = load_rerec_tasks("train", data=args.data, item_meta=args.item_meta, cf_dir=args.cf_dir,
                             seed=args.task_seed, max_tasks=args.max_tasks, template=args.task_prompt)
    for ak in args.alignment_k:
        rng = random.Random(0)
        rows = [spread(t, ak, rng) for t in tasks]
        print(f"alignment_k {ak}: {len(rows)} tasks; sd over random tails after the target "
              f"{statistics.fmean(r[0] for r in rows):.3f}; reward drop when a near miss goes first "
              f"{statistics.fmean(r[1] for r in rows):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
