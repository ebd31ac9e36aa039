"""Reward overhead of a GRPO step: the full ReRec (or BUMP) reward vs a constant reward, same model and batch.

Both runs use the same seed and learning rate 0, so they sample the very same completions and do the very
same forward/backward work; only the reward differs. The runs alternate (A B A B ...) so machine noise hits
both alike. Reports the median step wall time of each and the overhead ratio (target: < 25%).

    python bench/reward_overhead.py --recipe rerec --data ../shared/data/movielens/recbole_ml-100k \\
        --cf_dir runs/cf_lightgcn_ml100k
    python bench/reward_overhead.py --recipe bump --data ../shared/data/amazon/musical_instruments_5core_2014
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def constant_reward(completions, **kwargs):
    return [0.0] * len(completions)


def step_times(model_path, tasks, reward_funcs, options, steps: int, args, reward_weights=None) -> list[float]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig

    from llmrec.training.grpo_trainer import LlmrecGRPOTrainer

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    from peft import LoraConfig

    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="reward_overhead_"), max_steps=steps, learning_rate=0.0,
        per_device_train_batch_size=args.batch, num_generations=args.generations,
        max_completion_length=args.max_completion_length, beta=0.0, use_cpu=True, bf16=False, report_to="none",
        save_strategy="no", logging_steps=1, seed=0, reward_weights=reward_weights)
    trainer = LlmrecGRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=config, train_dataset=datasets.Dataset.from_list(tasks),
        processing_class=tok, callbacks=[Clock()],
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                               task_type="CAUSAL_LM"), **options)
    trainer.train()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", choices=["rerec", "bump"], default="rerec")
    ap.add_argument("--data", required=True)
    ap.add_argument("--cf_dir", default=None)
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=3, help="steps per run (the first is dropped as warm-up)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds of (full, constant)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--generations", type=int, default=4)
    ap.add_argument("--max_completion_length", type=int, default=96)
    ap.add_argument("--tasks", type=int, default=32)
    args = ap.parse_args()

    from trl import GRPOConfig

    from llmrec.backbone import resolve_backbone
    from llmrec.training.grpo_recipe import BumpArguments, RerecArguments, bump_setup, rerec_setup

    model_path = resolve_backbone(args.backbone)
    grpo = GRPOConfig(output_dir=tempfile.mkdtemp(), use_cpu=True, bf16=False)
    if args.recipe == "rerec":
        setup_args = RerecArguments(data=args.data, cf_dir=args.cf_dir, max_train_tasks=args.tasks, curriculum=False)
        tasks, funcs, options = rerec_setup(setup_args, grpo)
    else:
        setup_args = BumpArguments(data=args.data, max_train_tasks=args.tasks)
        tasks, funcs, options = bump_setup(setup_args, grpo)
    weights = grpo.reward_weights

    full, const = [], []
    for r in range(args.rounds):
        full += step_times(model_path, tasks, funcs, dict(options), args.steps, args, reward_weights=weights)[1:]
        const += step_times(model_path, tasks, [constant_reward], {}, args.steps, args)[1:]
        print(f"round {r + 1}: full {statistics.median(full):.2f} s/step, constant {statistics.median(const):.2f} s/step")
    f, c = statistics.median(full), statistics.median(const)
    print(f"{args.recipe}: full reward {f:.2f} s/step vs constant {c:.2f} s/step over {len(full)} steps each "
          f"-> overhead {100 * (f / c - 1):+.1f}% (x{f / c:.3f}); target < 25%")


if __name__ == "__main__":
    main()
