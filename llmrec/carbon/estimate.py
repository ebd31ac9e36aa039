"""PCF estimation: retrieved nearest references -> few-shot LLM answer (LangChain), with a NN fallback.

For each product the retriever returns the ``k`` most similar reference products. Their PCFs give the
nearest-neighbour estimate (a similarity-weighted mean of log10 PCF, i.e. a weighted geometric mean).
In ``hybrid`` mode the same neighbours are the few-shot examples of a chat prompt
(``prompts/carbon/*.yaml``) sent to an OpenAI-compatible endpoint through LangChain's ``ChatOpenAI``;
the answer is parsed into (value, unit, rationale) with a pydantic schema, converted to kg CO2e and
checked for plausibility. Whenever the LLM fails (connection refused, timeout, HTTP error, garbage,
unknown unit, implausible value) the NN estimate is used instead, and ``Estimate.path`` says so:
``"llm"``, ``"nn"`` (NN-only mode) or ``"nn_fallback:<reason>"``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml
from pydantic import BaseModel, Field, field_validator

from llmrec.carbon.config import CarbonConfig
from llmrec.carbon.reference import ReferenceSet, unit_factor
from llmrec.carbon.retriever import FaissVectorStore, SentenceTransformerEmbeddings, reference_store
from llmrec.errors import LlmrecError
from llmrec.paths import prompts_dir

FALLBACK_REASONS = ("connection", "timeout", "http_error", "error", "unparseable", "unit", "implausible")


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class Neighbour:
    """A retrieved reference product."""

    id: str
    name: str
    category: str
    pcf_kg: float
    similarity: float
    description: str = ""


@dataclass
class Estimate:
    """One product's PCF estimate and how it was made.

    ``path``: ``"llm"`` (the parsed LLM answer), ``"nn"`` (NN-only mode) or ``"nn_fallback:<reason>"``
    with reason in ``FALLBACK_REASONS``. ``llm_value_kg`` is the parsed LLM value even when rejected as
    implausible (None when nothing was parsed); ``nn_value_kg`` is always the NN estimate.
    """

    value_kg: float
    path: str
    neighbours: list[Neighbour]
    rationale: str
    nn_value_kg: float
    llm_value_kg: float | None = None
    llm_raw: str | None = None
    parse: str | None = None  # how the answer was read: "json", "regex" (a number + unit in free text)
    error: str | None = None

    @property
    def fell_back(self) -> bool:
        return self.path.startswith("nn_fallback:")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Nearest-neighbour estimate
# --------------------------------------------------------------------------------------------


def nn_log10(pcf_kg: Sequence[float], similarities: Sequence[float], power: float = 1.0) -> float:
    """Similarity-weighted mean of log10 PCF: ``sum(w * log10 pcf) / sum(w)``, ``w = max(sim, 1e-6) ** power``.

    Footprints span ten orders of magnitude, so neighbours are averaged in log space (a weighted
    geometric mean); a non-positive similarity still gets a tiny weight so the mean is defined.
    """
    pcf = np.asarray(pcf_kg, dtype=np.float64)
    if pcf.size == 0:
        raise LlmrecError("no neighbours to average")
    w = np.maximum(np.asarray(similarities, dtype=np.float64), 1e-6) ** power
    return float(np.sum(w * np.log10(pcf)) / np.sum(w))


def nn_estimate_kg(neighbours: Sequence[Neighbour], power: float = 1.0) -> float:
    return 10 ** nn_log10([n.pcf_kg for n in neighbours], [n.similarity for n in neighbours], power)


# --------------------------------------------------------------------------------------------
# Prompt template
# --------------------------------------------------------------------------------------------


@dataclass
class CarbonTemplate:
    """A prompt file of ``prompts/carbon/`` (keys: see prompts/carbon/README.md)."""

    name: str
    path: Path
    system: str
    example_human: str
    example_ai: str
    query: str
    nearest_last: bool = True
    max_description_words: int | None = 25
    max_tokens: int = 64

    @classmethod
    def load(cls, name_or_path: str | Path) -> CarbonTemplate:
        p = Path(name_or_path)
        if not p.suffix:
            p = prompts_dir() / "carbon" / f"{name_or_path}.yaml"
        if not p.is_file():
            known = sorted(x.stem for x in (prompts_dir() / "carbon").glob("*.yaml"))
            raise LlmrecError(f"prompt template '{name_or_path}' not found (names in prompts/carbon/: {known})")
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        try:
            return cls(name=p.stem, path=p, **data)
        except TypeError as e:
            raise LlmrecError(f"{p}: {e}") from None

    def cut(self, text: str) -> str:
        words = str(text or "").split()
        n = self.max_description_words
        return " ".join(words if n is None else words[:n])

    def chat_prompt(self, neighbours: Sequence[Neighbour], examples_text: Sequence[dict]):
        """A LangChain ``ChatPromptTemplate``: system, one human/ai pair per neighbour, then the query."""
        from langchain_core.prompts import ChatPromptTemplate, FewShotChatMessagePromptTemplate

        order = sorted(range(len(neighbours)), key=lambda i: neighbours[i].similarity,
                       reverse=not self.nearest_last)
        example_prompt = ChatPromptTemplate.from_messages([("human", self.example_human), ("ai", self.example_ai)])
        few_shot = FewShotChatMessagePromptTemplate(example_prompt=example_prompt,
                                                    examples=[examples_text[i] for i in order])
        return ChatPromptTemplate.from_messages([("system", self.system), few_shot, ("human", self.query)])


def format_value(x: float) -> str:
    """3 significant digits without an exponent: 3718044 -> '3720000', 0.00041234 -> '0.000412'."""
    return np.format_float_positional(float(x), precision=3, unique=False, fractional=False, trim="-")


def _json_escape(s: str) -> str:
    return json.dumps(str(s), ensure_ascii=False)[1:-1]


# --------------------------------------------------------------------------------------------
# Answer parsing
# --------------------------------------------------------------------------------------------


class PcfAnswer(BaseModel):
    """The structured answer the prompt asks for."""

    value: float = Field(description="the product's carbon footprint, a positive number")
    unit: str = Field(default="kg CO2e", description="unit of value: g, kg or t CO2e")
    rationale: str = Field(default="", description="one short sentence")

    @field_validator("value", mode="before")
    @classmethod
    def _number_in_text(cls, v):
        # Small models write "1,200" or "2.5 kg" in the value field; keep the number.
        if isinstance(v, str):
            m = _NUMBER.search(v)
            if m is None:
                raise ValueError(f"no number in '{v}'")
            return float(m.group(0).replace(",", ""))
        return v

    @field_validator("unit", "rationale", mode="before")
    @classmethod
    def _as_text(cls, v):
        return "" if v is None else str(v)


class ParseFailure(ValueError):
    """The answer holds no usable value; ``reason`` is one of FALLBACK_REASONS."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass
