#!/usr/bin/env python
"""The ReRec comparison of the training issue, end to end and resumable: SFT warm start, then GRPO with the
full ReRec reward and with the NDCG reward only (plain GRPO), once per seed, every policy evaluated on the same
held-out users next to the non-LLM references, then a table over seeds, paired tests and a chart.

    python scripts/rerec_experiment.py --sft_config configs/sft_rerec_ml100k.yaml \\
        --grpo_config configs/grpo-rerec_ml100k.yaml --out runs/rerec_ml100k --seeds 0 1 2 \\
        --sft_steps 40 --grpo_steps 12 --grpo_tasks 16 --grpo_task_seed 1 --learning_rate 1e-4 --eval_tasks 48

Each stage is one `llmrec` command whose log goes to OUT/logs/. A stage whose output is already there is skipped,
so a run killed in the middle (or a session that ended) goes on where it stopped, and seeds can be added later.
Layout: OUT/sft, OUT/grpo_{ARM}_s{seed}, OUT/eval/{random,overlap,sft,grpo_ARM_s{seed}}, OUT/report.* (with
training.png: each arm's rollout NDCG and valid boxes per GRPO step).
--arms adds ablations of full ReRec to the same run (finished arms are reused): e.g. `--arms full ndcg
no_reasoning_aware no_curriculum` trains two more arms per seed, each with one module off.
`--eval_dir eval200 --eval_tasks 200` evaluates the finished policies again on more users, in OUT/eval200.
The evaluation reads data, item_meta, cf_dir and task_prompt from the GRPO config, so all stages see one task set.
On a shared machine pass --lock FILE: each stage waits for that file's lock (the same as `flock FILE cmd`).

This is a script, not a `make bench` benchmark: the measured protocol above takes about 2 h per seed on 2 CPU
cores (docs/training.md).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import shlex
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import yaml

# GRPO arms: name -> (flags over the GRPO config, report label). The first two are the comparison; the
# next four each take one ReRec module out of "full" (or keep only its reward), to find which module helps or hurts.
OFF = "false"
ARMS = {
    "full": ([], "GRPO, full ReRec"),
    "ndcg": (["--reward", "ndcg", "--reasoning_aware", OFF, "--curriculum", OFF], "GRPO, NDCG reward"),
    "reward_only": (["--reasoning_aware", OFF, "--curriculum", OFF], "GRPO, ReRec reward only"),
    "no_alignment": (["--w_qas", "0", "--w_pas", "0"], "GRPO, full without QAS/PAS"),
    "no_reasoning_aware": (["--reasoning_aware", OFF], "GRPO, full without reasoning-aware advantages"),
    "no_curriculum": (["--curriculum", OFF], "GRPO, full without curriculum"),
    # the format term is what every ReRec-reward arm shares and NDCG-only lacks (Amazon Beauty, docs/training.md)
    "format_ndcg": (["--w_qas", "0", "--w_pas", "0", "--reasoning_aware", OFF, "--curriculum", OFF],
                    "GRPO, format + NDCG reward"),
    "no_format": (["--w_format", "0"], "GRPO, full without the format term"),
    # not an ablation: full with format/QAS/PAS only where NDCG gives a group no spread (training/shaping_gate.py)
    "fallback": (["--shaping", "fallback"], "GRPO, full, shaping as fallback"),
    # not an ablation: full with the reasoning-aware rule that spares the ranking's tail (training/grpo_recipe.py)
    "above_target": (["--wrong_item_rule", "above-target"], "GRPO, full, wrong item = above target"),
    # not an ablation: full with QAS/PAS on the recommended item alone, as the issue words them (--alignment_k 1)
    "top1_alignment": (["--alignment_k", "1"], "GRPO, full, QAS/PAS of top-1"),
    # not an ablation: full with the box judged by its first item, like a sentence (--box_rule top-item)
    "box_top": (["--box_rule", "top-item"], "GRPO, full, box judged by its top item"),
    # not an ablation: box_top, and bad segments penalised in advantage space, so a zero-reward answer's malformed
    # box takes more blame than its reasoning (--bad_segment_penalty advantage)
    "box_blame": (["--box_rule", "top-item", "--bad_segment_penalty", "advantage"],
                  "GRPO, full, blame on the box"),
    # not ablations: both arms of the comparison with a KL term to the warm start (TRL's reference for an
    # --init_adapter run is a frozen copy of it), to keep 12 steps from moving the warm start's box (Amazon Beauty)
    "full_kl": (["--beta", "0.04"], "GRPO, full ReRec, KL 0.04"),
    "ndcg_kl": (["--reward", "ndcg", "--reasoning_aware", OFF, "--curriculum", OFF, "--beta", "0.04"],
                "GRPO, NDCG reward, KL 0.04"),
}
EVAL_KEYS = ("data", "item_meta", "cf_dir", "task_prompt", "n_candidates", "max_history")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--sft_config", required=True)
    p.add_argument("--grpo_config", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="GRPO seeds (default: %(default)s)")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=["full", "ndcg"],
                   help="GRPO arms per seed (default: %(default)s); the others are ablations of full ReRec, "
                        "each compared with full and with the NDCG reward in the report")
    p.add_argument("--sft_steps", type=int, default=None, help="default: the SFT config's max_steps")
    p.add_argument("--grpo_steps", type=int, default=None, help="default: the GRPO config's max_steps")
    p.add_argument("--grpo_tasks", type=int, default=None, help="training tasks for GRPO (max_train_tasks)")
    p.add_argument("--grpo_task_seed", type=int, default=None, help="task_seed of GRPO's training tasks")
    p.add_argument("--learning_rate", type=float, default=None, help="GRPO learning rate")
    p.add_argument("--eval_tasks", type=int, default=48, help="held-out users evaluated (default: %(default)s)")
    p.add_argument("--eval_dir", default="eval",
                   help="folder under OUT for the evaluations (default: %(default)s); another name, e.g. eval200 with "
                        "--eval_tasks 200, evaluates the finished policies again on more users without touching the "
                        "first ones")
    p.add_argument("--engine", choices=["hf", "vllm"], default="vllm",
                   help="evaluation engine (default: %(default)s; both in float32, vllm about 2x faster on a CPU)")
    p.add_argument("--backbone", default=None, help="override the configs' backbone (name or folder)")
    p.add_argument("--task_prompt", default=None, help="override the configs' task prompt in every stage")
    p.add_argument("--answer_prompt", default=None, help="warm-start answer file for SFT (rerec_answer_prompt)")
    p.add_argument("--save_every", type=int, default=None,
                   help="checkpoint every N training steps, so a killed stage loses fewer (default: half the "
                        "--sft_steps / --grpo_steps; the configs' save_steps when those are not given)")
    p.add_argument("--report", type=Path, default=None,
                   help="folder for report.md/json/png (default: OUT); e.g. OUT/ablations, so that a run with other "
                        "--seeds or --arms keeps the main report")
    p.add_argument("--lock", default=None, help="run each stage under this lock file (shared machines)")
    p.add_argument("--dry_run", action="store_true", help="print the stages and whether each would run")
    args = p.parse_args(argv)
    args.arms = list(dict.fromkeys(args.arms))  # an arm named twice is one arm
    return args


def llmrec(*args) -> list[str]:
    return [sys.executable, "-m", "llmrec.cli.main", *map(str, args)]


def plan(args) -> list[dict]:
    """The stages in order: name, command, and the file whose presence means the stage is done."""
    cfg = yaml.safe_load(Path(args.grpo_config).read_text())
    backbone = args.backbone or cfg.get("backbone", "smollm2-135m-instruct")
    model = ["--backbone", backbone] if args.backbone else []
    if args.task_prompt:
        cfg["task_prompt"] = args.task_prompt
    task_args = [x for k in EVAL_KEYS if cfg.get(k) is not None for x in (f"--{k}", cfg[k])]
    sft_prompts = [*(["--rerec_task_prompt", args.task_prompt] if args.task_prompt else []),
                   *(["--rerec_answer_prompt", args.answer_prompt] if args.answer_prompt else [])]
    grpo_prompt = ["--task_prompt", args.task_prompt] if args.task_prompt else []
    evaluate = ["eval", "rerec", *task_args, "--max_tasks", args.eval_tasks, "--engine", args.engine]
    out, stages = args.out, []

    def add(name, cmd, done):
        stages.append({"name": name, "cmd": llmrec(*cmd), "done": done})

    def checkpoints(max_steps):
        """Every --save_every steps, else half-way; neither given: the config's own save_steps."""
        if not (args.save_every or max_steps):
            return []
        return ["--save_steps", args.save_every or max(1, max_steps // 2)]

    ev = out / args.eval_dir
    for ref in ("random", "overlap"):
        add(f"{args.eval_dir}_{ref}", [*evaluate, "--reference", ref, "--out", ev / ref], ev / ref / "metrics.json")
    sft = out / "sft"
    steps = [*(["--max_steps", args.sft_steps] if args.sft_steps else []), *checkpoints(args.sft_steps)]
    add("sft", ["train", "sft", "--config", args.sft_config, *model, *sft_prompts, *steps, "--output_dir", sft],
        sft / "adapter_model.safetensors")
    add(f"{args.eval_dir}_sft", [*evaluate, "--model", backbone, "--adapter", sft, "--out", ev / "sft"],
        ev / "sft" / "metrics.json")
    grpo = []
    for flag, value in (("--max_steps", args.grpo_steps), ("--max_train_tasks", args.grpo_tasks),
                        ("--task_seed", args.grpo_task_seed), ("--learning_rate", args.learning_rate)):
        if value is not None:
            grpo += [flag, value]
    grpo += checkpoints(args.grpo_steps)
    for seed in args.seeds:
        for arm in args.arms:
            extra = ARMS[arm][0]
            run = out / f"grpo_{arm}_s{seed}"
            add(run.name, ["train", "grpo-rerec", "--config", args.grpo_config, *model, *grpo_prompt,
                           "--init_adapter", sft, *grpo, *extra, "--seed", seed, "--output_dir", run],
                run / "adapter_model.safetensors")
            add(f"{args.eval_dir}_{run.name}",
                [*evaluate, "--model", backbone, "--adapter", run, "--out", ev / run.name], ev / run.name / "metrics.json")
    return stages


@contextmanager
def locked(path):
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_stage(stage: dict, out: Path, lock: str | None) -> float | None:
    """Runs the stage; None when another process finished it while this one waited for the lock."""
    log = out / "logs" / f"{stage['name']}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with locked(lock) if lock else nullcontext():
        if Path(stage["done"]).exists():
            return None
        start = time.time()
        with open(log, "w") as f:
            rc = subprocess.run(stage["cmd"], stdout=f, stderr=subprocess.STDOUT, check=False).returncode
        seconds = time.time() - start
    if rc != 0 or not Path(stage["done"]).exists():
        tail = "".join(log.read_text(errors="replace").splitlines(keepends=True)[-15:])
        sys.exit(f"stage {stage['name']} failed (exit {rc}; log {log}):\n{tail}")
    with open(out / "stages.jsonl", "a") as f:
        f.write(json.dumps({"stage": stage["name"], "seconds": round(seconds, 1), "cmd": shlex.join(stage["cmd"][1:])})
                + "\n")
    return seconds


def report(args) -> Path:
    from llmrec.eval.rerec_report import write_report

    ev = args.out / args.eval_dir
    policies = {"random": [ev / "random"], "genre/category overlap": [ev / "overlap"], "SFT warm start": [ev / "sft"]}
    # NDCG-only first, then full, then the ablations: the table reads from the baseline up
    arms = sorted(args.arms, key=lambda a: (a != "ndcg", a != "full"))
    policies.update({ARMS[a][1]: [ev / f"grpo_{a}_s{s}" for s in args.seeds] for a in arms})
    label = {a: ARMS[a][1] for a in arms}
    comparisons = [(label[a], "SFT warm start") for a in ("full", "ndcg") if a in label]
    if "full" in label and "ndcg" in label:
        comparisons.insert(0, (label["full"], label["ndcg"]))
    if "full_kl" in label and "ndcg_kl" in label:  # the comparison, both arms with the KL term
        comparisons.append((label["full_kl"], label["ndcg_kl"]))
    for a in arms:
        if a not in ("full", "ndcg"):
            comparisons += [(label["full"], label[a])] if "full" in label else []
            comparisons += [(label[a], label["ndcg"])] if "ndcg" in label else []
            comparisons += [(label[a], "SFT warm start")] if "full" not in label else []  # else via full
    # The lenient row tells a better choice of item from a better-formed box.
    out = args.report or args.out
    training = {label[a]: [args.out / f"grpo_{a}_s{s}" for s in args.seeds] for a in arms}
    training = {k: v for k, v in training.items() if all((r / "metrics.jsonl").exists() for r in v)}
    write_report(policies, comparisons, out, metrics=("ndcg@10", "hr@1", "lenient/ndcg@10", "reasoning/hr@1"),
                 title=f"ReRec: {Path(args.grpo_config).stem}, seeds {args.seeds}", training=training)
    return out / "report.md"


def main(argv=None) -> int:
    args = parse_args(argv)
    stages = plan(args)
    for i, stage in enumerate(stages, 1):
        done = Path(stage["done"]).exists()
        print(f"[{i}/{len(stages)}] {stage['name']}: {'done' if done else 'to run'}", flush=True)
        if args.dry_run:
            print("    " + shlex.join(stage["cmd"][1:]))
        elif not done:
            print(f"    {time.strftime('%H:%M:%S')} running (log {args.out / 'logs' / stage['name']}.log)", flush=True)
            seconds = run_stage(stage, args.out, args.lock)
            print("    done meanwhile by another process" if seconds is None else f"    took {seconds:.0f} s",
                  flush=True)
    if not args.dry_run:
        print((report(args)).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
