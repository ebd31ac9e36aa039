"""The ``grpo-rerec`` and ``grpo-bump`` recipes: ``llmrec train grpo-rerec --config configs/grpo_rerec_ml100k.yaml``.

Flags are TRL's ``GRPOConfig`` and ``ModelConfig`` (LoRA) plus llmrec's section (``RerecArguments`` or
``BumpArguments``), parsed by TRL's ``TrlParser`` from the YAML config and the command line. Training runs
unchanged under ``accelerate launch``; a killed run resumes from its last checkpoint (curriculum included)
when started again with the same ``output_dir``.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmrec.errors import LlmrecError


@dataclass
class CommonArguments:
    backbone: str = field(default="smollm2-135m-instruct", metadata={
        "help": "backbone name from 'llmrec backbone get' or a local HF model folder"})
    data: str | None = field(default=None, metadata={"help": "data folder any llmrec loader reads"})
    item_meta: str | None = field(default=None, metadata={
        "help": "item metadata file for data sets whose titles live apart (Amazon Beauty: Amazon_Beauty.item)"})
    tasks_file: str | None = field(default=None, metadata={"help": "tasks JSONL written earlier (instead of data)"})
    max_train_tasks: int | None = field(default=None, metadata={"help": "cap on training tasks"})
    init_adapter: str | None = field(default=None, metadata={
        "help": "LoRA adapter to start from (e.g. the SFT run); trained further instead of a new adapter"})
    resume: bool = field(default=True, metadata={"help": "resume from the last checkpoint in output_dir"})

    def check(self) -> None:
        for name in ("data", "item_meta", "tasks_file", "init_adapter", "cf_dir", "export_store"):
            # '' or 'none' on the command line clears a path the YAML set
            if isinstance(getattr(self, name, None), str) and getattr(self, name).strip().lower() in ("", "none"):
                setattr(self, name, None)
        if (self.data is None) == (self.tasks_file is None):
            raise LlmrecError("give exactly one of data or tasks_file")


@dataclass
class RerecArguments(CommonArguments):
    cf_dir: str | None = field(default=None, metadata={
        "help": "CF run from 'llmrec cf train' (LightGCN...) for the Preference Alignment Score"})
    n_candidates: int = field(default=20, metadata={"help": "candidates per task (1 held-out positive + negatives)"})
    max_history: int = field(default=10, metadata={"help": "history items shown in the request"})
    task_seed: int = field(default=0, metadata={"help": "seed for negatives and candidate order"})
    task_prompt: str | None = field(default=None, metadata={
        "help": "task prompt file (default prompts/rerec/task.yaml; prompts/rerec/task_attributes.yaml also "
                "lists each candidate's genres/categories)"})
    reward: str = field(default="full", metadata={
        "help": "full = format + NDCG@K + w_qas*QAS + w_pas*PAS; ndcg = NDCG@K only (plain GRPO baseline)"})
    ndcg_k: int = field(default=10, metadata={"help": "K of the NDCG reward"})
    alignment_k: int | None = field(default=None, metadata={
        "help": "QAS and PAS average over the answer's top alignment_k items, discounted as in NDCG (default: "
                "ndcg_k); 1 scores the recommended item alone"})
    w_format: float = field(default=1.0, metadata={"help": "weight of the format reward"})
    w_qas: float = field(default=0.5, metadata={"help": "w1: weight of the Query Alignment Score (item-attribute KG)"})
    w_pas: float = field(default=0.5, metadata={"help": "w2: weight of the Preference Alignment Score (CF graph)"})
    reasoning_aware: bool = field(default=True, metadata={"help": "token-level reasoning-aware advantages"})
    bad_segment_factor: float = field(default=0.5, metadata={
        "help": "reward factor for tokens of a reasoning segment that argues for a wrong or unknown item"})
    wrong_item_rule: str = field(default="any-non-target", metadata={
        "help": "which reasoning segments argue for a wrong item: 'any-non-target' (names only non-target "
                "candidates) or 'above-target' (also names one the answer does not place below a target)"})
    bad_segment_penalty: str = field(default="reward", metadata={
        "help": "where a bad segment's tokens pay: 'reward' (they earn R - (1-f)|R|, then advantages are "
                "group-normalised) or 'advantage' (GRPO's advantage A, and A - (1-f)|A| for them: a zero-reward "
                "answer's malformed box then takes more blame than its reasoning)"})
    box_rule: str = field(default="format", metadata={
        "help": "when the answer's box is a bad segment: 'format' (only when malformed) or 'top-item' (also when "
                "well formed and its first item is not a target: the box argues for that item)"})
    shaping: str = field(default="always", metadata={
        "help": "when format, QAS and PAS count: 'always' (ReRec) or 'fallback' (only in the groups where NDCG is "
                "flat, every rollout equally right or wrong; llmrec.training.shaping_gate)"})
    curriculum: bool = field(default=True, metadata={"help": "online curriculum (easy to hard, trivial dropped)"})
    curriculum_drop_below: float = field(default=0.05, metadata={
        "help": "difficulty (1 - mean NDCG of the last pass) under which a task is dropped"})

    def check(self) -> None:
        super().check()
        if self.reward not in ("full", "ndcg"):
            raise LlmrecError(f"reward must be 'full' or 'ndcg', got {self.reward!r}")
        for name in ("ndcg_k", "alignment_k"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise LlmrecError(f"{name} must be at least 1, got {getattr(self, name)}")
        from llmrec.rewards.rerec import BOX_RULES, WRONG_ITEM_RULES
        from llmrec.training.reasoning_advantages import PENALTY_SPACES

        if self.wrong_item_rule not in WRONG_ITEM_RULES:
            raise LlmrecError(f"wrong_item_rule must be one of {WRONG_ITEM_RULES}, got {self.wrong_item_rule!r}")
        if self.bad_segment_penalty not in PENALTY_SPACES:
            raise LlmrecError(f"bad_segment_penalty must be one of {PENALTY_SPACES}, got {self.bad_segment_penalty!r}")
        if self.box_rule not in BOX_RULES:
            raise LlmrecError(f"box_rule must be one of {BOX_RULES}, got {self.box_rule!r}")
        if self.shaping not in ("always", "fallback"):
            raise LlmrecError(f"shaping must be 'always' or 'fallback', got {self.shaping!r}")
        if self.shaping == "fallback" and self.reward == "ndcg":
            # With NDCG alone there is no shaping term to gate: refuse rather than run plain GRPO under this name.
            raise LlmrecError("shaping 'fallback' gates the format/QAS/PAS terms of --reward full; "
                              "--reward ndcg has none (drop --shaping fallback or use --reward full)")
        if self.n_candidates < 2:
            raise LlmrecError(f"n_candidates must be >= 2, got {self.n_candidates}")


@dataclass
class BumpArguments(CommonArguments):
    judge: str = field(default="st", metadata={
        "help": "ranking judge: 'st' (MiniLM sentence encoder), 'st:PATH', or 'lm:PATH' (LM log-likelihood)"})
    alpha: float = field(default=0.5, metadata={"help": "weight of profile->items vs items->profile ranking"})
    n_history: int = field(default=8, metadata={"help": "interactions shown to the profile writer"})
    n_heldout: int = field(default=3, metadata={"help": "held-out interactions each profile is judged on"})
    export_store: str | None = field(default=None, metadata={
        "help": "after training, write every training user's profile to this user-state store (dir or .sqlite)"})


RECIPES = {"grpo-rerec": RerecArguments, "grpo-bump": BumpArguments}


def parse(argv: list[str], prog: str, recipe: str | None = None):
    """(llmrec section, GRPOConfig, ModelConfig); the recipe defaults to the last word of ``prog``."""
    from trl import GRPOConfig, ModelConfig, TrlParser

    recipe = recipe or prog.split()[-1]
    parser = TrlParser((RECIPES[recipe], GRPOConfig, ModelConfig), prog=prog)
    return parser.parse_args_and_config(argv)


def load_policy(model_path, args: CommonArguments, model_args):
    """The model to train: the backbone, or the backbone with ``init_adapter`` loaded trainable."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    if args.init_adapter:
        from peft import PeftModel

        if not Path(args.init_adapter, "adapter_config.json").exists():
            raise LlmrecError(f"init_adapter {args.init_adapter}: no adapter_config.json there")
        policy = PeftModel.from_pretrained(model, args.init_adapter, is_trainable=True)
        _warn_lora_settings_not_applied(policy.peft_config["default"], model_args, args.init_adapter)
        return policy, None
    from trl import get_peft_config

    return model, get_peft_config(model_args)


