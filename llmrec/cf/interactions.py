"""Integer id maps and the leave-one-out split as arrays: what every CF model trains and is evaluated on.

The split is ``llmrec.data.splits.leave_one_out`` (per user in time order: last interaction test,
second-last valid, the rest train), the same one the LLM recommenders use, so CF and LLM models are
scored on the same held-out items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrec.data.schema import RecData
from llmrec.errors import DataError, LlmrecError


@dataclass
class CFData:
    """Users and items as rows 0..n-1, deduplicated train pairs, one valid and one test item per user."""

    name: str
    user_ids: list[str]  # row order of user embeddings
    item_ids: list[str]  # row order of item embeddings (the whole catalog)
    train_users: np.ndarray  # [n_train] int64
    train_items: np.ndarray  # [n_train] int64
    valid_item: np.ndarray  # [n_users] int64
    test_item: np.ndarray  # [n_users] int64
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def train_matrix(self):
        """The binary users x items train matrix (scipy CSR, float32)."""
        import scipy.sparse as sp

        ones = np.ones(len(self.train_users), dtype=np.float32)
        return sp.csr_matrix((ones, (self.train_users, self.train_items)), shape=(self.n_users, self.n_items))

    def history_matrix(self):
        """Train plus valid items per user: what is masked when ranking for the test item."""
        import scipy.sparse as sp

        m = self.train_matrix() + sp.csr_matrix(
            (np.ones(self.n_users, dtype=np.float32), (np.arange(self.n_users), self.valid_item)),
            shape=(self.n_users, self.n_items))
        m.data[:] = 1.0
        return m

    def item_counts(self) -> np.ndarray:
        """[n_items] int64 train interactions per item (the popularity baseline's scores)."""
        return np.bincount(self.train_items, minlength=self.n_items).astype(np.int64)


def _columns(data: RecData) -> tuple[np.ndarray, np.ndarray]:
    t = data.interactions.with_format("arrow")[:]
    return (np.asarray(t.column("user_id").to_pylist(), dtype=object),
            np.asarray(t.column("item_id").to_pylist(), dtype=object))


def _row_order(table_ids: list[str], used: np.ndarray) -> list[str]:
    """Ids in the table's row order, then ids used by interactions but missing from the table (sorted)."""
    seen = set(table_ids)
    extra = sorted(set(used.tolist()) - seen)
    return list(table_ids) + extra


def slice_users(data: RecData, max_users: int) -> RecData:
    """The first ``max_users`` users by id (string order) with their interactions; for quick runs."""
    users, _ = _columns(data)
    keep = set(sorted(set(users.tolist()))[:max_users])
    rows = np.flatnonzero(np.fromiter((u in keep for u in users), dtype=bool, count=len(users)))
    return RecData(name=data.name, users=data.users, items=data.items,
                   interactions=data.interactions.select(rows), filtered=data.filtered)


def build_cf_data(data: RecData, min_interactions: int = 3, max_users: int = 0) -> CFData:
    """Splits ``data`` leave-one-out and maps ids to rows.

    Users: those the split keeps (at least ``min_interactions`` interactions), in the users table's
    order. Items: the whole items table (every item is a ranking candidate), in its order.
    Repeated (user, item) pairs in train count once; ``stats`` says how many were merged and how
    many held-out items the user had already seen (those are masked, so no model can rank them).
    """
    import pandas as pd

    from llmrec.data.splits import leave_one_out

    if len(data.interactions) == 0:
        raise DataError("the data set has no interactions", file=data.name)
    if max_users:
        data = slice_users(data, max_users)
    split = leave_one_out(data, min_interactions=min_interactions)
    if len(split.valid.interactions) == 0:
        users_all, _ = _columns(data)
        raise LlmrecError(f"{data.name}: no user has at least {min_interactions} interactions "
                          f"({len(set(users_all.tolist()))} users, {len(users_all)} interactions); "
                          "leave-one-out needs one train, one valid and one test interaction per user")
    tr_u, tr_i = _columns(split.train)
    va_u, va_i = _columns(split.valid)
    te_u, te_i = _columns(split.test)

    kept = set(va_u.tolist())
    table_users = [u for u in data.users.with_format("arrow")["user_id"].to_pylist() if u in kept]
    user_ids = _row_order(table_users, va_u)
    all_items = np.concatenate([tr_i, va_i, te_i])
    item_ids = _row_order(data.items.with_format("arrow")["item_id"].to_pylist(), all_items)
    if len(set(item_ids)) != len(item_ids):
        raise DataError("duplicate item ids in the items table", file=data.name, field="item_id")
    uidx, iidx = pd.Index(user_ids), pd.Index(item_ids)

    u = uidx.get_indexer(tr_u).astype(np.int64)
    i = iidx.get_indexer(tr_i).astype(np.int64)
    pairs = np.unique(u * len(item_ids) + i)
    train_users, train_items = pairs // len(item_ids), pairs % len(item_ids)

    n_users = len(user_ids)
    valid_item = np.full(n_users, -1, dtype=np.int64)
    test_item = np.full(n_users, -1, dtype=np.int64)
    valid_item[uidx.get_indexer(va_u)] = iidx.get_indexer(va_i)
    test_item[uidx.get_indexer(te_u)] = iidx.get_indexer(te_i)

    train_keys = set(pairs.tolist())
    rows = np.arange(n_users)
    valid_seen = sum(k in train_keys for k in (rows * len(item_ids) + valid_item).tolist())
    test_in_train = np.fromiter((k in train_keys for k in (rows * len(item_ids) + test_item).tolist()), dtype=bool,
                                count=n_users)
    test_seen = int((test_in_train | (test_item == valid_item)).sum())
    train_item_set = set(train_items.tolist())
    stats = {
        "users": n_users, "items": len(item_ids), "train_interactions": len(pairs),
        "train_repeats_merged": int(len(u) - len(pairs)),
        "valid_item_already_in_train": int(valid_seen), "test_item_already_in_history": int(test_seen),
        "valid_items_cold": int(sum(x not in train_item_set for x in valid_item.tolist())),
        "test_items_cold": int(sum(x not in train_item_set for x in test_item.tolist())),
        "split_filtered": dict(split.filtered.counts),
    }
    return CFData(name=data.name, user_ids=user_ids, item_ids=item_ids, train_users=train_users,
                  train_items=train_items, valid_item=valid_item, test_item=test_item, stats=stats)
