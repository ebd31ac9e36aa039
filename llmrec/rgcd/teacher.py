"""Teacher reasoning: one fixed-schema JSON document per item from any OpenAI-compatible endpoint.

The schema is :class:`ItemReasoning` (item understanding, user needs, transferable attributes, domain-specific
attributes). Requests ask for it with structured outputs (``response_format={"type": "json_schema", ...}``,
which vLLM's server turns into constrained decoding; ``json_object`` or ``none`` for endpoints without it) and
every answer is validated with the pydantic model either way.

Generation is cached in a JSON-lines file, one record per answered request, appended and flushed as each
answer arrives: an interrupted run keeps every finished item, and a rerun sends requests only for items
that have no record (a record's key hashes the model and the exact messages, so a changed prompt or item text
is a new request). A failed request (timeout, connection, HTTP error, invalid JSON) is recorded with its
reason and is not retried unless ``retry_failed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from llmrec.errors import LlmrecError
from llmrec.paths import load_prompt_template
from llmrec.rgcd.domains import Item

STRUCTURED_MODES = ("json_schema", "json_object", "none")
FAILURE_REASONS = ("timeout", "connection", "http_error", "error", "invalid_json", "schema")

Phrase = Annotated[str, StringConstraints(min_length=1, max_length=80)]


class ItemReasoning(BaseModel):
    """The teacher's structured cross-domain reasoning about one item."""

    model_config = ConfigDict(extra="forbid")

    item_understanding: str = Field(min_length=1, max_length=300,
                                    description="one sentence: what the item is and does")
    user_needs: list[Phrase] = Field(min_length=1, max_length=4, description="needs or goals it serves")
    transferable_attributes: list[Phrase] = Field(min_length=1, max_length=5,
                                                  description="attributes that carry over to the other domain")
    domain_specific_attributes: list[Phrase] = Field(max_length=5,
                                                     description="attributes that matter only in its own domain")

    def text(self) -> str:
        """Compact JSON, key order fixed: the student's training target."""
        return self.model_dump_json()


def reasoning_schema() -> dict:
    """The JSON schema sent as the structured-output constraint."""
    return ItemReasoning.model_json_schema()


_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_reasoning(text: str) -> ItemReasoning:
    """An answer -> ``ItemReasoning``; raises ``ValueError`` whose first word is the reason
    (``invalid_json`` or ``schema``). A JSON object inside other text (or a ```json fence) is read too."""
    text = (text or "").strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        m = _JSON_OBJECT.search(text)
        try:
            data = json.loads(m.group(0)) if m else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            raise ValueError(f"invalid_json: {text[:120]!r}") from None
    try:
        return ItemReasoning.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"schema: {e.errors()[0]['loc']} {e.errors()[0]['msg']}") from None


# --------------------------------------------------------------------------------------------
# Prompt
# --------------------------------------------------------------------------------------------


@dataclass
class TeacherTemplate:
    """``prompts/rgcd/teacher.yaml``: system and user messages of the teacher, the student's prompt.

    ``example`` (optional): a worked item (``item``, ``domain``, ``other_domain``) and its ``answer`` in the
    schema, sent before the item as a user turn and the assistant's JSON (a one-shot example).
    """

    system: str
    user: str
    student: str
    max_tokens: int = 512
    example: dict | None = None

    def __post_init__(self):
        if self.example is not None:
            missing = {"item", "domain", "other_domain", "answer"} - set(self.example)
            if missing:
                raise LlmrecError(f"teacher template example lacks {sorted(missing)}")
            try:
                ItemReasoning.model_validate(self.example["answer"])
            except ValidationError as e:
                raise LlmrecError(f"teacher template example answer does not fit the schema: {e}") from None

    @classmethod
    def load(cls, path: str | Path | None = None) -> TeacherTemplate:
        return load_prompt_template(cls, path, "rgcd/teacher.yaml")

    def _user(self, item_text: str, domain: str, other_domain: str) -> str:
        keys = ", ".join(ItemReasoning.model_fields)
        return self.user.format(item=item_text, domain=domain, other_domain=other_domain, schema_keys=keys)

    def messages(self, item: Item, other_domain: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system}]
        if self.example is not None:
            ex = self.example
            answer = ItemReasoning.model_validate(ex["answer"]).text()
            msgs += [{"role": "user", "content": self._user(ex["item"], ex["domain"], ex["other_domain"])},
                     {"role": "assistant", "content": answer}]
        return msgs + [{"role": "user", "content": self._user(item.text, item.domain, other_domain)}]

    def student_prompt(self, item: Item) -> str:
        return self.student.format(item=item.text, domain=item.domain)