def _warn_lora_settings_not_applied(adapter_config, model_args, adapter_path) -> None:
    """Say which LoRA settings of the config an ``init_adapter`` run does not use: the adapter keeps its own."""
    import warnings

    pairs = {"lora_r": (adapter_config.r, model_args.lora_r),
             "lora_alpha": (adapter_config.lora_alpha, model_args.lora_alpha),
             "lora_dropout": (adapter_config.lora_dropout, model_args.lora_dropout)}
    if model_args.lora_target_modules is not None:
        def names(x):  # a list, a set, or one string such as "all-linear"
            return sorted([x] if isinstance(x, str) else (x or []))

        pairs["lora_target_modules"] = (names(adapter_config.target_modules), names(model_args.lora_target_modules))
    differ = [f"{name} {kept} (config: {asked})" for name, (kept, asked) in pairs.items() if kept != asked]
    if differ:
        # Why a warning and not an override: the shape cannot change, and the dropout of every GRPO run measured so
        # far came from the adapter (docs/training.md); changing it silently would change those runs.
        warnings.warn(f"init_adapter {adapter_path} keeps its own LoRA settings: {', '.join(differ)}", stacklevel=2)


def load_data(args: CommonArguments):
    from llmrec.data import load_recdata

    return load_recdata(args.data, **({"item_meta": args.item_meta} if args.item_meta else {}))


