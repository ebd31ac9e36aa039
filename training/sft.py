"""Supervised fine-tuning with LoRA on TRL's ``SFTTrainer`` (the ``sft`` recipe).

Examples are prompt/completion pairs in chat form, so the loss covers only the answer tokens
(TRL's completion-only loss) and the model learns in the same template it is served with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from llmrec.errors import LlmrecError


@dataclass
class SFTDataArguments:
    """llmrec's section of an SFT config: where the examples come from."""

    backbone: str = field(default="smollm2-135m-instruct", metadata={
        "help": "backbone name from 'llmrec backbone get' or a local HF model folder"})
    train_file: str | None = field(default=None, metadata={
        "help": "JSONL with 'prompt' and 'completion' strings (or chat message lists)"})
    lamp_dir: str | None = field(default=None, metadata={
        "help": "folder from 'llmrec data build-lamp' (train_questions.json / train_outputs.json)"})
    rerec_data: str | None = field(default=None, metadata={
        "help": "data folder: warm-start on its ReRec train-split tasks (reasoning + \\boxed{} answers)"})
    rerec_item_meta: str | None = field(default=None, metadata={
        "help": "item metadata file for rerec_data when titles live apart (Amazon Beauty: Amazon_Beauty.item)"})
    rerec_cf_dir: str | None = field(default=None, metadata={
        "help": "CF run for the ReRec tasks' PAS column (orders the runners-up in the warm-start answers)"})
    rerec_task_prompt: str | None = field(default=None, metadata={
        "help": "ReRec task prompt file (default prompts/rerec/task.yaml); use the GRPO run's and the evaluation's"})
    rerec_answer_prompt: str | None = field(default=None, metadata={
        "help": "ReRec warm-start answer file (default prompts/rerec/sft_answer.yaml), e.g. "
                "rerec/sft_answer_attributes_first.yaml with the task prompt rerec/task_attributes_first.yaml"})
    retriever: str = field(default="bm25", metadata={"help": "profile retriever for LaMP prompts: bm25, dense, none"})
    k: int = field(default=2, metadata={"help": "profile items put in each LaMP prompt"})
    max_train_examples: int | None = field(default=None, metadata={"help": "cap on training examples"})
    system_prompt: str | None = field(default=None, metadata={"help": "optional system message for every example"})

    def __post_init__(self):
        if sum(x is not None for x in (self.train_file, self.lamp_dir, self.rerec_data)) != 1:
            raise LlmrecError("give exactly one of train_file, lamp_dir or rerec_data")
        if self.k < 0:
            raise LlmrecError(f"k must be >= 0, got {self.k}")


def to_chat_example(prompt, completion, system_prompt: str | None = None) -> dict:
    """``{"prompt": [...messages], "completion": [assistant message]}`` from strings or message lists."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if system_prompt:
        prompt = [{"role": "system", "content": system_prompt}, *prompt]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": completion}]
    return {"prompt": prompt, "completion": completion}


def read_prompt_completion_jsonl(path: str | Path, system_prompt: str | None = None) -> list[dict]:
    from llmrec.errors import DataError
    from llmrec.jsonl import iter_jsonl

    rows = []
    for i, r in iter_jsonl(path):
        for key in ("prompt", "completion"):
            if not isinstance(r, dict) or key not in r:
                raise DataError("missing field", file=str(path), record=i, field=key)
        rows.append(to_chat_example(r["prompt"], r["completion"], system_prompt))
    if not rows:
        raise DataError("no examples", file=str(path))
    return rows


def default_lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules=None,
                        top_layers: int | None = None, num_layers: int | None = None):
    """LoRA on the attention projections; ``top_layers`` adapts only the last N of ``num_layers``.

    Adapting only the top layers stops back-propagation there, which roughly halves a CPU training
    step of a 30-layer model when N is a third of the layers.
    """
    from peft import LoraConfig

    layers = None
    if top_layers is not None:
        if not num_layers or not 0 < top_layers <= num_layers:
            raise LlmrecError(f"top_layers must be in 1..num_layers ({num_layers}), got {top_layers}")
        layers = list(range(num_layers - top_layers, num_layers))
    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="CAUSAL_LM",
                      target_modules=target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"],
                      layers_to_transform=layers, layers_pattern="layers" if layers else None)


def train_sft(model_path: str | Path, examples: list[dict], sft_config, peft_config=None,
              callbacks: list | None = None) -> Path:
    """Fine-tunes ``model_path`` on chat ``examples``; saves the adapter (or full model) to ``output_dir``.

    Returns the output directory, which holds the PEFT adapter plus the tokenizer, ready for
    ``llmrec serve --lora NAME=DIR`` or ``PeftModel.from_pretrained``.
    """
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from llmrec.training.metrics_log import JsonlMetricsCallback

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not examples:
        raise LlmrecError("no training examples")
    out = Path(sft_config.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    check_lengths(examples, tokenizer, sft_config.max_length)
    # Loaded here (not by name inside TRL) so nothing ever resolves a hub id.
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype="float32")
    trainer = SFTTrainer(
        model=model,
        args=sft_config,
        train_dataset=datasets.Dataset.from_list(examples),
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[JsonlMetricsCallback(out / "metrics.jsonl"), *(callbacks or [])],
    )
    trainer.train(resume_from_checkpoint=_last_checkpoint(out))
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    return out


def _token_count(tokenizer, messages, generation_prompt: bool) -> int:
    if isinstance(messages, str):
        return len(tokenizer(messages).input_ids)
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False).input_ids)


def check_lengths(examples: list[dict], tokenizer, max_length: int | None) -> dict:
    """Counts the examples ``max_length`` cuts, before TRL does so silently.

    TRL truncates each tokenized example to ``max_length`` and then drops those whose answer was cut away
    entirely: a prompt longer than the limit means a user is silently missing from training (the Amazon
    Beauty ReRec prompts, 20 long titles, run 1,000-1,400 tokens). An answer cut in part loses its end, e.g.
    the ``\\boxed{}`` ranking. Raises when nothing would survive; warns with the length needed otherwise.
    """
    import warnings

    if not max_length or "prompt" not in examples[0]:
        return {"dropped": 0, "cut": 0, "longest": None}  # not measured
    dropped = cut = longest = 0
    for ex in examples:
        completion = ex["completion"]
        prompt_len = _token_count(tokenizer, ex["prompt"], generation_prompt=True)
        full = (ex["prompt"] + completion if isinstance(completion, list) else None)
        full_len = (_token_count(tokenizer, full, generation_prompt=False) if full is not None
                    else prompt_len + _token_count(tokenizer, completion, generation_prompt=False))
        longest = max(longest, full_len)
        dropped += prompt_len >= max_length
        cut += prompt_len < max_length < full_len
    report = {"dropped": dropped, "cut": cut, "longest": longest}
    if dropped == len(examples):
        raise LlmrecError(f"every one of the {len(examples)} examples has a prompt of max_length={max_length} "
                          f"tokens or more, so TRL would train on none: set max_length to at least {longest}")
    if dropped or cut:
        warnings.warn(f"max_length={max_length}: {dropped} of {len(examples)} examples lose their whole answer "
                      f"(TRL drops them) and {cut} lose its end; the longest needs {longest} tokens", stacklevel=2)
    return report


def _last_checkpoint(out: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if out.is_dir() else None
