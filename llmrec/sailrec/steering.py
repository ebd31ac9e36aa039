"""Hierarchical attention steering on CF-token positions, through transformers' attention interface.

Every attention logit whose *key* is a CF soft token gets an additive bias ``b_l`` that depends only on the
layer ``l``: negative in shallow layers (the model first reads the text without the CF tokens), positive in
deep layers (the CF evidence weighs more where the answer is formed). For one query row whose attention mass
on the CF keys is ``m`` without steering, the bias multiplies the odds of that mass by exactly ``exp(b_l)``::

    m' = m * e^b / (m * e^b + 1 - m)        i.e.  m' / (1 - m') = e^b * m / (1 - m)

No model code is forked: :func:`register` adds an attention function named ``"sailrec"`` to
``transformers.AttentionInterface`` (the eager computation plus the bias) and the matching mask function to
``AttentionMaskInterface``; ``model.set_attn_implementation("sailrec")`` switches a loaded model to it. The
CF key positions and the schedule travel as keyword arguments of the model call, which transformers passes
down to every attention layer::

    model(inputs_embeds=x, attention_mask=m, sailrec_cf_keys=cf_mask, sailrec_bias=schedule)

``sailrec_cf_keys`` is ``[batch, prompt_len]`` bool (True = a CF token). With a KV cache the keys grow past
the prompt; positions beyond the given mask count as text (CF tokens only ever sit in the prompt).
``sailrec_bias`` is ``[num_layers]`` float. Without these arguments the function is plain eager attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

ATTN_NAME = "sailrec"


def layer_schedule(num_layers: int, shallow: float = -2.0, deep: float = 2.0, split: float = 0.5,
                   explicit: Sequence[float] | None = None) -> list[float]:
    """The per-layer bias: ``shallow`` for the first ``round(split * num_layers)`` layers, ``deep`` after.

    ``explicit`` (one value per layer) overrides the two-level schedule. Example:
    ``layer_schedule(4, -1.0, 2.0)`` -> ``[-1.0, -1.0, 2.0, 2.0]``.
    """
    if explicit:
        if len(explicit) != num_layers:
            from llmrec.errors import LlmrecError

            raise LlmrecError(f"the steering schedule has {len(explicit)} values; the model has {num_layers} layers")
        return [float(v) for v in explicit]
    cut = round(split * num_layers)
    return [float(shallow) if i < cut else float(deep) for i in range(num_layers)]


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    if groups == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, groups, n, d).reshape(b, h * groups, n, d)


def key_bias(cf_keys: torch.Tensor, bias: torch.Tensor | float, key_len: int) -> torch.Tensor:
    """``[b, 1, 1, key_len]`` additive logits: ``bias`` on CF keys, 0 elsewhere (keys past the mask are text)."""
    cf = cf_keys.to(torch.bool)
    if cf.shape[-1] < key_len:
        cf = torch.nn.functional.pad(cf, (0, key_len - cf.shape[-1]), value=False)
    cf = cf[..., :key_len]
    return (cf.float() * bias)[:, None, None, :]


def steered_attention(module, query, key, value, attention_mask, scaling: float | None = None, dropout: float = 0.0,
                      sailrec_cf_keys: torch.Tensor | None = None, sailrec_bias: torch.Tensor | None = None,
                      **kwargs):
    """Eager attention plus the layer's bias on CF-token keys (signature of transformers' attention functions).

    Shapes: query ``[b, heads, q, d]``, key/value ``[b, kv_heads, k, d]``, attention_mask ``[b, 1, q, k]``
    (additive float, from the eager mask function). Returns ``(output [b, q, heads, d], weights [b, heads, q, k])``.
    """
    groups = query.shape[1] // key.shape[1]
    k = _repeat_kv(key, groups)
    v = _repeat_kv(value, groups)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    logits = torch.matmul(query, k.transpose(2, 3)) * scaling
    if attention_mask is not None:
        logits = logits + attention_mask[..., : k.shape[-2]]
    if sailrec_cf_keys is not None and sailrec_bias is not None:
        layer = getattr(module, "layer_idx", 0) or 0
        b = sailrec_bias[layer] if torch.is_tensor(sailrec_bias) else float(sailrec_bias[layer])
        if torch.is_tensor(b):
            b = b.to(logits.dtype)
        logits = logits + key_bias(sailrec_cf_keys.to(logits.device), b, k.shape[-2]).to(logits.dtype)
    weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = torch.nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, v).transpose(1, 2).contiguous()
    return out, weights


def register() -> str:
    """Registers the ``"sailrec"`` attention and mask functions with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_NAME, steered_attention)
    AttentionMaskInterface.register(ATTN_NAME, eager_mask)
    return ATTN_NAME


def enable(model):
    """Switches a loaded transformers model (or a PEFT wrapper of one) to the steered attention."""
    register()
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.set_attn_implementation(ATTN_NAME)
    return model


def num_layers(model) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return int(base.config.num_hidden_layers)


@torch.no_grad()
def cf_attention_mass(model, inputs_embeds: torch.Tensor, cf_keys: torch.Tensor, attention_mask: torch.Tensor,
                      bias: torch.Tensor | None) -> torch.Tensor:
    """Per-layer attention mass on CF keys: ``[num_layers]``.

    For every layer: the attention weights summed over the CF key positions, averaged over heads and over
    the text query positions that come after the first CF token (they are the ones that can see a CF
    token), then over the batch. ``bias`` None (or zeros) gives the unsteered model.
    Shapes: inputs_embeds ``[b, s, hidden]``, cf_keys / attention_mask ``[b, s]``.
    """
    enable(model)
    if bias is None:
        bias = torch.zeros(num_layers(model))
    out = model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, output_attentions=True,
                sailrec_cf_keys=cf_keys, sailrec_bias=bias)
    cf = cf_keys.bool()
    first = torch.where(cf.any(1), cf.float().argmax(1), torch.full((cf.shape[0],), cf.shape[1]))
    pos = torch.arange(cf.shape[1])[None, :]
    queries = (pos > first[:, None]) & ~cf & attention_mask.bool()  # [b, s]
    masses = []
    for w in out.attentions:  # [b, heads, q, k]
        on_cf = (w.float() * cf[:, None, None, :]).sum(-1).mean(1)  # [b, q]
        masses.append((on_cf * queries).sum() / queries.sum().clamp(min=1))
    return torch.stack(masses)
