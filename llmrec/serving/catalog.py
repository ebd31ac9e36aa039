"""Item catalogs the gateway recommends from: every item it returns comes from one of these.

A catalog is loaded from any data the data layer reads (then users' histories and item popularity
come with it) or from a plain item file (JSONL / CSV / TSV with ``item_id`` and ``title`` columns).
When a request names no candidates, a candidate pool is retrieved from the catalog with BM25 over item
titles (query: the request's need plus the user's recent items), topped up with popular items.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmrec.errors import LlmrecError

ITEM_FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv")


@dataclass
class Catalog:
    name: str
    item_ids: list[str]
    titles: list[str]
    popularity: np.ndarray  # interactions per item (zeros when unknown)
    histories: dict[str, list[str]] = field(default_factory=dict)  # user -> item ids, oldest first
    index: dict[str, int] = field(init=False)
    _bm25: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if not self.item_ids:
            raise LlmrecError(f"catalog '{self.name}' has no items")
        self.index = {item: i for i, item in enumerate(self.item_ids)}
        if len(self.index) != len(self.item_ids):
            raise LlmrecError(f"catalog '{self.name}' has duplicate item ids")

    def __len__(self) -> int:
        return len(self.item_ids)

    def title(self, item_id: str) -> str:
        return self.titles[self.index[item_id]]

    def _retriever(self):
        if self._bm25 is None:
            import bm25s

            index = bm25s.BM25()
            index.index(bm25s.tokenize(self.titles, show_progress=False), show_progress=False)
            self._bm25 = index
        return self._bm25

    def candidate_pool(self, query: str, exclude: set[str], size: int) -> list[str]:
        """Up to ``size`` item ids: BM25 matches of ``query`` over titles, then the most popular items."""
        import bm25s

        size = min(size, len(self) - len(exclude & self.index.keys()))
        pool: list[str] = []
        if query.strip():
            tokens = bm25s.tokenize([query], return_ids=False, show_progress=False)
            if tokens[0]:
                k = min(len(self), size + len(exclude))
                docs, scores = self._retriever().retrieve(tokens, k=k, show_progress=False)
                pool = [self.item_ids[d] for d, s in zip(docs[0], scores[0]) if s > 0 and self.item_ids[d] not in exclude]
        if len(pool) < size:
            taken = set(pool) | exclude
            # Stable sort: equally popular items keep catalog order, so pools are reproducible.
            for i in np.argsort(-self.popularity, kind="stable"):
                if len(pool) >= size:
                    break
                if self.item_ids[i] not in taken:
                    pool.append(self.item_ids[i])
        return pool[:size]


def _from_recdata(name: str, path: Path) -> Catalog:
    from llmrec.data.loading import load_recdata

    data = load_recdata(path)
    items = data.items.select_columns(["item_id", "title", "text"]).to_dict()
    titles = [(t or x or i).strip()[:300] for i, t, x in zip(items["item_id"], items["title"], items["text"])]
    index = {item: i for i, item in enumerate(items["item_id"])}
    popularity = np.zeros(len(index), dtype=np.float64)
    cols = data.interactions.select_columns(["user_id", "item_id", "timestamp"]).to_dict()
    order = sorted(range(len(cols["user_id"])), key=lambda i: (cols["user_id"][i], cols["timestamp"][i], i))
    histories: dict[str, list[str]] = {}
    for i in order:
        item = cols["item_id"][i]
        if item in index:
            popularity[index[item]] += 1
            histories.setdefault(cols["user_id"][i], []).append(item)
    return Catalog(name, list(items["item_id"]), titles, popularity, histories)


def _from_item_file(name: str, path: Path) -> Catalog:
    import pandas as pd

    try:
        if path.suffix in (".jsonl", ".json"):
            df = pd.read_json(path, lines=path.suffix == ".jsonl", dtype=False)
        else:
            df = pd.read_csv(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str, keep_default_na=False)
    except ValueError as e:
        raise LlmrecError(f"catalog '{name}': cannot read {path}: {e}") from None
    missing = [c for c in ("item_id", "title") if c not in df.columns]
    if missing:
        raise LlmrecError(f"catalog '{name}': {path} lacks column(s) {', '.join(missing)} "
                          f"(has: {', '.join(map(str, df.columns))})")
    ids = [str(x) for x in df["item_id"]]
    titles = [str(t).strip() or i for i, t in zip(ids, df["title"].fillna(""))]
    pop = np.asarray(pd.to_numeric(df["popularity"], errors="coerce").fillna(0), dtype=np.float64) \
        if "popularity" in df.columns else np.zeros(len(ids))
    return Catalog(name, ids, titles, pop)


def load_catalog(name: str, path: str | Path) -> Catalog:
    path = Path(path)
    if not path.exists():
        raise LlmrecError(f"catalog '{name}': no such file or folder: {path}")
    if path.is_file() and path.suffix.lower() in ITEM_FILE_SUFFIXES:
        return _from_item_file(name, path)
    return _from_recdata(name, path)


def parse_catalog_specs(specs: list[str]) -> dict[str, Path]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise LlmrecError(f"--catalog expects NAME=PATH, got '{spec}'")
        if name in out:
            raise LlmrecError(f"--catalog {name} given twice")
        out[name] = Path(path)
    return out
