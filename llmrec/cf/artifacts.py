"""What ``llmrec cf train`` leaves in ``--out`` and the Python API that reads it back: ``load_cf(dir)``.

Files: ``user_emb.npy`` / ``item_emb.npy`` (float32, rows in the order of ``user_ids.json`` /
``item_ids.json``), ``model.pt`` (the state_dict), ``config.yaml`` (the config used; feed it back with
``--config``), ``metrics.json`` (valid/test metrics, baselines, epochs, times, per-epoch history),
``split.npz`` (train items per user as CSR, the valid and test item per user, train counts per item)
and ``curve.png`` (loss and valid NDCG@10 per epoch).

``load_cf`` needs numpy only for BPR-MF and LightGCN (scores are dot products of the saved
embeddings); NeuMF's scores come from its network, rebuilt with torch from ``model.pt``.

Example::

    cf = load_cf("runs/cf_lightgcn")
    cf.topk("196", k=10)                         # [(item_id, score), ...], history excluded
    cf.score(["196", "186"], ["242", "302"])      # [2, 2] scores
    cf.item_similarity("242", "302")             # cosine of the item embeddings
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.errors import LlmrecError

FILES = ("user_emb.npy", "item_emb.npy", "user_ids.json", "item_ids.json", "model.pt", "config.yaml",
         "metrics.json", "split.npz")


def save_cf(out: str | Path, result) -> Path:
    """Writes a ``llmrec.cf.train.CFResult`` to ``out`` (created; existing files of the same names replaced)."""
    import torch
    import yaml

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model, cf = result.model, result.data
    with torch.no_grad():
        user_emb, item_emb = model.embeddings()
    np.save(out / "user_emb.npy", user_emb.detach().cpu().numpy().astype(np.float32))
    np.save(out / "item_emb.npy", item_emb.detach().cpu().numpy().astype(np.float32))
    (out / "user_ids.json").write_text(json.dumps(cf.user_ids) + "\n")
    (out / "item_ids.json").write_text(json.dumps(cf.item_ids) + "\n")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / "model.pt")
    cfg = result.config.to_dict()
    cfg["out"] = str(out)
    (out / "config.yaml").write_text(
        f"# Purpose: the config this model was trained with (llmrec cf train).\n"
        f"# Run:     llmrec cf train --config {out / 'config.yaml'}\n" + yaml.safe_dump(cfg, sort_keys=False))
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=2) + "\n")
    train = cf.train_matrix()
    train.sort_indices()
    np.savez(out / "split.npz", train_indptr=train.indptr.astype(np.int64), train_items=train.indices.astype(np.int64),
             valid_item=cf.valid_item, test_item=cf.test_item, item_train_count=cf.item_counts())
    plot_curve(result.metrics, out / "curve.png")
    return out


def plot_curve(metrics: dict[str, Any], png: str | Path) -> Path | None:
    """Training loss and valid NDCG@10 per epoch (popularity's valid NDCG@10 as a dashed line)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = metrics.get("history") or []
    if not history:
        return None
    stop = metrics.get("validation_metrics", metrics["metrics"])[0]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot([r["epoch"] for r in history], [r["loss"] for r in history], marker="o", ms=3)
    ax1.set(xlabel="epoch", ylabel="training loss", title=f"{metrics['model']}: loss")
    ev = [r for r in history if "valid" in r]
    ax2.plot([r["epoch"] for r in ev], [r["valid"][stop] for r in ev], marker="o", ms=3, label=metrics["model"])
    if "popularity" in metrics:
        ax2.axhline(metrics["popularity"]["valid"][stop], ls="--", c="gray", label="popularity")
    ax2.axvline(metrics["best_epoch"], ls=":", c="green", label=f"best epoch {metrics['best_epoch']}")
    ax2.set(xlabel="epoch", ylabel=f"valid {stop}", title=f"{metrics['model']}: validation")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)


