"""Offline export of item representations and cross-domain retrieval over FAISS.

``export_dir/``:
- ``items.jsonl``: one line per row: ``item_id``, ``domain``, ``title``;
- ``transferable.npy`` ``[n, dim]`` and (split heads) ``residual.npy`` ``[n, dim]``: unit float32 vectors;
- ``popularity.npy`` ``[n]`` (when counts are given): how many training users interacted with each item;
- ``index_<k>.faiss``: an exact inner-product index over the transferable vectors of each domain (plus one
  popularity column when counts are given, see below), with ``export.json`` mapping domain -> index file
  and its rows;
- ``export.json``: domains, dims, how the vectors were made, the default ``popularity_weight``.

Retrieval (:class:`CrossDomainRetriever`): a user's query is the normalised mean of the transferable vectors
of their source-domain history; the target domain's index returns the top K by
``cosine + popularity_weight * popularity``, where ``popularity`` is ``log(1 + count)`` standardised over
the items of the domain (:func:`popularity_bias`). Weight 0 is the plain cosine.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmrec.errors import LlmrecError


@dataclass
class ItemFeatures:
    """Encoder outputs for a list of items: ``text [n, dt]``, ``image [n, dv] | None``, ``has_image [n]``."""

    text: np.ndarray
    image: np.ndarray | None = None
    has_image: np.ndarray | None = None


def encode_items(texts: Sequence[str], encoder, image_paths: Sequence[str | None] | None = None,
                 image_encoder=None, batch_size: int = 16) -> ItemFeatures:
    """Item vectors from a text encoder and (when given and any item has an image) an image encoder."""
    text = encoder.encode(list(texts), batch_size=batch_size)
    if image_encoder is None or image_paths is None or not any(p is not None for p in image_paths):
        return ItemFeatures(text)
    image, has = image_encoder.encode_paths(list(image_paths), batch_size=batch_size)
    return ItemFeatures(text, image, has)


def embed_items(texts: Sequence[str], encoder, head=None, image_paths=None, image_encoder=None,
                batch_size: int = 16) -> tuple[np.ndarray, np.ndarray | None]:
    """The full export computation: encoders then head -> (transferable, residual), unit vectors.

    Without a head the encoder's text vectors, normalised, are the transferable part (no residual).
    """
    feats = encode_items(texts, encoder, image_paths, image_encoder, batch_size)
    if head is None:
        return _unit(feats.text), None
    return head.embed(feats.text, feats.image, feats.has_image)


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def popularity_bias(counts: np.ndarray, domains: Sequence[str]) -> np.ndarray:
    """``[n]`` float32: ``log(1 + count)`` standardised within each domain (zeros where a domain's counts are
    all equal). Standardising makes one weight mean the same on any data set: W is in cosine units per
    standard deviation of log popularity."""
    z = np.log1p(np.asarray(counts, dtype=np.float64))
    doms = np.asarray(domains)
    out = np.zeros(len(z), dtype=np.float32)
    for dom in dict.fromkeys(doms.tolist()):
        rows = doms == dom
        sd = z[rows].std()
        if sd > 0:
            out[rows] = (z[rows] - z[rows].mean()) / sd
    return out


def _index_matrix(vectors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    # The popularity prior is one more column of the index, and the query carries the weight in that column:
    # inner product = cosine + W * bias, exactly, for every item. Over-fetching K' by cosine and re-scoring
    # could miss a popular item ranked below K'; this keeps FAISS exact, and one index serves any W.
    if bias is None:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    return np.ascontiguousarray(np.hstack([vectors, bias[:, None]]), dtype=np.float32)


def _slug(domain: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", domain).strip("_").lower() or "domain"


def write_export(out_dir: str | Path, item_ids: Sequence[str], domains: Sequence[str], transferable: np.ndarray,
                 residual: np.ndarray | None = None, titles: Sequence[str] | None = None,
                 info: dict | None = None, counts: Sequence[int] | None = None,
                 popularity_weight: float = 0.0) -> Path:
    """Writes vectors, item table and one FAISS index per domain (see the module docstring).

    ``counts`` (per item, training users only) add the popularity column to the indexes;
    ``popularity_weight`` is the default weight ``llmrec rgcd retrieve`` uses with them.
    """
    import faiss

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    transferable = np.ascontiguousarray(transferable, dtype=np.float32)
    if len(item_ids) != len(transferable) or len(domains) != len(item_ids):
        raise LlmrecError(f"{len(item_ids)} items, {len(domains)} domains, {len(transferable)} vectors")
    titles = titles or [""] * len(item_ids)
    with open(out / "items.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"item_id": iid, "domain": dom, "title": title}, ensure_ascii=False) + "\n" for iid, dom, title in zip(item_ids, domains, titles))
    np.save(out / "transferable.npy", transferable)
    if residual is not None:
        np.save(out / "residual.npy", np.ascontiguousarray(residual, dtype=np.float32))
    if counts is None and popularity_weight:
        raise LlmrecError("a popularity_weight needs the items' counts")
    bias = None
    if counts is not None:
        counts = np.asarray(counts, dtype=np.int64)
        if len(counts) != len(item_ids):
            raise LlmrecError(f"{len(item_ids)} items, {len(counts)} popularity counts")
        np.save(out / "popularity.npy", counts)
        bias = popularity_bias(counts, domains)
    matrix = _index_matrix(transferable, bias)
    indexes = {}
    doms = np.asarray(domains)
    for dom in dict.fromkeys(domains):
        rows = np.flatnonzero(doms == dom)
        index = faiss.IndexFlatIP(matrix.shape[1])
        index.add(matrix[rows])
        name = f"index_{_slug(dom)}.faiss"
        faiss.write_index(index, str(out / name))
        np.save(out / f"rows_{_slug(dom)}.npy", rows)
        indexes[dom] = {"index": name, "rows": f"rows_{_slug(dom)}.npy", "items": len(rows)}
    (out / "export.json").write_text(json.dumps(
        {"items": len(item_ids), "dim": int(transferable.shape[1]), "residual": residual is not None,
         "popularity": counts is not None, "popularity_weight": float(popularity_weight), "indexes": indexes,
         **(info or {})}, indent=2))
    return out


class CrossDomainRetriever:
    """Target-domain candidates for a source-domain history, from an export folder (or arrays).

    With ``counts`` (per item, training users) scores are ``cosine + popularity_weight * popularity_bias``;
    ``search`` takes another weight per call (the index does not change with it).
    """

    def __init__(self, item_ids: Sequence[str], domains: Sequence[str], transferable: np.ndarray,
                 indexes: dict | None = None, counts: Sequence[int] | None = None, popularity_weight: float = 0.0):
        import faiss

        self.item_ids = list(item_ids)
        self.row_of = {iid: i for i, iid in enumerate(self.item_ids)}
        self.domains = np.asarray(domains)
        self.vectors = np.ascontiguousarray(transferable, dtype=np.float32)
        self.counts = None if counts is None else np.asarray(counts, dtype=np.int64)
        self.bias = None if counts is None else popularity_bias(self.counts, self.domains)
        if self.bias is None and popularity_weight:
            raise LlmrecError("a popularity_weight needs the items' counts (an export written with them)")
        self.popularity_weight = float(popularity_weight)
        self.indexes = indexes or {}
        matrix = _index_matrix(self.vectors, self.bias)
        for dom in dict.fromkeys(self.domains.tolist()):
            if dom not in self.indexes:
                rows = np.flatnonzero(self.domains == dom)
                index = faiss.IndexFlatIP(matrix.shape[1])
                index.add(matrix[rows])
                self.indexes[dom] = (index, rows)
        for dom, (index, _) in self.indexes.items():
            if index.d != matrix.shape[1]:
                raise LlmrecError(f"index of '{dom}' has {index.d} dimensions, expected {matrix.shape[1]}")

    @classmethod
    def load(cls, export_dir: str | Path, popularity_weight: float | None = None) -> CrossDomainRetriever:
        """An export folder; ``popularity_weight`` None: the export's default (0 for exports without counts)."""
        import faiss

        d = Path(export_dir)
        if not (d / "export.json").is_file():
            raise LlmrecError(f"{d}: not an RGCD export (no export.json); run `llmrec rgcd export` first")
        meta = json.loads((d / "export.json").read_text())
        rows = [json.loads(line) for line in (d / "items.jsonl").read_text(encoding="utf-8").splitlines() if line]
        indexes = {dom: (faiss.read_index(str(d / m["index"])), np.load(d / m["rows"]))
                   for dom, m in meta["indexes"].items()}
        counts = np.load(d / "popularity.npy") if meta.get("popularity") else None
        weight = meta.get("popularity_weight", 0.0) if popularity_weight is None else popularity_weight
        return cls([r["item_id"] for r in rows], [r["domain"] for r in rows], np.load(d / "transferable.npy"),
                   indexes, counts, weight)

    def query_vectors(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """``[n_users, dim]``: normalised mean of each history's vectors (unknown ids are skipped)."""
        q = np.zeros((len(histories), self.vectors.shape[1]), dtype=np.float32)
        for u, hist in enumerate(histories):
            rows = [self.row_of[i] for i in hist if i in self.row_of]
            if rows:
                q[u] = self.vectors[rows].mean(0)
        return _unit(q)

    def search(self, histories: Sequence[Sequence[str]], target_domain: str, k: int = 10,
               popularity_weight: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows ``[n_users, k]`` into ``item_ids``, -1 where none; scores ``[n_users, k]``: the cosine plus
        ``popularity_weight`` (default: the retriever's) times the item's popularity bias)."""
        if target_domain not in self.indexes:
            raise LlmrecError(f"no domain '{target_domain}' in the export (domains: {sorted(self.indexes)})")
        weight = self.popularity_weight if popularity_weight is None else float(popularity_weight)
        if weight and self.bias is None:
            raise LlmrecError("a popularity_weight needs the items' counts (an export written with them)")
        index, rows = self.indexes[target_domain]
        q = self.query_vectors(histories)
        if self.bias is not None:
            q = np.ascontiguousarray(np.hstack([q, np.full((len(q), 1), weight, dtype=np.float32)]))
        sims, local = index.search(q, min(k, len(rows)))
        out = np.where(local >= 0, rows[np.maximum(local, 0)], -1)
        if out.shape[1] < k:
            pad = k - out.shape[1]
            out = np.pad(out, ((0, 0), (0, pad)), constant_values=-1)
            sims = np.pad(sims, ((0, 0), (0, pad)), constant_values=-np.inf)
        return out, sims

    def retrieve(self, history: Sequence[str], target_domain: str, k: int = 10,
                 popularity_weight: float | None = None) -> list[tuple[str, float]]:
        """One user's target-domain candidates: ``[(item_id, score), ...]``, best first (see :meth:`search`)."""
        if not any(i in self.row_of for i in history):
            known = ", ".join(self.item_ids[:3])
            raise LlmrecError(f"none of the history's items is in the export (ids look like: {known}, ...)")
        rows, sims = self.search([list(history)], target_domain, k, popularity_weight)
        return [(self.item_ids[r], float(s)) for r, s in zip(rows[0], sims[0]) if r >= 0]


def time_export(texts: Sequence[str], encoder, head=None, batch_size: int = 32) -> dict:
    """Items per second of the export computation, batched vs one item at a time, on the same texts."""
    t0 = time.perf_counter()
    batched, _ = embed_items(texts, encoder, head, batch_size=batch_size)
    t_batch = time.perf_counter() - t0
    t0 = time.perf_counter()
    single = np.concatenate([embed_items([t], encoder, head, batch_size=1)[0] for t in texts])
    t_single = time.perf_counter() - t0
    return {"items": len(texts), "batch_size": batch_size, "batch_s": t_batch, "single_s": t_single,
            "batch_items_per_s": len(texts) / t_batch, "single_items_per_s": len(texts) / t_single,
            "speedup": t_single / t_batch, "max_abs_diff": float(np.abs(batched - single).max())}
