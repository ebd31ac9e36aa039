"""``llmrec eval rerec-compare``: is policy A better than policy B on the same held-out ReRec tasks?"""

from __future__ import annotations

import json
from pathlib import Path

from llmrec.cli.common import add_command

DESCRIPTION = """\
Reads the predictions.jsonl of `llmrec eval rerec --out` runs and compares two policies task by task: mean
difference A - B of one metric with a 95% paired bootstrap interval, the Wilcoxon signed-rank p-value and
the tasks A wins, loses and ties. Each side takes several runs (e.g. one per training seed): a task's score is
then its mean over them, and per_run/std report the spread over seeds. All runs must cover the same tasks.

example:
  llmrec eval rerec-compare --a runs/eval/grpo_rerec_s0 runs/eval/grpo_rerec_s1 \\
      --b runs/eval/grpo_ndcg_s0 runs/eval/grpo_ndcg_s1 --metric ndcg@10
"""


def register(sub) -> None:
    p = add_command(sub, "rerec-compare", help="paired test of two ReRec policies' evaluations (bootstrap CI, "
                                               "Wilcoxon)", description=DESCRIPTION)
    p.add_argument("--a", nargs="+", required=True, metavar="RUN", help="evaluation folder(s) of policy A")
    p.add_argument("--b", nargs="+", required=True, metavar="RUN", help="evaluation folder(s) of policy B")
    p.add_argument("--metric", default="ndcg@10", help="hr@K, ndcg@K, mrr, or reasoning/hr@1 (is the first "
                   "candidate the reasoning names a target) (default: %(default)s)")
    p.add_argument("--lenient", action="store_true",
                   help="also read boxes with repeated or out-of-range numbers (the lenient/ figures)")
    p.add_argument("--out", default=None, help="also write the result to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    from llmrec.eval.rerec_eval import compare_runs

    result = compare_runs(args.a, args.b, metric=args.metric, lenient=args.lenient)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    a, b, d = result["a"], result["b"], result["paired"]
    lo, hi = d["ci95"]
    print(f"{result['metric']} over {result['tasks']} tasks: A {a['mean']:.3f} (runs {len(a['runs'])}, sd "
          f"{a['std']:.3f}), B {b['mean']:.3f} (runs {len(b['runs'])}, sd {b['std']:.3f}); "
          f"A - B {d['mean_diff']:+.3f} (95% CI {lo:+.3f}..{hi:+.3f}, Wilcoxon p {d['wilcoxon_p']:.3g}; "
          f"{d['wins']} wins, {d['losses']} losses, {d['ties']} ties)")
    print(json.dumps(result))
    return 0
