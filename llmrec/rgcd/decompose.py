"""Transferability-guided representation learning: item vector -> (transferable part, domain residual).

The head maps an item's student vector (and image vector, when the item has one) through a shared trunk into
two parts of the same size: ``z_t`` (transferable, used to retrieve across domains) and ``z_r`` (domain
residual). Its loss, for a batch of behavioural-collaboration pairs (source item a_i, target item b_i, the
two co-interacted by one user):

    L = InfoNCE(z_t(a), z_t(b)) + lambda_orth * L_orth + lambda_domain * L_domain + lambda_rec * L_rec

- ``info_nce``: symmetric in-batch InfoNCE on unit vectors with temperature tau: the other pairs' items are
  the negatives;
- ``orthogonality_loss``: mean over items of cos(z_t, z_r)^2: 0 when the two parts are orthogonal;
- ``domain_loss``: cross-entropy of a linear domain classifier on z_r (the residual carries the domain);
- ``reconstruction_loss``: MSE of a linear decoder from [z_t, z_r] back to the input vector (the two parts
  together keep what the item vector held).

``head_split=False`` is the ablation without the decomposition: one projection trained with InfoNCE alone.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from llmrec.errors import LlmrecError
from llmrec.rgcd.config import HeadConfig

__all__ = ["HeadConfig", "RGCDHead", "info_nce", "orthogonality_loss", "train_head"]


def info_nce(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE: ``a``, ``b`` ``[B, d]`` (row i of each is a positive pair) -> scalar.

    Rows are L2-normalised; logits = a @ b.T / temperature; the loss is the mean of the cross-entropy of
    each a_i over b (target i) and of each b_i over a.
    """
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.T / temperature  # [B, B]
    labels = torch.arange(len(a), device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def orthogonality_loss(zt: torch.Tensor, zr: torch.Tensor) -> torch.Tensor:
    """Mean squared cosine between the two parts of each item, ``[B, d]`` each -> scalar in [0, 1]."""
    return F.cosine_similarity(zt, zr, dim=-1, eps=1e-8).pow(2).mean()


class RGCDHead(nn.Module):
    """``text [B, dt]`` (+ ``image [B, dv]``, ``has_image [B]``) -> ``z_t [B, dim]``, ``z_r [B, dim] | None``."""

    def __init__(self, text_dim: int, config: HeadConfig, image_dim: int = 0, n_domains: int = 2):
        super().__init__()
        self.config, self.text_dim, self.image_dim, self.n_domains = config, text_dim, image_dim, n_domains
        h = config.head_hidden
        if config.head_standardize:  # set from the items by train_head; saved with the weights
            self.register_buffer("in_mean", torch.zeros(text_dim))
            self.register_buffer("in_std", torch.ones(text_dim))
        self.norm = nn.LayerNorm(text_dim)
        self.text_proj = nn.Linear(text_dim, h)
        self.image_proj = nn.Linear(image_dim, h) if image_dim else None
        self.trunk = nn.Sequential(nn.GELU(), nn.Dropout(config.head_dropout), nn.Linear(h, h), nn.GELU())
        self.transfer = nn.Linear(h, config.head_dim)
        if config.head_split:
            self.residual = nn.Linear(h, config.head_dim)
            self.domain_head = nn.Linear(config.head_dim, n_domains)
            self.decoder = nn.Linear(2 * config.head_dim, text_dim)

    def forward(self, text: torch.Tensor, image: torch.Tensor | None = None,
                has_image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.text_proj(self._normed(text))
        if self.image_proj is not None and image is not None:
            gate = has_image.to(x.dtype).unsqueeze(-1) if has_image is not None else 1.0
            x = x + gate * self.image_proj(image)  # items without an image: the text path alone
        x = self.trunk(x)
        zt = self.transfer(x)
        return zt, (self.residual(x) if self.config.head_split else None)

    def _normed(self, text: torch.Tensor) -> torch.Tensor:
        if self.config.head_standardize:
            text = (text - self.in_mean) / self.in_std
        return self.norm(text)

    def losses(self, feats: dict[str, torch.Tensor], a: torch.Tensor, b: torch.Tensor,
               domains: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for pairs (rows ``a[i]``, ``b[i]`` of ``feats``); ``domains`` [n] domain index per row."""
        rows = torch.cat([a, b])
        zt, zr = self(feats["text"][rows], _take(feats.get("image"), rows), _take(feats.get("has_image"), rows))
        n = len(a)
        out = {"contrastive": info_nce(zt[:n], zt[n:], self.config.head_temperature)}
        if self.config.head_split:
            out["orthogonality"] = orthogonality_loss(zt, zr)
            out["domain"] = F.cross_entropy(self.domain_head(zr), domains[rows])
            out["reconstruction"] = F.mse_loss(self.decoder(torch.cat([zt, zr], -1)), self._normed(feats["text"][rows]))
        c = self.config
        weights = {"contrastive": 1.0, "orthogonality": c.lambda_orth, "domain": c.lambda_domain,
                   "reconstruction": c.lambda_rec}
        out["loss"] = sum(weights[k] * v for k, v in out.items())
        return out

    @torch.no_grad()
    def embed(self, text: np.ndarray, image: np.ndarray | None = None, has_image: np.ndarray | None = None,
              batch_size: int = 4096) -> tuple[np.ndarray, np.ndarray | None]:
        """Unit-length parts for items: (transferable ``[n, dim]``, residual ``[n, dim]`` or None)."""
        self.eval()
        zts, zrs = [], []
        for s in range(0, len(text), batch_size):
            sl = slice(s, s + batch_size)
            zt, zr = self(torch.as_tensor(text[sl], dtype=torch.float32),
                          None if image is None else torch.as_tensor(image[sl], dtype=torch.float32),
                          None if has_image is None else torch.as_tensor(has_image[sl]))
            zts.append(F.normalize(zt, dim=-1).numpy())
            if zr is not None:
                zrs.append(F.normalize(zr, dim=-1).numpy())
        zt = np.concatenate(zts) if zts else np.zeros((0, self.config.head_dim), np.float32)
        return zt, (np.concatenate(zrs) if zrs else None)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), folder / "rgcd_head.pt")
        (folder / "rgcd_head.json").write_text(json.dumps(
            {"config": asdict(self.config), "text_dim": self.text_dim, "image_dim": self.image_dim,
             "n_domains": self.n_domains}, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> RGCDHead:
        folder = Path(folder)
        meta = json.loads((folder / "rgcd_head.json").read_text())
        head = cls(meta["text_dim"], HeadConfig(**meta["config"]), meta["image_dim"], meta["n_domains"])
        head.load_state_dict(torch.load(folder / "rgcd_head.pt", weights_only=True))
        return head.eval()


def _take(x, rows):
    return None if x is None else x[rows]


def train_head(text: np.ndarray, pairs: np.ndarray, domains: np.ndarray, config: HeadConfig,
               image: np.ndarray | None = None, has_image: np.ndarray | None = None,
               log_every: int = 0) -> tuple[RGCDHead, list[dict]]:
    """Trains a head on item vectors ``text [n, d]`` and index ``pairs [P, 2]`` (source row, target row).

    ``domains [n]``: 0/1 domain of each row. Returns the head and one record of mean losses per epoch.
    """
    torch.manual_seed(config.head_seed)
    rng = random.Random(config.head_seed)
    pairs = np.asarray(pairs, dtype=np.int64)
    if len(pairs) < 2:
        raise LlmrecError(f"{len(pairs)} training pairs; the contrastive objective needs at least 2")
    head = RGCDHead(text.shape[1], config, 0 if image is None else image.shape[1], int(domains.max()) + 1)
    feats = {"text": torch.as_tensor(text, dtype=torch.float32)}
    if config.head_standardize:  # statistics of all items' inputs (no labels involved), as the export sees them
        head.in_mean.copy_(feats["text"].mean(0))
        head.in_std.copy_(feats["text"].std(0).clamp(min=1e-6))
    if image is not None:
        feats["image"] = torch.as_tensor(image, dtype=torch.float32)
        feats["has_image"] = torch.as_tensor(has_image if has_image is not None else np.ones(len(text), bool))
    dom = torch.as_tensor(domains, dtype=torch.long)
    opt = torch.optim.AdamW(head.parameters(), lr=config.head_lr, weight_decay=config.head_weight_decay)
    history = []
    order = list(range(len(pairs)))
    for epoch in range(config.head_epochs):
        head.train()
        rng.shuffle(order)
        sums, steps = {}, 0
        for s in range(0, len(order), config.head_batch_size):
            batch = pairs[order[s: s + config.head_batch_size]]
            if len(batch) < 2:
                continue
            parts = head.losses(feats, torch.as_tensor(batch[:, 0]), torch.as_tensor(batch[:, 1]), dom)
            opt.zero_grad()
            parts["loss"].backward()
            opt.step()
            steps += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        rec = {"epoch": epoch + 1, **{k: v / max(steps, 1) for k, v in sums.items()}}
        history.append(rec)
        if log_every and (epoch + 1) % log_every == 0:
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
    return head.eval(), history