# --------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------


def request_key(model: str, messages: list[dict], structured: str) -> str:
    """Hash of what is paid for: the model, the exact messages and the output constraint."""
    blob = json.dumps([model, messages, structured], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class TeacherCache:
    """Append-only JSON lines: ``{"key", "item_id", "ok", "reasoning" | null, "error", "raw", "finish",
    "seconds"}`` (``finish``: the endpoint's finish reason, ``stop`` or ``length``).

    A line cut off by an interruption (no final newline, or not JSON) is dropped when the file is opened,
    so the next append starts on a clean line. Later records of a key win (a retried failure).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.dropped_partial = 0
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        good_end = raw.rfind(b"\n") + 1
        if good_end < len(raw):  # a partial last line from an interrupted write
            self.dropped_partial = 1
            with open(self.path, "r+b") as f:
                f.truncate(good_end)
        for line in raw[:good_end].decode("utf-8").splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                self.dropped_partial += 1
                continue
            self.records[rec["key"]] = rec

    def get(self, key: str) -> dict | None:
        return self.records.get(key)

    def append(self, rec: dict) -> None:
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self.records[rec["key"]] = rec

    def reasoning_by_item(self) -> dict[str, ItemReasoning]:
        """Valid reasoning per item id (the latest record of each item that parsed)."""
        out = {}
        for rec in self.records.values():
            if rec.get("ok"):
                out[rec["item_id"]] = ItemReasoning.model_validate(rec["reasoning"])
        return out


# --------------------------------------------------------------------------------------------
# Teacher
# --------------------------------------------------------------------------------------------


@dataclass
class TeacherConfig:
    """How ``llmrec rgcd teach`` calls the teacher."""

    endpoint: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible base URL"})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model name the endpoint serves"})
    api_key: str = field(default="EMPTY", metadata={"help": "API key (vLLM ignores it)"})
    timeout_s: float = field(default=120.0, metadata={"help": "per-request timeout"})
    concurrency: int = field(default=8, metadata={"help": "requests in flight at once"})
    max_tokens: int | None = field(default=None, metadata={"help": "answer length (default: the template's)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0 = greedy)"})
    structured: str = field(default="json_schema", metadata={
        "help": "output constraint: json_schema (structured outputs), json_object, none (prompt only)"})
    retry_failed: bool = field(default=False, metadata={"help": "ask again for items whose earlier request failed"})
    template: str | None = field(default=None, metadata={"help": "prompt YAML (default prompts/rgcd/teacher.yaml)"})

    def __post_init__(self):
        if self.structured not in STRUCTURED_MODES:
            raise LlmrecError(f"structured must be one of {list(STRUCTURED_MODES)}, got '{self.structured}'")
        if self.concurrency < 1 or self.timeout_s <= 0:
            raise LlmrecError("concurrency must be >= 1 and timeout_s > 0")


@dataclass
class TeachReport:
    items: int = 0
    cached: int = 0  # answered from the cache, no request
    requested: int = 0
    ok: int = 0  # valid reasoning after this run (cached + new)
    failed: Counter = field(default_factory=Counter)  # this run's failures by reason
    seconds: float = 0.0

    def __str__(self) -> str:
        fails = ", ".join(f"{k} {v}" for k, v in sorted(self.failed.items())) or "none"
        return (f"{self.items} items: {self.cached} from the cache, {self.requested} requested "
                f"({self.seconds:.1f} s); {self.ok} with valid reasoning; failures this run: {fails}")


def _response_format(structured: str) -> dict | None:
    if structured == "json_schema":
        return {"type": "json_schema",
                "json_schema": {"name": "item_reasoning", "schema": reasoning_schema(), "strict": True}}
    if structured == "json_object":
        return {"type": "json_object"}
    return None


def _failure_reason(e: Exception) -> str:
    import openai

    if isinstance(e, openai.APITimeoutError):
        return "timeout"
    if isinstance(e, openai.APIConnectionError):
        return "connection"
    if isinstance(e, openai.APIStatusError):
        return "http_error"
    return "error"


class Teacher:
    """Writes (or reads from the cache) the reasoning of items; see the module docstring."""

    def __init__(self, config: TeacherConfig, cache: TeacherCache | str | Path,
                 template: TeacherTemplate | None = None):
        self.config = config
        self.cache = cache if isinstance(cache, TeacherCache) else TeacherCache(cache)
        self.template = template or TeacherTemplate.load(config.template)
        self._client = None

    @property
    def client(self):
        if self._client is None:
            import openai

            self._client = openai.OpenAI(base_url=self.config.endpoint, api_key=self.config.api_key,
                                         timeout=self.config.timeout_s, max_retries=0)
        return self._client

    def request(self, item: Item, other_domain: str) -> tuple[str, list[dict]]:
        messages = self.template.messages(item, other_domain)
        return request_key(self.config.model, messages, self.config.structured), messages

    def _ask(self, key: str, item: Item, messages: list[dict]) -> dict:
        c = self.config
        kwargs = {}
        fmt = _response_format(c.structured)
        if fmt is not None:
            kwargs["response_format"] = fmt
        t0 = time.perf_counter()
        rec = {"key": key, "item_id": item.item_id, "ok": False, "reasoning": None, "error": None, "raw": None,
               "finish": None}
        try:
            resp = self.client.chat.completions.create(
                model=c.model, messages=messages, temperature=c.temperature,
                max_tokens=c.max_tokens or self.template.max_tokens, **kwargs)
            rec["raw"] = resp.choices[0].message.content or ""
            rec["finish"] = resp.choices[0].finish_reason  # "length": cut at max_tokens, so never complete JSON
            rec["reasoning"] = parse_reasoning(rec["raw"]).model_dump()
            rec["ok"] = True
        except ValueError as e:
            rec["error"] = str(e)
        except Exception as e:  # noqa: BLE001 - any client failure is recorded with its reason, never raised
            rec["error"] = f"{_failure_reason(e)}: {type(e).__name__}: {str(e)[:200]}"
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        return rec

    def teach(self, items: Iterable[Item], other_domain: Callable[[Item], str] | str,
              on_record: Callable[[dict], None] | None = None) -> TeachReport:
        """Reasoning for every item: cached ones are read, the rest requested ``concurrency`` at a time.

        ``other_domain``: the domain named in each item's prompt (a name, or a function of the item).
        ``on_record`` is called after each new record is on disk (progress; raising stops the run, and
        everything recorded so far stays cached).
        """
        t0 = time.perf_counter()
        items = list(items)
        report = TeachReport(items=len(items))
        todo = []
        for item in items:
            other = other_domain(item) if callable(other_domain) else other_domain
            key, messages = self.request(item, other)
            rec = self.cache.get(key)
            if rec is not None and (rec.get("ok") or not self.config.retry_failed):
                report.cached += 1
                continue
            todo.append((key, item, messages))
        pool = ThreadPoolExecutor(max_workers=self.config.concurrency)
        futures, recorded = [], set()

        def record(fut) -> dict:
            rec = fut.result()
            self.cache.append(rec)
            recorded.add(fut)
            report.requested += 1
            if not rec["ok"]:
                report.failed[rec["error"].split(":", 1)[0]] += 1
            return rec

        try:
            futures = [pool.submit(self._ask, *job) for job in todo]
            for fut in as_completed(futures):
                rec = record(fut)
                if on_record is not None:
                    on_record(rec)
        finally:
            # Interrupted: queued requests are cancelled; those already in flight finish and are kept,
            # so nothing that was paid for is lost.
            pool.shutdown(wait=True, cancel_futures=True)
            for fut in futures:
                if fut not in recorded and fut.done() and not fut.cancelled() and fut.exception() is None:
                    record(fut)
        keys = {self.request(it, other_domain(it) if callable(other_domain) else other_domain)[0] for it in items}
        report.ok = sum(1 for k in keys if (self.cache.get(k) or {}).get("ok"))
        report.seconds = time.perf_counter() - t0
        return report
