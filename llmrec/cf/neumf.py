"""NeuMF (He et al., WWW 2017, "Neural Collaborative Filtering"): a GMF tower and an MLP tower fused by
one linear layer into a logit.

Hand-written in torch: no maintained package on our stack ships NeuMF (cornac's is not installed and
RecBole is unmaintained), and it is a few layers. Trained pointwise with BCE against
``num_negatives`` sampled negatives per positive as in the paper (``neumf_loss: bce``), or with BPR
(``neumf_loss: bpr``). Its scores are not dot products, so full ranking runs the network over the
catalog, chunked to keep memory bounded.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn.models.lightgcn import BPRLoss

from llmrec.cf.bpr import pairwise_bpr
from llmrec.cf.config import CFConfig

_CHUNK_ELEMENTS = 1 << 24  # users x items x hidden floats held at once when scoring the catalog (64 MiB)


class NeuMF(nn.Module):
    """``logit(u, i) = h . [p_u * q_i ; MLP([m_u ; n_i])] + b``."""

    dot_product = False

    def __init__(self, n_users: int, n_items: int, cfg: CFConfig, train_pairs: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__()
        sizes = list(cfg.mlp_layers)
        half = sizes[0] // 2
        self.gmf_user, self.gmf_item = nn.Embedding(n_users, cfg.dim), nn.Embedding(n_items, cfg.dim)
        self.mlp_user, self.mlp_item = nn.Embedding(n_users, half), nn.Embedding(n_items, half)
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        self.predict = nn.Linear(cfg.dim + sizes[-1], 1)
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, std=0.01)  # the paper's initialisation
        for lin in self.mlp:
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)
        self.objective = cfg.neumf_loss
        self.l2_reg = cfg.l2_reg
        self.bpr = BPRLoss(cfg.l2_reg)

    def _mlp(self, h: Tensor) -> Tensor:
        for i, lin in enumerate(self.mlp):
            # Callers apply the first layer's linear part (score_users splits it into user and item halves).
            h = F.relu(lin(h) if i else h)
        return h

    def forward(self, users: Tensor, items: Tensor) -> Tensor:
        """Logits for pairs: users and items of the same shape (any) -> that shape."""
        gmf = self.gmf_user(users) * self.gmf_item(items)
        h = self._mlp(self.mlp[0](torch.cat([self.mlp_user(users), self.mlp_item(items)], -1)))
        return self.predict(torch.cat([gmf, h], -1)).squeeze(-1)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        """users [b], pos [b], neg [b, k] -> BCE (positives 1, negatives 0) or BPR, plus L2 on the batch embeddings."""
        pos_s = self(users, pos)
        neg_s = self(users[:, None].expand_as(neg), neg)
        params = torch.cat([self.gmf_user(users), self.gmf_item(pos), self.gmf_item(neg).reshape(len(users), -1)], 1)
        mlp_params = torch.cat([self.mlp_user(users), self.mlp_item(pos), self.mlp_item(neg).reshape(len(users), -1)], 1)
        if self.objective == "bpr":
            return pairwise_bpr(self.bpr, pos_s, neg_s, torch.cat([params, mlp_params], 1))
        logits = torch.cat([pos_s, neg_s.reshape(-1)])
        labels = torch.cat([torch.ones_like(pos_s), torch.zeros_like(neg_s).reshape(-1)])
        reg = self.l2_reg * (params.pow(2).sum() + mlp_params.pow(2).sum()) / len(logits)
        return F.binary_cross_entropy_with_logits(logits, labels) + reg

    @torch.no_grad()
    def score_users(self, users: Tensor) -> Tensor:
        """Logits of every item for each user: users [b] -> [b, n_items].

        The GMF part is a matrix product and the first MLP layer splits into a user half and an item
        half, so only the later (small) layers run per (user, item) pair.
        """
        gw = self.predict.weight[0, : self.gmf_user.embedding_dim]
        gmf = (self.gmf_user(users) * gw) @ self.gmf_item.weight.T  # [b, I]
        hw = self.predict.weight[0, self.gmf_user.embedding_dim:]
        half = self.mlp_user.embedding_dim
        w = self.mlp[0].weight
        hu = self.mlp_user(users) @ w[:, :half].T + self.mlp[0].bias  # [b, h1]
        hi = self.mlp_item.weight @ w[:, half:].T  # [I, h1]
        n_items, width = hi.shape
        step = max(1, _CHUNK_ELEMENTS // (n_items * width))
        mlp = torch.empty(len(users), n_items, device=gmf.device, dtype=gmf.dtype)
        for a in range(0, len(users), step):
            h = self._mlp(hu[a: a + step, None, :] + hi[None])  # [s, I, h_last]
            mlp[a: a + step] = h @ hw
        return gmf + mlp + self.predict.bias

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """([GMF ; MLP] user [n_users, d + m], item [n_items, d + m]) embeddings.

        Their dot product is not the NeuMF score (use ``score_users``); they serve item-item cosine
        similarity and as features for other models.
        """
        return (torch.cat([self.gmf_user.weight, self.mlp_user.weight], 1),
                torch.cat([self.gmf_item.weight, self.mlp_item.weight], 1))
