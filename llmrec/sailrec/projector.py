"""CF embeddings -> soft tokens in the LLM's embedding space, and SAILRec's dual-side alignment losses.

:class:`SoftTokenProjector` maps a user's and an item's CF embedding (from ``llmrec cf train``) to one soft
token each (``[hidden]``). As in TAP-PER, an output's L2 norm is set to the mean norm of the backbone's
token-embedding rows times a learned gain, so the frozen LM sees soft tokens on the scale of real tokens.

Alignment (both computed on the soft tokens, so they shape what the LM reads):

- **item side** (:func:`item_alignment_loss`): InfoNCE between a linear read-out of each item's soft token and
  the item's text embedding; the other items of the batch are the negatives.
- **user side** (:func:`user_alignment_loss`): a linear read-out of the user's soft token predicts, per level of
  the codebook, the distribution of the user's history items over the codes (cross-entropy with those soft
  targets, averaged over levels).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

PROJECTOR_CONFIG = "sailrec_projector.json"
PROJECTOR_WEIGHTS = "sailrec_projector.safetensors"


def _mlp(d_in: int, hidden: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(d_in), nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, hidden))


class SoftTokenProjector(nn.Module):
    """User / item CF embeddings -> ``[.., hidden]`` soft tokens, plus the alignment read-outs.

    Example::

        proj = SoftTokenProjector(user_dim=64, item_dim=64, hidden_size=576, text_dim=576, code_levels=2, codes=32)
        u_tok = proj.user(user_emb)      # [b, 576]
        i_tok = proj.item(item_emb)      # [n, 576]
    """

    def __init__(self, user_dim: int, item_dim: int, hidden_size: int, text_dim: int, code_levels: int = 2,
                 codes: int = 32, width: int = 256, embed_norm: float = 1.0):
        super().__init__()
        self.config = {"user_dim": user_dim, "item_dim": item_dim, "hidden_size": hidden_size, "text_dim": text_dim,
                       "code_levels": code_levels, "codes": codes, "width": width, "embed_norm": embed_norm}
        self.user_mlp = _mlp(user_dim, hidden_size, width)
        self.item_mlp = _mlp(item_dim, hidden_size, width)
        self.log_gain = nn.Parameter(torch.zeros(2))  # user, item
        self.item_readout = nn.Linear(hidden_size, text_dim)
        self.user_readout = nn.Linear(hidden_size, code_levels * codes)
        self.log_temperature = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(0.07)))))
        self.register_buffer("embed_norm", torch.tensor(float(embed_norm)))

    def _scale(self, x: torch.Tensor, which: int) -> torch.Tensor:
        unit = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-6)
        return unit * self.embed_norm * self.log_gain[which].exp()

    def user(self, emb: torch.Tensor) -> torch.Tensor:
        return self._scale(self.user_mlp(emb), 0)

    def item(self, emb: torch.Tensor) -> torch.Tensor:
        return self._scale(self.item_mlp(emb), 1)

    def code_logits(self, user_tokens: torch.Tensor) -> torch.Tensor:
        """``[b, levels, codes]`` logits of the user-side read-out."""
        c = self.config
        return self.user_readout(user_tokens).view(*user_tokens.shape[:-1], c["code_levels"], c["codes"])


def item_alignment_loss(item_tokens: torch.Tensor, text: torch.Tensor, readout: nn.Module,
                        log_temperature: torch.Tensor) -> torch.Tensor:
    """InfoNCE over ``n`` distinct items: ``item_tokens [n, hidden]`` against their ``text [n, text_dim]``.

    ``loss = mean_i -log softmax_j(cos(readout(tok_i), text_j) / tau)[i]`` with ``tau = exp(log_temperature)``
    (clamped to [0.01, 1]); 0 for fewer than two items.
    """
    if item_tokens.shape[0] < 2:
        return item_tokens.sum() * 0.0
    z = nn.functional.normalize(readout(item_tokens), dim=-1)
    t = nn.functional.normalize(text.to(z.dtype), dim=-1)
    tau = log_temperature.exp().clamp(0.01, 1.0)
    logits = z @ t.T / tau
    return nn.functional.cross_entropy(logits, torch.arange(len(z), device=z.device))


def user_alignment_loss(code_logits: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``code_logits [b, levels, codes]`` against the profiles ``[b, levels, codes]``
    (distributions), averaged over users and levels: ``-mean_{b,l} sum_c p log softmax(logits)``."""
    return -(profile * code_logits.log_softmax(-1)).sum(-1).mean()


def save_projector(proj: SoftTokenProjector, out: str | Path, extra: dict | None = None) -> Path:
    from llmrec.training.side_module_trainer import save_side_module

    return save_side_module(proj, out, "projector", PROJECTOR_CONFIG, PROJECTOR_WEIGHTS, extra)


def load_projector(run_dir: str | Path) -> tuple[SoftTokenProjector, dict]:
    """The projector of a ``llmrec train sailrec`` run and its saved settings (``sailrec_projector.json``)."""
    from llmrec.training.side_module_trainer import load_side_module

    return load_side_module(SoftTokenProjector, run_dir, "projector", PROJECTOR_CONFIG, PROJECTOR_WEIGHTS,
                            "llmrec train sailrec")