class ParsedAnswer:
    value_kg: float
    unit: str
    rationale: str
    how: str


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?")
_UNIT_WORD = r"(?:kilo(?:gram)?s?|kgs?|grams?|g|(?:metric\s+)?(?:tonnes?|tons?)|t|kt|lbs?|pounds?)"
_VALUE_UNIT = re.compile(rf"({_NUMBER.pattern})\s*({_UNIT_WORD})\.?\s*(?:of\s+)?(?:co\s*2|co₂)\s*-?\s*e(?:q)?\b",
                         re.IGNORECASE)
_JSON_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)


def parse_answer(text: str) -> ParsedAnswer:
    """An LLM answer -> value in kg CO2e, robustly; raises ``ParseFailure("unparseable" | "unit", ...)``.

    Tried in order: the whole answer as JSON (LangChain's ``PydanticOutputParser``, which also reads
    a ```json fenced block); the first ``{...}`` object inside the text; a "<number> <unit> CO2e"
    phrase anywhere in the text (``how="regex"``). A missing unit means kg CO2e (what the prompt asks).
    """
    from langchain_core.exceptions import OutputParserException
    from langchain_core.output_parsers import PydanticOutputParser

    text = text or ""
    parser = PydanticOutputParser(pydantic_object=PcfAnswer)
    answer = None
    try:
        answer = parser.parse(text)
    except OutputParserException:
        for m in _JSON_OBJECT.finditer(text):
            try:
                answer = PcfAnswer.model_validate(json.loads(m.group(0)))
                break
            except (ValueError, TypeError):
                continue
    if answer is not None:
        try:
            factor = unit_factor(answer.unit) if answer.unit.strip() else 1.0
        except ValueError as e:
            raise ParseFailure("unit", str(e)) from None
        return ParsedAnswer(answer.value * factor, answer.unit or "kg CO2e", answer.rationale.strip(), "json")
    m = _VALUE_UNIT.search(text)
    if m is not None:
        try:
            factor = unit_factor(m.group(2))
        except ValueError as e:
            raise ParseFailure("unit", str(e)) from None
        value = float(m.group(1).replace(",", ""))
        return ParsedAnswer(value * factor, m.group(2), text.strip()[:300], "regex")
    raise ParseFailure("unparseable", f"no value with a unit in the answer: {text[:120]!r}")