@dataclass
class CFRecommender:
    """A trained CF model read back from its folder: scores, top-k lists and item-item similarity."""

    path: Path
    model_name: str
    config: dict[str, Any]
    user_ids: list[str]
    item_ids: list[str]
    user_emb: np.ndarray  # [n_users, d] float32
    item_emb: np.ndarray  # [n_items, d] float32
    train_indptr: np.ndarray  # [n_users + 1]
    train_items: np.ndarray  # [n_train] item rows, sorted per user
    valid_item: np.ndarray  # [n_users] item row (-1 none)
    test_item: np.ndarray  # [n_users]
    metrics: dict[str, Any] = field(default_factory=dict)
    _users: dict[str, int] = field(default_factory=dict, repr=False)
    _items: dict[str, int] = field(default_factory=dict, repr=False)
    _net: Any = field(default=None, repr=False)
    _unit_items: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        self._users = {u: i for i, u in enumerate(self.user_ids)}
        self._items = {x: i for i, x in enumerate(self.item_ids)}

    @property
    def dot_product(self) -> bool:
        """True when scores are ``user_emb @ item_emb.T`` (BPR-MF, LightGCN)."""
        return self.model_name != "neumf"

    def user_index(self, user_ids: Sequence[str]) -> np.ndarray:
        return self._index(user_ids, self._users, "user")

    def item_index(self, item_ids: Sequence[str]) -> np.ndarray:
        return self._index(item_ids, self._items, "item")

    def _index(self, ids: Sequence[str], table: dict[str, int], kind: str) -> np.ndarray:
        if isinstance(ids, str):
            ids = [ids]
        out = np.empty(len(ids), dtype=np.int64)
        for n, x in enumerate(ids):
            row = table.get(str(x))
            if row is None:
                raise LlmrecError(f"unknown {kind} id {x!r}: not in {self.path / (kind + '_ids.json')} "
                                  f"({len(table)} {kind}s the model was trained on)")
            out[n] = row
        return out

    def _score_rows(self, users: np.ndarray, items: np.ndarray | None) -> np.ndarray:
        """[len(users), len(items)] scores for rows (items None = the whole catalog)."""
        if self.dot_product:
            item_emb = self.item_emb if items is None else self.item_emb[items]
            return self.user_emb[users] @ item_emb.T
        import torch

        net = self._network()
        with torch.no_grad():
            if items is None:
                return net.score_users(torch.as_tensor(users)).numpy()
            u = torch.as_tensor(users)[:, None].expand(-1, len(items))
            i = torch.as_tensor(items)[None, :].expand(len(users), -1)
            return net(u, i).numpy()

    def _network(self):
        if self._net is None:
            import torch

            from llmrec.cf.config import CFConfig
            from llmrec.cf.train import model_class

            cfg = CFConfig(**self.config)
            self._net = model_class(self.model_name)(len(self.user_ids), len(self.item_ids), cfg)
            self._net.load_state_dict(torch.load(self.path / "model.pt", map_location="cpu", weights_only=True))
            self._net.eval()
        return self._net

    def score(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Scores of every (user, item) combination: [len(user_ids), len(item_ids)] float32."""
        return self._score_rows(self.user_index(user_ids), self.item_index(item_ids)).astype(np.float32)

    def score_pairs(self, user_ids: Sequence[str], item_ids: Sequence[str]) -> np.ndarray:
        """Scores of aligned pairs ``(user_ids[n], item_ids[n])``: [n] float32."""
        u, i = self.user_index(user_ids), self.item_index(item_ids)
        if len(u) != len(i):
            raise LlmrecError(f"score_pairs needs as many users as items, got {len(u)} and {len(i)}")
        if self.dot_product:
            return (self.user_emb[u] * self.item_emb[i]).sum(1).astype(np.float32)
        import torch

        with torch.no_grad():
            return self._network()(torch.as_tensor(u), torch.as_tensor(i)).numpy().astype(np.float32)

    def scores_for_user(self, user_id: str) -> np.ndarray:
        """[n_items] scores of the whole catalog for one user, in ``item_ids`` order."""
        return self._score_rows(self.user_index([user_id]), None)[0].astype(np.float32)

    def seen_rows(self, user_id: str) -> np.ndarray:
        """Item rows in the user's history before the test item (train + valid)."""
        u = int(self.user_index([user_id])[0])
        rows = self.train_items[self.train_indptr[u]: self.train_indptr[u + 1]]
        return np.union1d(rows, self.valid_item[u: u + 1][self.valid_item[u: u + 1] >= 0])

    def seen_items(self, user_id: str) -> list[str]:
        return [self.item_ids[i] for i in self.seen_rows(user_id)]

    def topk(self, user_id: str, k: int = 10, exclude_seen: bool = True) -> list[tuple[str, float]]:
        """The ``k`` best items for a user as (item_id, score), best first; ties: higher item row first.

        ``exclude_seen`` drops the user's train and valid items (the history the test item follows).
        """
        scores = self.scores_for_user(user_id).astype(np.float64)
        if exclude_seen:
            scores[self.seen_rows(user_id)] = -np.inf
        rows = np.arange(len(scores))
        order = np.lexsort((-rows, -scores))[:k]
        return [(self.item_ids[i], float(scores[i])) for i in order if np.isfinite(scores[i])]

    def _unit(self) -> np.ndarray:
        if self._unit_items is None:
            norm = np.linalg.norm(self.item_emb, axis=1, keepdims=True)
            self._unit_items = self.item_emb / np.maximum(norm, 1e-12)
        return self._unit_items

    def item_similarities(self, items_a: Sequence[str], items_b: Sequence[str]) -> np.ndarray:
        """Cosine similarity of item embeddings: [len(items_a), len(items_b)] float32."""
        unit = self._unit()
        return (unit[self.item_index(items_a)] @ unit[self.item_index(items_b)].T).astype(np.float32)

    def item_similarity(self, item_a: str, item_b: str) -> float:
        """Cosine similarity of two items' embeddings (NeuMF: its [GMF ; MLP] item embeddings)."""
        return float(self.item_similarities([item_a], [item_b])[0, 0])

    def similar_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` items most similar to ``item_id`` by cosine (the item itself left out)."""
        sims = self._unit() @ self._unit()[self.item_index([item_id])[0]]
        sims[self.item_index([item_id])[0]] = -np.inf
        order = np.argsort(-sims, kind="stable")[:k]
        return [(self.item_ids[i], float(sims[i])) for i in order]


def load_cf(path: str | Path) -> CFRecommender:
    """Reads a folder written by ``llmrec cf train`` (see the module docstring for its files)."""
    import yaml

    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no such CF model folder: {path}")
    missing = [f for f in FILES if not (path / f).exists()]
    if missing:
        raise LlmrecError(f"{path} is not a complete llmrec CF model folder: missing {', '.join(missing)}")
    config = yaml.safe_load((path / "config.yaml").read_text())
    user_ids = json.loads((path / "user_ids.json").read_text())
    item_ids = json.loads((path / "item_ids.json").read_text())
    user_emb, item_emb = np.load(path / "user_emb.npy"), np.load(path / "item_emb.npy")
    if user_emb.shape[0] != len(user_ids) or item_emb.shape[0] != len(item_ids):
        raise LlmrecError(f"{path}: embeddings ({user_emb.shape[0]} users, {item_emb.shape[0]} items) do not "
                          f"match the id files ({len(user_ids)}, {len(item_ids)})")
    split = np.load(path / "split.npz")
    return CFRecommender(path=path, model_name=config["model"], config=config, user_ids=user_ids,
                         item_ids=item_ids, user_emb=user_emb, item_emb=item_emb,
                         train_indptr=split["train_indptr"], train_items=split["train_items"],
                         valid_item=split["valid_item"], test_item=split["test_item"],
                         metrics=json.loads((path / "metrics.json").read_text()))
