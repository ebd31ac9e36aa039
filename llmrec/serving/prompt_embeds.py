"""Turn a prompt plus a user's soft prefix into vLLM ``prompt_embeds`` (and back, for checks).

vLLM accepts ``prompt_embeds`` = base64 of ``torch.save(tensor[seq, hidden])`` on /v1/completions.
To put a prefix in front of a text prompt the gateway needs the prompt's own token embeddings, so it
loads only the backbone's input-embedding table (not the model) and the tokenizer.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmrec.errors import LlmrecError


class EmbedsError(LlmrecError):
    """Client-supplied prompt embeddings that cannot be used; ``param`` names the request field."""

    def __init__(self, message: str, param: str = "prompt_embeds"):
        super().__init__(message)
        self.param = param


def encode_embeds(tensor) -> str:
    import torch

    buf = io.BytesIO()
    torch.save(tensor.contiguous(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_embeds(data: object, hidden_size: int, param: str = "prompt_embeds"):
    """Client base64 -> float32 tensor [seq, hidden], with the same checks vLLM makes (safely: weights only)."""
    import torch

    if not isinstance(data, str) or not data:
        raise EmbedsError(f"'{param}' must be a base64 string of torch.save(tensor[seq, hidden])", param)
    try:
        raw = base64.b64decode(data, validate=True)
        tensor = torch.load(io.BytesIO(raw), weights_only=True, map_location="cpu")
    except (binascii.Error, ValueError) as e:
        raise EmbedsError(f"'{param}' is not valid base64: {e}", param) from None
    except Exception as e:  # noqa: BLE001 (torch raises many types for bytes that are not a tensor file)
        raise EmbedsError(f"'{param}' could not be read as a torch tensor: {str(e)[:200]}", param) from None
    if not isinstance(tensor, torch.Tensor):
        raise EmbedsError(f"'{param}' holds a {type(tensor).__name__}, not a tensor", param)
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tensor.dim() != 2 or tensor.shape[0] == 0:
        raise EmbedsError(f"'{param}' must have shape [seq, {hidden_size}], got {tuple(tensor.shape)}", param)
    if tensor.shape[1] != hidden_size:
        raise EmbedsError(f"'{param}' hidden size {tensor.shape[1]} does not match the model's {hidden_size}", param)
    if not tensor.is_floating_point():
        raise EmbedsError(f"'{param}' must be floating point, got {tensor.dtype}", param)
    tensor = tensor.float()
    if not torch.isfinite(tensor).all():
        raise EmbedsError(f"'{param}' contains NaN or infinite values", param)
    return tensor


def _embedding_key(model_dir: Path) -> str | None:
    """Name of the input-embedding weight in the checkpoint, found from the model class on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    weight = model.get_input_embeddings().weight
    return next((n for n, p in model.named_parameters() if p is weight), None)


def _load_embedding_table(model_dir: Path):
    import torch
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
    elif (model_dir / "model.safetensors").is_file():
        with safe_open(model_dir / "model.safetensors", "pt") as f:
            weight_map = {k: "model.safetensors" for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    else:
        weight_map = {}
    key = _embedding_key(model_dir)
    if key not in weight_map:  # checkpoints sometimes differ by a wrapper prefix
        key = next((k for k in weight_map if key and k.endswith(key.split(".", 1)[-1])), None)
    if key is not None:
        with safe_open(model_dir / weight_map[key], "pt") as f:
            return f.get_tensor(key).float()
    # No safetensors (or an unusual layout): load the model once and keep only its table.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return model.get_input_embeddings().weight.detach().clone()


@dataclass
class PromptEmbedder:
    """Tokenizer + input-embedding table of the served backbone (a LoRA adapter never changes them here:
    llmrec adapters target attention/MLP projections, not the embeddings)."""

    tokenizer: object
    table: object  # torch.Tensor [vocab, hidden] float32

    @classmethod
    def load(cls, model_dir: str | Path) -> PromptEmbedder:
        import torch
        from transformers import AutoTokenizer

        model_dir = Path(model_dir)
        if not (model_dir / "config.json").is_file():
            raise LlmrecError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
        with torch.no_grad():
            table = _load_embedding_table(model_dir)
        return cls(AutoTokenizer.from_pretrained(model_dir), table)

    @property
    def hidden_size(self) -> int:
        return int(self.table.shape[1])

    def token_ids(self, prompt: str, chat: bool) -> list[int]:
        # vLLM's conventions: a chat template's text already holds its special tokens; a plain completion
        # prompt gets the tokenizer's default special tokens.
        return self.tokenizer(prompt, add_special_tokens=not chat)["input_ids"]

    def chat_prompt(self, messages: list[dict], **template_kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **template_kwargs)

    def embed_ids(self, ids: list[int]):
        import torch

        if ids and (min(ids) < 0 or max(ids) >= self.table.shape[0]):
            raise EmbedsError(f"token ids must be in [0, {self.table.shape[0]})", "prompt")
        return self.table[torch.tensor(ids, dtype=torch.long)]

    def with_prefix(self, prefix: np.ndarray | None, ids: list[int] | None = None, embeds=None):
        """``[prefix; embeddings of ids (or the given embeds)]`` as float32 [K + seq, hidden]."""
        import torch

        body = self.embed_ids(ids) if embeds is None else embeds
        if prefix is None:
            return body
        pre = torch.as_tensor(np.asarray(prefix, dtype=np.float32))
        if pre.ndim != 2 or pre.shape[1] != self.hidden_size:
            raise LlmrecError(f"stored prefix has shape {tuple(pre.shape)}; the model's hidden size is "
                              f"{self.hidden_size}")
        return torch.cat([pre, body.float()], 0)
