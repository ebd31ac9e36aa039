"""``llmrec eval bump``: does a trained BUMP profile writer help rating prediction? Four-condition MAE table."""

from __future__ import annotations

import json
from pathlib import Path

from llmrec.cli.common import add_command

DESCRIPTION = """\
For the test-side users of a review data set (the users grpo-bump never trained on), writes each user's
profile with the trained profile writer (--adapter) and with the untrained model, then rates each user's
held-out reviews (LaMP-3 style, 1-5 stars, answer scored from the first-token probabilities) under four
conditions: trained profile, no profile, untrained model's profile, another user's trained profile.
Reports MAE/RMSE of the argmax star and of the expected star, and a paired test per question of the trained
profile against each other condition. Writes report.json and report.md.

The rater is the untrained model unless --rater_adapter gives a fine-tuned one (see `llmrec data bump-rating`:
an untrained 135M rater puts the same digit first whatever the profile says).

example:
  llmrec eval bump --model smollm2-135m-instruct --adapter runs/grpo_bump_mi \\
      --data ../shared/data/amazon/musical_instruments_5core_2014 --max_users 64 --out runs/eval_bump_mi \\
      [--rater_adapter runs/sft_bump_rater_mi]
"""


def register(sub) -> None:
    p = add_command(sub, "bump", help="rating MAE with trained / no / untrained / another user's BUMP profile",
                    description=DESCRIPTION)
    add_bump_user_args(p, max_users=64, users="test users evaluated")
    p.add_argument("--rater_model", default=None, help="the rating model (default: --model)")
    p.add_argument("--rater_adapter", default=None, help="LoRA on the rating model, e.g. a rater fine-tuned with "
                                                        "'llmrec train sft' on 'llmrec data bump-rating' examples")
    p.add_argument("--out", default=None, help="folder for report.json and report.md")
    p.set_defaults(func=run)


def add_bump_user_args(p, max_users: int, users: str) -> None:
    """The writer, the data and the user selection, shared with ``llmrec data bump-rating``."""
    p.add_argument("--model", required=True, help="backbone name or local HF model folder: the untrained writer "
                                                   "(and in eval bump the rater, unless --rater_model)")
    p.add_argument("--adapter", required=True, help="the trained profile writer (a grpo-bump output_dir)")
    p.add_argument("--data", required=True, help="review data folder (the one grpo-bump trained on)")
    p.add_argument("--n_history", type=int, default=8, help="as in training (default: %(default)s)")
    p.add_argument("--n_heldout", type=int, default=3, help="as in training (default: %(default)s)")
    p.add_argument("--max_users", type=int, default=max_users, help=f"{users} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="user split and profile shuffle seed (default: %(default)s)")
    p.add_argument("--batch_size", type=int, default=8)


def user_selection(args, split: str) -> dict:
    """Keyword arguments of ``build_bump_tasks`` / ``build_rating_questions`` from :func:`add_bump_user_args`."""
    return {"n_history": args.n_history, "n_heldout": args.n_heldout, "max_users": args.max_users,
            "seed": args.seed, "split": split}


def run(args) -> int:
    from llmrec.backbone import resolve_backbone
    from llmrec.data import load_recdata
    from llmrec.eval.profile_rating import bump_eval_report, constant_references, format_report_table
    from llmrec.training.bump_tasks import build_bump_tasks, build_rating_questions

    data = load_recdata(args.data)
    common = user_selection(args, "test")
    tasks = build_bump_tasks(data, **common)
    questions = build_rating_questions(data, **common)
    report = bump_eval_report(resolve_backbone(args.model), tasks, questions, adapter_path=args.adapter,
                              rating_model_path=resolve_backbone(args.rater_model) if args.rater_model else None,
                              rating_adapter_path=args.rater_adapter, batch_size=args.batch_size, seed=args.seed)
    # All training-side users (no model involved): the rating marginal a rater could learn without reading.
    train_qs = build_rating_questions(data, **{**common, "max_users": None, "split": "train"})
    report["references"] = constant_references(train_qs, questions)
    table = format_report_table(report)
    print(f"{report['n_users']} test users, {report['n_questions']} rating questions\n{table}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps(report, indent=2))
        (out / "report.md").write_text(table + "\n")
    return 0
