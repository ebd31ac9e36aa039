"""``llmrec data bump-rating``: SFT data for the rater that ``llmrec eval bump`` scores profiles with."""

from __future__ import annotations

import json
from pathlib import Path

from llmrec.cli.common import add_command
from llmrec.cli.eval_bump import add_bump_user_args, user_selection

DESCRIPTION = """\
Writes a prompt/completion JSONL for fine-tuning a rating model (LaMP-3 style, review -> 1-5 stars,
prompts/bump/rating.yaml) on the TRAINING-side users of a review data set: the users `llmrec eval bump`
never evaluates. Each of their held-out reviews is shown once, with the trained writer's profile (--adapter),
the untrained model's profile, or no profile, in equal shares; so the rater learns to read a profile without
being tuned to one writer. An untrained 135M rater puts the same digit first whatever the prompt says, which
makes every condition of `llmrec eval bump` tie; a fine-tuned rater can show whether a profile helps.

example:
  llmrec data bump-rating --model smollm2-135m-instruct --adapter runs/grpo_bump_mi \\
      --data ../shared/data/amazon/musical_instruments_5core_2014 --max_users 256 --out runs/bump_rater_mi/train.jsonl
  llmrec train sft --config configs/sft_bump_rater_mi.yaml
  llmrec eval bump ... --rater_adapter runs/sft_bump_rater_mi
"""


def register(sub) -> None:
    p = add_command(sub, "bump-rating", help="rater SFT data for 'llmrec eval bump' from training-side users",
                    description=DESCRIPTION)
    add_bump_user_args(p, max_users=256, users="training-side users used")
    p.add_argument("--out", required=True, help="JSONL to write (profiles.json is written beside it)")
    p.set_defaults(func=run)


def run(args) -> int:
    from llmrec.backbone import resolve_backbone
    from llmrec.data import load_recdata
    from llmrec.eval.profile_rating import generate_profiles, rater_sft_examples
    from llmrec.training.bump_tasks import build_bump_tasks, build_rating_questions

    data = load_recdata(args.data)
    common = user_selection(args, "train")
    tasks = build_bump_tasks(data, **common)
    questions = build_rating_questions(data, **common)
    model = resolve_backbone(args.model)
    trained = generate_profiles(model, tasks, args.adapter, batch_size=args.batch_size)
    untrained = generate_profiles(model, tasks, batch_size=args.batch_size)
    examples = rater_sft_examples(questions, {"trained": trained, "untrained": untrained, "none": {}}, args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")
    (out.parent / "profiles.json").write_text(json.dumps({"trained": trained, "untrained": untrained}, indent=1))
    counts = {s: sum(e["source"] == s for e in examples) for s in ("trained", "untrained", "none")}
    print(f"{len(tasks)} training-side users, {len(examples)} examples {counts} -> {out}")
    return 0
