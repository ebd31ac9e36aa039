"""Codebooks over item text embeddings and the users' code histograms (SAILRec's user-side semantic profile).

A residual-quantization codebook of ``levels`` levels with ``codes`` centroids each (k-means at every level on
what the previous levels left unexplained; ``levels=1`` is plain k-means) gives every item one code per level.
A user's semantic profile is, per level, the share of their history items that fall on each code: a
``[levels, codes]`` distribution the user-side alignment loss asks the user's CF soft token to predict.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Codebook:
    centroids: list[np.ndarray]  # per level [codes, dim] float32
    codes: np.ndarray  # [n_items, levels] int64: each item's code per level

    @property
    def levels(self) -> int:
        return len(self.centroids)

    @property
    def size(self) -> int:
        return int(self.centroids[0].shape[0])

    def reconstruct(self) -> np.ndarray:
        """``[n_items, dim]``: the sum of each item's centroids over the levels."""
        return sum(c[self.codes[:, lvl]] for lvl, c in enumerate(self.centroids))


def residual_codebook(x: np.ndarray, codes: int = 32, levels: int = 2, seed: int = 0) -> Codebook:
    """Residual k-means over the rows of ``x`` ``[n, dim]`` (scikit-learn ``KMeans``, ``n_init=4``)."""
    from sklearn.cluster import KMeans

    from llmrec.errors import LlmrecError

    x = np.asarray(x, dtype=np.float32)
    if x.shape[0] < codes:
        raise LlmrecError(f"a codebook of {codes} codes needs at least {codes} items, got {x.shape[0]}")
    residual = x.copy()
    centroids, assigned = [], []
    for lvl in range(levels):
        km = KMeans(n_clusters=codes, n_init=4, random_state=seed + lvl).fit(residual)
        c = km.cluster_centers_.astype(np.float32)
        centroids.append(c)
        assigned.append(km.labels_.astype(np.int64))
        residual = residual - c[km.labels_]
    return Codebook(centroids, np.stack(assigned, 1))


def user_profiles(item_codes: np.ndarray, histories: Sequence[Sequence[int]], codes: int) -> np.ndarray:
    """``[n_users, levels, codes]`` float32: per level, the share of each user's history items on each code.

    ``histories`` holds item rows per user; a user without history gets the uniform distribution.
    Example: codes ``[[0], [1], [1]]`` (3 items, 1 level), history ``[0, 1, 2]``, 2 codes -> ``[[1/3, 2/3]]``.
    """
    levels = item_codes.shape[1]
    out = np.full((len(histories), levels, codes), 1.0 / codes, dtype=np.float32)
    for u, items in enumerate(histories):
        if len(items) == 0:
            continue
        for lvl in range(levels):
            counts = np.bincount(item_codes[np.asarray(items), lvl], minlength=codes).astype(np.float32)
            out[u, lvl] = counts / counts.sum()
    return out