def error_reason(exc: BaseException) -> str:
    """The fallback reason for an exception raised by the LLM call."""
    import openai

    if isinstance(exc, openai.APITimeoutError):  # a subclass of APIConnectionError: test it first
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection"
    if isinstance(exc, openai.APIStatusError):
        return "http_error"
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "error"


def plausible_bounds(pcf_kg: Sequence[float], margin: float) -> tuple[float, float]:
    """``(min / margin, max * margin)`` of the reference PCFs, in kg CO2e."""
    pcf = np.asarray(pcf_kg, dtype=np.float64)
    return float(pcf.min() / margin), float(pcf.max() * margin)


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------


def make_llm(config: CarbonConfig, max_tokens: int):
    """LangChain's ``ChatOpenAI`` on any OpenAI-compatible endpoint; no retries (the fallback is the retry)."""
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=config.endpoint, model=config.model, api_key=config.api_key,
                     timeout=config.timeout_s, max_retries=0, temperature=config.temperature,
                     max_tokens=max_tokens)
    if config.json_mode:
        llm = llm.bind(response_format={"type": "json_object"})
    return llm


class CarbonEstimator:
    """Estimates PCFs from a reference set.

    >>> est = CarbonEstimator(load_reference("catalogue.csv"), CarbonConfig(endpoint="http://127.0.0.1:8000/v1"))
    >>> est.estimate("Cotton T-shirt", category="Home durables, textiles, & equipment").value_kg
    """

    def __init__(self, reference: ReferenceSet, config: CarbonConfig | None = None, *,
                 embedding: SentenceTransformerEmbeddings | None = None, vectors: np.ndarray | None = None,
                 llm=None):
        self.config = config or CarbonConfig()
        if len(reference) == 0:
            raise LlmrecError("empty reference set")
        if not np.all(np.isfinite(reference.pcf_kg)) or np.any(reference.pcf_kg <= 0):
            raise LlmrecError("every reference product needs a positive PCF")
        self.reference = reference
        self.embedding = embedding or SentenceTransformerEmbeddings()
        self.store: FaissVectorStore = reference_store(reference, self.embedding, vectors)
        self.bounds = plausible_bounds(reference.pcf_kg, self.config.plausible_margin)
        self.template = CarbonTemplate.load(self.config.template)
        self.max_tokens = self.config.max_tokens or self.template.max_tokens
        self._llm = llm

    @property
    def llm(self):
        if self._llm is None:
            self._llm = make_llm(self.config, self.max_tokens)
        return self._llm

    def retriever(self):
        """LangChain's retriever over the reference set (top ``k`` documents, metadata = product row)."""
        return self.store.as_retriever(search_kwargs={"k": self.config.k})

    # -- retrieval --------------------------------------------------------------------------
    def neighbours(self, items: ReferenceSet, vectors: np.ndarray | None = None) -> list[list[Neighbour]]:
        vectors = self.embedding.embed_array(items.texts()) if vectors is None else vectors
        sims, rows = self.store.search_vectors(vectors, self.config.k)
        out = []
        for s_row, r_row in zip(sims, rows):
            metas = [(self.store.docs[r].metadata, float(s)) for s, r in zip(s_row, r_row) if r >= 0]
            out.append([Neighbour(id=str(m["id"]), name=m["name"], category=m["category"], pcf_kg=float(m["pcf_kg"]),
                                  similarity=s, description=m["description"]) for m, s in metas])
        return out

    # -- prompting --------------------------------------------------------------------------
    def messages(self, item: dict, neighbours: Sequence[Neighbour]) -> list:
        """The chat messages for one item (``item``: name, description, category)."""
        t = self.template
        examples = [{"name": _json_escape(n.name), "description": _json_escape(t.cut(n.description)),
                     "category": _json_escape(n.category), "value": format_value(n.pcf_kg)} for n in neighbours]
        prompt = t.chat_prompt(neighbours, examples)
        return prompt.format_messages(name=item["name"], description=t.cut(item.get("description", "")),
                                      category=item.get("category", ""))

    def _judge(self, answer, neighbours: list[Neighbour], nn_kg: float) -> Estimate:
        """One LLM answer (text or exception) -> Estimate (LLM value or NN fallback, with the reason)."""
        est = Estimate(value_kg=nn_kg, path="", neighbours=neighbours, rationale="", nn_value_kg=nn_kg)
        if isinstance(answer, BaseException):
            est.path, est.error = f"nn_fallback:{error_reason(answer)}", f"{type(answer).__name__}: {answer}"[:300]
            return est
        est.llm_raw = answer
        try:
            parsed = parse_answer(answer)
        except ParseFailure as e:
            est.path, est.error = f"nn_fallback:{e.reason}", str(e)
            return est
        est.llm_value_kg, est.parse, est.rationale = parsed.value_kg, parsed.how, parsed.rationale
        lo, hi = self.bounds
        v = parsed.value_kg
        far = (self.config.max_decades_from_nn is not None and v > 0
               and abs(math.log10(v) - math.log10(nn_kg)) > self.config.max_decades_from_nn)
        if not (math.isfinite(v) and lo <= v <= hi) or far:
            est.path = "nn_fallback:implausible"
            est.error = f"LLM value {v:g} kg outside [{lo:g}, {hi:g}]" if not far else \
                f"LLM value {v:g} kg more than {self.config.max_decades_from_nn} decades from NN {nn_kg:g}"
            return est
        est.value_kg, est.path = v, "llm"
        return est

    def estimate_many(self, items: ReferenceSet, *, vectors: np.ndarray | None = None,
                      progress: bool = True) -> list[Estimate]:
        """Estimates for every product of ``items`` (its ``pcf_kg`` column, if any, is ignored)."""
        from tqdm.auto import tqdm

        neighbours = self.neighbours(items, vectors)
        nn = [nn_estimate_kg(ns, self.config.weight_power) for ns in neighbours]
        if self.config.mode == "nn":
            return [Estimate(value_kg=v, path="nn", neighbours=ns, rationale=_nn_rationale(ns), nn_value_kg=v)
                    for v, ns in zip(nn, neighbours)]
        records = items.records()
        chunk = self.config.concurrency * 4
        out: list[Estimate] = []
        bar = tqdm(total=len(records), desc="LLM estimates", unit="item", disable=not progress)
        for start in range(0, len(records), chunk):
            batch = [self.messages(records[i], neighbours[i]) for i in range(start, min(start + chunk, len(records)))]
            answers = self.llm.batch(batch, config={"max_concurrency": self.config.concurrency},
                                     return_exceptions=True)
            for j, ans in enumerate(answers):
                i = start + j
                text = ans if isinstance(ans, BaseException) else _content(ans)
                est = self._judge(text, neighbours[i], nn[i])
                if est.path != "llm" and not est.rationale:
                    est.rationale = _nn_rationale(neighbours[i])
                out.append(est)
            bar.update(len(batch))
        bar.close()
        return out

    def estimate(self, name: str, description: str = "", category: str = "") -> Estimate:
        import pandas as pd

        frame = pd.DataFrame([{"id": "query", "name": name, "description": description, "category": category,
                               "company": "", "pcf_kg": float("nan")}])
        return self.estimate_many(ReferenceSet(frame), progress=False)[0]


def _content(message) -> str:
    content = getattr(message, "content", message)
    if isinstance(content, list):  # content blocks
        return "".join(c.get("text", "") if isinstance(c, dict) else str(c) for c in content)
    return str(content)


def _nn_rationale(neighbours: Sequence[Neighbour]) -> str:
    names = "; ".join(f"{n.name[:60]} ({format_value(n.pcf_kg)} kg, sim {n.similarity:.2f})" for n in neighbours[:3])
    return f"similarity-weighted geometric mean of {len(neighbours)} nearest references: {names}"


__all__ = [
    "CarbonEstimator",
    "CarbonTemplate",
    "Estimate",
    "Neighbour",
    "ParseFailure",
    "PcfAnswer",
    "nn_estimate_kg",
    "nn_log10",
    "parse_answer",
    "plausible_bounds",
]
