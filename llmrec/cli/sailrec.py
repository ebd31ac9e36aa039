"""``llmrec sailrec``: diagnostics of a trained SAILRec run (the recipe itself is ``llmrec train sailrec``)."""

from __future__ import annotations

from llmrec.cli.common import add_command


def register(sub) -> None:
    p = add_command(sub, "sailrec", help="SAILRec diagnostics (train with 'llmrec train sailrec')",
                    description="Diagnostics of a run written by 'llmrec train sailrec'.\n\n"
                    "example:\n  llmrec sailrec attention runs/sailrec_ml100k --users 16")
    ssub = p.add_subparsers(dest="sailrec_command", metavar="SAILREC_COMMAND", required=True)
    a = add_command(ssub, "attention", help="plot the attention mass on CF tokens per layer, before/after steering",
                    description="Runs the run's prompts (the first --users evaluation users) through the backbone "
                    "without and with the run's steering schedule and plots, per layer, the attention mass the "
                    "text tokens put on the CF soft tokens (mean over heads and query positions after the first "
                    "CF token). Writes a PNG and the numbers as JSON next to it.\n\n"
                    "example: llmrec sailrec attention runs/sailrec_ml100k --out runs/sailrec_ml100k/attention.png")
    a.add_argument("run_dir", metavar="RUN_DIR", help="output_dir of 'llmrec train sailrec'")
    a.add_argument("--users", type=int, default=8, help="evaluation users whose prompts are averaged (default 8)")
    a.add_argument("--out", metavar="PNG", help="image to write (default RUN_DIR/attention.png)")
    a.set_defaults(func=_attention)
    e = add_command(ssub, "eval", help="re-rank a trained run's evaluation users (per-user ranks, paired tests)",
                    description="Rebuilds a trained run (projector, CF tables, steering schedule) and ranks the "
                    "first --users evaluation users' test items with SAILRec, its unsteered serving, the same "
                    "prompt text-only and the CF model alone. Writes the metrics, each user's rank of the target "
                    "and paired per-user NDCG@10 comparisons (bootstrap interval, Wilcoxon p) as JSON.\n\n"
                    "example: llmrec sailrec eval runs/sailrec_ml100k --users 100")
    e.add_argument("run_dir", metavar="RUN_DIR", help="output_dir of 'llmrec train sailrec'")
    e.add_argument("--users", type=int, default=100, help="evaluation users (default 100, the configs' size)")
    e.add_argument("--text_only", type=lambda v: v.lower() in ("1", "true", "yes"), default=True,
                   help="also rank with the same prompt without soft tokens (default true)")
    e.add_argument("--out", metavar="JSON", help="report to write (default RUN_DIR/eval_users<N>.json)")
    e.set_defaults(func=_eval)


def _attention(args) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmrec.training.sailrec_recipe import attention_report

    r = attention_report(args.run_dir, args.users, args.out)
    print(f"{'layer':>5s} {'bias':>7s} {'before':>8s} {'after':>8s}")
    for i, (b, m0, m1) in enumerate(zip(r["schedule"], r["mass_unsteered"], r["mass_steered"])):
        print(f"{i:5d} {b:7.2f} {m0:8.4f} {m1:8.4f}")
    print(f"wrote {r['png']} and {r['png'].rsplit('.', 1)[0]}.json ({r['users']} prompts, "
          f"{r['cf_tokens_per_prompt']:.1f} CF tokens each)")
    return 0


def _eval(args) -> int:
    import json
    import os
    from pathlib import Path
    from types import SimpleNamespace

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmrec.training.sailrec_recipe import evaluate, load_run, results_table

    model, data, tokenizer, template, _ = load_run(args.run_dir, args.users)
    report = evaluate(model, data, tokenizer, template,
                      SimpleNamespace(n_negatives=len(data.cases[0].candidates) - 1 if data.cases else 0,
                                      eval_text_only=args.text_only))
    out = Path(args.out or Path(args.run_dir, f"eval_users{args.users}.json"))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(results_table(report))
    print(f"wrote {out}")
    return 0
