"""The ``sft`` recipe: ``llmrec train sft --config configs/sft_lamp.yaml``."""

from __future__ import annotations

import json
import os
from pathlib import Path


def parse(argv: list[str], prog: str):
    from trl import ModelConfig, SFTConfig, TrlParser

    from llmrec.training.sft import SFTDataArguments

    parser = TrlParser((SFTDataArguments, SFTConfig, ModelConfig), prog=prog)
    return parser.parse_args_and_config(argv)


def main(argv: list[str], prog: str = "llmrec train sft") -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    data_args, sft_config, model_args = parse(argv, prog)
    from trl import get_peft_config

    from llmrec.backbone import resolve_backbone
    from llmrec.training.sft import read_prompt_completion_jsonl, train_sft
    from llmrec.training.sft_data import lamp_sft_examples

    model_path = resolve_backbone(model_args.model_name_or_path or data_args.backbone)
    if data_args.train_file:
        examples = read_prompt_completion_jsonl(data_args.train_file, data_args.system_prompt)
    elif data_args.rerec_data:
        examples = rerec_warm_start(data_args)
    else:
        examples = lamp_sft_examples(data_args.lamp_dir, "train", retriever=data_args.retriever, k=data_args.k,
                                     system_prompt=data_args.system_prompt)
    if data_args.max_train_examples:
        examples = examples[: data_args.max_train_examples]
    out = train_sft(model_path, examples, sft_config, get_peft_config(model_args))
    Path(out, "llmrec_train.json").write_text(json.dumps(
        {"recipe": "sft", "backbone": str(model_path), "examples": len(examples),
         "data": {k: v for k, v in vars(data_args).items()}}, indent=2))
    print(f"saved to {out} (metrics: {out / 'metrics.jsonl'}, curve: {out / 'metrics.png'})")
    return 0


def rerec_warm_start(data_args) -> list[dict]:
    from llmrec.data import load_recdata
    from llmrec.training.rerec_sft import SftAnswerTemplate, rerec_sft_examples
    from llmrec.training.rerec_tasks import build_rerec_tasks

    cf = None
    if data_args.rerec_cf_dir:
        from llmrec.cf import load_cf

        cf = load_cf(data_args.rerec_cf_dir)
    meta = {"item_meta": data_args.rerec_item_meta} if data_args.rerec_item_meta else {}
    tasks = build_rerec_tasks(load_recdata(data_args.rerec_data, **meta), split="train", cf=cf,
                              max_users=data_args.max_train_examples, template=data_args.rerec_task_prompt)
    return rerec_sft_examples(tasks, SftAnswerTemplate.load(data_args.rerec_answer_prompt))
