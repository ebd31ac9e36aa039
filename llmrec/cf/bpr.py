"""BPR-MF (Rendle et al., UAI 2009): user and item embeddings scored by their dot product, trained with BPR.

Hand-written (a dozen lines of torch): the libraries that ship BPR-MF (implicit's Cython BPR, cornac)
are not in our pinned stack and would not share the torch training loop, early stopping and
evaluation that LightGCN uses here. The loss is PyG's ``BPRLoss``, the one LightGCN trains with.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.nn.models.lightgcn import BPRLoss

from llmrec.cf.config import CFConfig


def pairwise_bpr(loss_fn: BPRLoss, pos: Tensor, neg: Tensor, params: Tensor) -> Tensor:
    """BPR over ``pos`` [b] against every column of ``neg`` [b, k], L2 on ``params`` (the batch's embeddings)."""
    return loss_fn(pos[:, None].expand_as(neg).reshape(-1), neg.reshape(-1), params)


class BPRMF(nn.Module):
    """Matrix factorisation: ``score(u, i) = <p_u, q_i>``."""

    dot_product = True  # scores are user_emb @ item_emb.T of ``embeddings()``

    def __init__(self, n_users: int, n_items: int, cfg: CFConfig, train_pairs: tuple[np.ndarray, np.ndarray] | None = None):
        super().__init__()
        self.user = nn.Embedding(n_users, cfg.dim)
        self.item = nn.Embedding(n_items, cfg.dim)
        # Small init as in the BPR literature; N(0, 1) dot products of 64 dims start far too large.
        nn.init.normal_(self.user.weight, std=0.1)
        nn.init.normal_(self.item.weight, std=0.1)
        self.loss_fn = BPRLoss(cfg.l2_reg)

    def loss(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        """users [b], pos [b], neg [b, k] -> scalar BPR loss with L2 on the embeddings used."""
        u, p, n = self.user(users), self.item(pos), self.item(neg)
        pos_s = (u * p).sum(-1)
        neg_s = (u[:, None, :] * n).sum(-1)
        return pairwise_bpr(self.loss_fn, pos_s, neg_s, torch.cat([u, p, n.reshape(-1, n.shape[-1])]))

    def embeddings(self) -> tuple[Tensor, Tensor]:
        """(user [n_users, d], item [n_items, d]) whose dot products are the scores."""
        return self.user.weight, self.item.weight