def rerec_setup(args: RerecArguments, grpo_config):
    """Tasks, reward functions and trainer options for ``grpo-rerec``."""
    from llmrec.rewards import rerec as R
    from llmrec.training import rerec_tasks as T

    tasks = T.load_rerec_tasks("train", data=args.data, tasks_file=args.tasks_file, item_meta=args.item_meta,
                               cf_dir=args.cf_dir, n_candidates=args.n_candidates, max_history=args.max_history,
                               seed=args.task_seed, max_tasks=args.max_train_tasks, template=args.task_prompt)
    format_r, ndcg_r, qas_r, pas_r = R.make_component_rewards(
        k=args.ndcg_k, log_with="format" if args.reward == "full" else "ndcg", alignment_k=args.alignment_k)
    if args.reward == "full":
        funcs, weights = [format_r, ndcg_r, qas_r, pas_r], [args.w_format, 1.0, args.w_qas, args.w_pas]
    else:
        funcs, weights = [ndcg_r], [1.0]
    if grpo_config.reward_weights is None:
        grpo_config.reward_weights = weights
    full = args.reward == "full"
    options = {"shaping_anchor": "ndcg"} if full and args.shaping == "fallback" else {}
    if full and args.reasoning_aware:
        options.update(segment_fn=functools.partial(rerec_segment_fn, wrong_item_rule=args.wrong_item_rule,
                                                    box_rule=args.box_rule),
                       bad_segment_factor=args.bad_segment_factor, bad_segment_penalty=args.bad_segment_penalty)
    return tasks, funcs, options


def rerec_segment_fn(text: str, example: dict, wrong_item_rule: str = "any-non-target", box_rule: str = "format"):
    from llmrec.rewards.rerec import reasoning_segments

    targets = set(example["targets"])
    target_idx = {i for i, c in enumerate(example["candidates"]) if c in targets}
    return [(s.start, s.end, s.label != "ok")
            for s in reasoning_segments(text, example["candidate_titles"], target_idx, len(example["candidates"]),
                                        wrong_item_rule=wrong_item_rule, box_rule=box_rule)]


def bump_setup(args: BumpArguments, grpo_config):
    from llmrec.rewards.bump import make_bump_reward
    from llmrec.rewards.judges import load_judge
    from llmrec.training import bump_tasks as T

    if args.tasks_file:
        from llmrec.training.rerec_tasks import read_tasks_jsonl

        tasks = read_tasks_jsonl(args.tasks_file)
    else:
        tasks = T.build_bump_tasks(load_data(args), n_history=args.n_history, n_heldout=args.n_heldout,
                                   max_users=args.max_train_tasks, split="train")
    if args.max_train_tasks:
        tasks = tasks[: args.max_train_tasks]
    return tasks, [make_bump_reward(load_judge(args.judge), alpha=args.alpha)], {}


def main(argv: list[str], prog: str, recipe: str) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, grpo_config, model_args = parse(argv, prog, recipe)
    args.check()
    import datasets
    from transformers import AutoTokenizer
    from transformers.trainer_utils import get_last_checkpoint

    from llmrec.backbone import resolve_backbone
    from llmrec.training.curriculum import CurriculumScheduler
    from llmrec.training.grpo_trainer import LlmrecGRPOTrainer
    from llmrec.training.metrics_log import JsonlMetricsCallback

    model_path = resolve_backbone(model_args.model_name_or_path or args.backbone)
    setup = rerec_setup if recipe == "grpo-rerec" else bump_setup
    tasks, reward_funcs, options = setup(args, grpo_config)
    if not tasks:
        raise LlmrecError("no training tasks")
    out = Path(grpo_config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if getattr(args, "curriculum", False):
        options["curriculum"] = CurriculumScheduler(
            keys=[str(t["task_id"]) for t in tasks], drop_below=args.curriculum_drop_below, seed=grpo_config.seed,
            log_path=out / "curriculum.jsonl")
        options["curriculum_reward"] = "ndcg"
    checkpoint = get_last_checkpoint(str(out)) if args.resume and out.is_dir() else None
    if checkpoint and "curriculum" in options:
        options["curriculum"].load(checkpoint)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model, peft_config = load_policy(model_path, args, model_args)
    trainer = LlmrecGRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=grpo_config,
        train_dataset=datasets.Dataset.from_list(tasks), processing_class=tokenizer, peft_config=peft_config,
        callbacks=[JsonlMetricsCallback(out / "metrics.jsonl")], **options)
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        tokenizer.save_pretrained(out)
        (out / "llmrec_train.json").write_text(json.dumps(
            {"recipe": recipe, "backbone": str(model_path), "tasks": len(tasks), "llmrec": asdict(args),
             "processes": trainer.accelerator.num_processes, "global_step": trainer.state.global_step,
             "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
             "reward_funcs": trainer.reward_func_names, "reward_weights": list(grpo_config.reward_weights or [])},
            indent=2, default=str))
        if recipe == "grpo-bump" and args.export_store:
            export_trained_profiles(trainer, tasks, args.export_store)
        print(f"saved to {out} (metrics: {out / 'metrics.jsonl'}, curve: {out / 'metrics.png'})")
    return 0


def export_trained_profiles(trainer, tasks: list[dict], store: str) -> None:
    """Greedy profiles from the trained policy for every training user, into the user-state store."""
    from llmrec.eval.profile_rating import generate_profiles_with_model
    from llmrec.training.profile_export import export_profiles

    profiles = generate_profiles_with_model(trainer.model, trainer.processing_class, tasks)
    n = export_profiles(profiles, store)
    print(f"exported {n} profiles to {store}")


def rerec_main(argv: list[str], prog: str = "llmrec train grpo-rerec") -> int:
    return main(argv, prog, "grpo-rerec")


def bump_main(argv: list[str], prog: str = "llmrec train grpo-bump") -> int:
    return main(argv, prog, "grpo-bump")
