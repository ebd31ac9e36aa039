"""LaMP predictions from a live OpenAI-compatible endpoint (vLLM, OpenAI, ...), then scoring.

Steps: read questions and golds; retrieve each question's top-k profile items (``eval/retrieval.py``);
fill the task's prompt template (``prompts/lamp/<task>.yaml``); send the prompts concurrently with the
``openai`` client (its own retries with exponential backoff on connection errors, timeouts, 429 and
5xx); post-process the answers per task kind; score with ``lamp_metrics``. The report records what is
needed to reproduce a number: model, endpoint, template name and sha256, retriever and k, decoding
parameters, inputs' sha256, failures and timings.

Post-processing of answers (documented in docs/lamp_eval.md):

- classification: the label the answer is (after stripping spaces, quotes and a final period, case-
  insensitive), else the label that occurs first in it (longest on ties, so "dark comedy" beats
  "comedy"), else for ``[n]`` labels (LaMP_1) the first bare number ``n``; otherwise the stripped
  answer, which the metric counts as wrong.
- regression (LaMP_3): the first digit 1-5 in the answer; otherwise the stripped answer (the metric
  then maps it to the worse of 1 and 5).
- generation: strip, drop a leading "Title:"-style prefix and wrapping quotes; templates with
  ``answer: first_line`` keep only the first non-empty line (titles, headlines, subjects).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import string
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from llmrec import __version__
from llmrec.data.lamp_format import CLASSIFICATION, GENERATION, REGRESSION, TASKS, load_questions, read_outputs
from llmrec.errors import LlmrecError
from llmrec.eval.lamp_metrics import check_ids, count_unparseable, score_outputs, task_info
from llmrec.eval.retrieval import get_retriever
from llmrec.paths import prompts_dir
from llmrec.text import BlankMap, cut_words

# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


@dataclass
class LampTemplate:
    """A task's prompt template (see prompts/lamp/README.md for the keys)."""

    name: str
    path: Path
    sha256: str
    item: str
    prompt: str
    prompt_without_profile: str = "{input}"
    item_separator: str = ", and "
    corpus_fields: list[str] = field(default_factory=list)
    query_after: str | None = None
    query_quoted: list[int] | None = None
    truncate_fields: list[str] = field(default_factory=list)
    max_item_words: int | None = None
    max_input_words: int | None = None
    max_tokens: int = 32
    answer: str = "text"
    system: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> LampTemplate:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise LlmrecError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
        known = set(cls.__dataclass_fields__) - {"name", "path", "sha256"}
        unknown = set(data) - known
        if unknown or not isinstance(data, dict):
            raise LlmrecError(f"{path}: unknown template keys {sorted(unknown)}; valid keys: {sorted(known)}")
        for key in ("item", "prompt"):
            if key not in data:
                raise LlmrecError(f"{path}: template key '{key}' is missing")
        if data.get("answer", "text") not in ("text", "first_line"):
            raise LlmrecError(f"{path}: 'answer' must be 'text' or 'first_line'")
        return cls(name=path.name, path=path, sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(), **data)

    @classmethod
    def for_task(cls, task: str) -> LampTemplate:
        """The shipped template of ``task`` (``prompts/lamp/<task>.yaml``), else ``default.yaml``."""
        folder = prompts_dir() / "lamp"
        path = folder / f"{task}.yaml"
        return cls.load(path if path.is_file() else folder / "default.yaml")

    def item_text(self, item: dict) -> str:
        """The text of a profile item that retrievers rank: ``corpus_fields`` joined (default: all text fields)."""
        fields = self.corpus_fields or [k for k, v in item.items() if k != "id" and isinstance(v, str)]
        return " ".join(str(item[f]) for f in fields if item.get(f) is not None)

    def query(self, inp: str) -> str:
        """The retrieval query taken from a question's input (as LaMP's query makers do)."""
        if self.query_quoted:
            quoted = re.findall(r'"([^"]*)"', inp)
            picked = [quoted[i] for i in self.query_quoted if i < len(quoted)]
            if picked:
                return " ".join(picked)
        if self.query_after and self.query_after in inp:
            return inp[inp.index(self.query_after) + len(self.query_after) :].strip()
        return inp

    def render(self, inp: str, items: Sequence[dict]) -> str:
        """The prompt for input ``inp`` with the retrieved profile ``items`` (best first)."""
        inp = cut_words(inp, self.max_input_words)
        if not items:
            return self.prompt_without_profile.format_map(BlankMap(input=inp))
        parts = [self.render_item(it) for it in items]
        return self.prompt.format_map(BlankMap(profile=self.item_separator.join(parts), input=inp))

    def render_item(self, entry: dict) -> str:
        """One profile entry as the template's ``item`` line (long fields cut to ``max_item_words``)."""
        values = BlankMap({k: "" if v is None else str(v) for k, v in entry.items()})
        values["item_text"] = self.item_text(entry)
        for f in self.truncate_fields:
            if f in values:
                values[f] = cut_words(values[f], self.max_item_words)
        return string.Formatter().vformat(self.item, (), values)


def build_prompts(questions: Sequence[dict], template: LampTemplate, retriever, k: int) -> list[str]:
    """One prompt per question: its top-``k`` profile items by ``retriever``, rendered by ``template``."""
    queries = [template.query(q["input"]) for q in questions]
    corpora = [[template.item_text(it) for it in q["profile"]] for q in questions]
    ranked = retriever.rank(queries, corpora, k)
    return [template.render(q["input"], [q["profile"][i] for i in idx]) for q, idx in zip(questions, ranked)]


# --------------------------------------------------------------------------------------------
# Post-processing of answers
# --------------------------------------------------------------------------------------------

_QUOTES = "\"'`“”‘’«»"
_PREFIX_RE = re.compile(
    r"^\s*(?:title|headline|subject|answer|output|tweet|paraphrase[d]?(?: tweet)?|abstract|"
    r"review|summary|tag|category|score|rating)\s*:\s*",
    re.IGNORECASE,
)


def _unwrap(text: str) -> str:
    text = text.strip()
    while len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text


def postprocess_classification(answer: str, labels: Sequence[str]) -> str:
    """Maps a free-text answer onto a label (see the module docstring); the stripped answer if none fits."""
    text = answer.strip()
    norm = _unwrap(_PREFIX_RE.sub("", text)).rstrip(".").strip().lower()
    for lab in labels:
        if norm == lab.lower():
            return lab
    low = text.lower()
    best = None
    for lab in labels:
        pos = low.find(lab.lower())
        if pos >= 0 and (best is None or (pos, -len(lab)) < (best[0], -len(best[1]))):
            best = (pos, lab)
    if best is not None:
        return best[1]
    if labels and all(re.fullmatch(r"\[\d+\]", lab) for lab in labels):
        m = re.search(r"\d+", text)
        if m and f"[{m.group()}]" in labels:
            return f"[{m.group()}]"
    return text


def postprocess_rating(answer: str) -> str:
    """The first digit 1-5 of the answer (LaMP_3), else the stripped answer."""
    m = re.search(r"[1-5]", answer)
    return m.group() if m else answer.strip()


def postprocess_generation(answer: str, first_line: bool = False) -> str:
    """Strips whitespace, a leading "Title:"-style prefix and wrapping quotes; optionally the first line only."""
    text = answer.strip()
    if first_line:
        text = next((line for line in text.splitlines() if line.strip()), "")
    return _unwrap(_PREFIX_RE.sub("", text, count=1))


def postprocess(answer: str, kind: str, labels: Sequence[str] | None, template: LampTemplate) -> str:
    if kind == CLASSIFICATION:
        return postprocess_classification(answer, labels or [])
    if kind == REGRESSION:
        return postprocess_rating(answer)
    return postprocess_generation(answer, first_line=template.answer == "first_line")


POSTPROCESS_RULES = {
    CLASSIFICATION: "label the answer is, else first label in it, else [n] for a bare n; else raw (wrong)",
    REGRESSION: "first digit 1-5 in the answer, else raw (scored as the worse of 1 and 5)",
    GENERATION: "strip, drop a leading 'Title:'-style prefix and wrapping quotes",
}


# --------------------------------------------------------------------------------------------
# Generation through an OpenAI-compatible endpoint
# --------------------------------------------------------------------------------------------


@dataclass
class Decoding:
    api: str = "chat"  # "chat" (/v1/chat/completions) or "completions" (/v1/completions)
    max_tokens: int = 32
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclass
class ClientOptions:
    concurrency: int = 8
    retries: int = 3  # the openai client's retries (exponential backoff with jitter, 0.5 s doubling to 8 s)
    timeout_s: float = 120.0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


async def _check_endpoint(client, endpoint: str, model: str, retries: int) -> dict:
    import openai

    try:
        listing = await client.models.list()
    except openai.APIConnectionError as e:
        raise LlmrecError(f"cannot reach the endpoint {endpoint} (after {retries} retries): {_one_line(e)}") from None
    except openai.APIStatusError as e:
        # Some OpenAI-compatible servers do not list models; the requests will tell.
        return {"listing_error": _one_line(e)}
    models = {m.id: m for m in listing.data}
    if models and model not in models:
        raise LlmrecError(f"model '{model}' is not served at {endpoint}; served: {', '.join(sorted(models))}")
    m = models.get(model)
    info = m.model_dump() if m is not None else {}
    return {k: info[k] for k in ("id", "root", "parent", "max_model_len", "owned_by") if info.get(k) is not None}


async def _generate(
    endpoint: str,
    model: str,
    prompts: Sequence[str],
    decoding: Decoding,
    opts: ClientOptions,
    api_key: str,
    system: str | None,
    progress: bool,
    users: Sequence[str] | None = None,
) -> tuple[list[str | None], list[str | None], dict]:
    import openai
    from tqdm.auto import tqdm

    client = openai.AsyncOpenAI(base_url=endpoint, api_key=api_key, max_retries=opts.retries, timeout=opts.timeout_s)
    async with client:
        info = await _check_endpoint(client, endpoint, model, opts.retries)
        sem = asyncio.Semaphore(opts.concurrency)
        answers: list[str | None] = [None] * len(prompts)
        errors: list[str | None] = [None] * len(prompts)
        bar = tqdm(total=len(prompts), desc="generating", unit="q", disable=not progress)

        async def one(i: int) -> None:
            common = {
                "model": model,
                "max_tokens": decoding.max_tokens,
                "temperature": decoding.temperature,
                "top_p": decoding.top_p,
                "seed": decoding.seed,
            }
            if users is not None:
                common["user"] = users[i]
            async with sem:
                try:
                    if decoding.api == "chat":
                        messages = ([{"role": "system", "content": system}] if system else []) + [
                            {"role": "user", "content": prompts[i]}
                        ]
                        r = await client.chat.completions.create(messages=messages, **common)
                        answers[i] = r.choices[0].message.content or ""
                    else:
                        r = await client.completions.create(prompt=prompts[i], **common)
                        answers[i] = r.choices[0].text or ""
                except openai.OpenAIError as e:
                    errors[i] = f"{type(e).__name__}: {_one_line(e)}"
                finally:
                    bar.update(1)

        await asyncio.gather(*(one(i) for i in range(len(prompts))))
        bar.close()
    return answers, errors, info


def generate(
    endpoint: str,
    model: str,
    prompts: Sequence[str],
    decoding: Decoding,
    opts: ClientOptions,
    api_key: str = "EMPTY",
    system: str | None = None,
    progress: bool = True,
    users: Sequence[str] | None = None,
) -> tuple[list[str | None], list[str | None], dict]:
    """Sends ``prompts`` concurrently; returns (answers, errors, served model info).

    ``users`` (one per prompt) go in OpenAI's ``user`` field, which the llmrec gateway personalizes by.
    A request that still fails after the client's retries gets answer None and its error text.
    An unreachable endpoint or an unknown model raises ``LlmrecError`` before any prompt is sent.
    """
    if decoding.api not in ("chat", "completions"):
        raise LlmrecError(f"--api must be 'chat' or 'completions', got '{decoding.api}'")
    if users is not None and len(users) != len(prompts):
        raise LlmrecError(f"{len(users)} users for {len(prompts)} prompts")
    return asyncio.run(_generate(endpoint, model, prompts, decoding, opts, api_key, system, progress, users))


# --------------------------------------------------------------------------------------------
# The whole live evaluation
# --------------------------------------------------------------------------------------------


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class LiveResult:
    predictions: dict[str, str]  # post-processed, as scored
    report: dict
    raw_answers: dict[str, str | None]  # the model's text (None where the request failed)
    prompts: dict[str, str]


def run_live(
    *,
    endpoint: str,
    model: str,
    questions_path: str | Path,
    golds_path: str | Path,
    task: str,
    retriever: str = "bm25",
    k: int = 1,
    template_path: str | Path | None = None,
    decoding: Decoding | None = None,
    client: ClientOptions | None = None,
    api_key: str = "EMPTY",
    limit: int | None = None,
    progress: bool = True,
    send_user: bool = False,
) -> LiveResult:
    """Generates predictions for every question (or the first ``limit``), scores them, builds the report.

    ``send_user``: each request carries its question's ``user_id`` as OpenAI's ``user`` field, so the llmrec
    gateway applies that user's stored personalization (TAP-PER prefix, profile text, adapter); with
    ``retriever="none"`` that personalization is then the only user information in the request.
    ``decoding.max_tokens`` of 0 means the template's default. Failed requests become empty
    predictions (scored as wrong) and are listed in the report; if every request fails, raises.
    """
    t0 = time.perf_counter()
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    decoding = decoding or Decoding()
    client = client or ClientOptions()
    if k < 0:
        raise LlmrecError(f"--k must be >= 0, got {k}")
    golds = read_outputs(golds_path)
    if golds.task != task:
        raise LlmrecError(f"the golds are for task '{golds.task}' but --task_name is '{task}'")
    labels = golds.labels or None
    kind, label_set = task_info(task, labels)
    questions = load_questions(questions_path, task if task in TASKS else None)
    if limit is not None:
        questions = questions[:limit]
    qids = [q["id"] for q in questions]
    if limit is None:
        check_ids(golds.outputs, dict.fromkeys(qids))
    else:
        missing = [i for i in qids if i not in golds.outputs]
        if missing:
            raise LlmrecError(f"{len(missing)} question ids have no gold: {', '.join(missing[:5])}")
    gold_sub = {i: golds.outputs[i] for i in qids}

    template = LampTemplate.load(template_path) if template_path else LampTemplate.for_task(task)
    if not decoding.max_tokens:
        decoding.max_tokens = template.max_tokens
    ret = get_retriever(retriever)
    t1 = time.perf_counter()
    prompts = build_prompts(questions, template, ret, k)
    users = None
    if send_user:
        no_user = [q["id"] for q in questions if not q.get("user_id")]
        if no_user:
            raise LlmrecError(f"--send_user: {len(no_user)} questions have no 'user_id' (e.g. {no_user[0]!r}); "
                              "llmrec data build-lamp writes it, official LaMP files do not have it")
        users = [str(q["user_id"]) for q in questions]
    t2 = time.perf_counter()
    answers, errors, served = generate(endpoint, model, prompts, decoding, client, api_key, template.system, progress,
                                       users)
    t3 = time.perf_counter()
    failures = [{"id": i, "error": e} for i, e in zip(qids, errors) if e is not None]
    if failures and len(failures) == len(qids):
        raise LlmrecError(f"all {len(qids)} requests failed; first error: {failures[0]['error']}")
    preds = {i: "" if a is None else postprocess(a, kind, label_set, template) for i, a in zip(qids, answers)}
    scores = score_outputs(task, preds, gold_sub, labels)
    t4 = time.perf_counter()
    report = {
        "task": task,
        "scores": scores,
        "n_questions": len(qids),
        "n_failures": len(failures),
        "n_unparseable": count_unparseable(task, preds, gold_sub, labels),
        "failures": failures,
        "model": model,
        "served_model": served,
        "endpoint": endpoint,
        "decoding": asdict(decoding),
        "template": {"name": template.name, "path": str(template.path), "sha256": template.sha256},
        "retriever": {"name": retriever, "k": k},
        "send_user": send_user,
        "postprocess": POSTPROCESS_RULES[kind]
        + (" (first line only)" if kind == GENERATION and template.answer == "first_line" else ""),
        "client": asdict(client),
        "inputs": {
            "questions": str(questions_path),
            "questions_sha256": file_sha256(questions_path),
            "golds": str(golds_path),
            "golds_sha256": file_sha256(golds_path),
            "limit": limit,
            "labels": labels,
        },
        "timing": {
            "started_at": started,
            "setup_s": round(t1 - t0, 3),
            "retrieval_s": round(t2 - t1, 3),
            "generation_s": round(t3 - t2, 3),
            "scoring_s": round(t4 - t3, 3),
            "total_s": round(t4 - t0, 3),
            "questions_per_s": round(len(qids) / max(t3 - t2, 1e-9), 2),
        },
        "llmrec_version": __version__,
        # A few full cases to eyeball prompt, raw answer and post-processing.
        "examples": [
            {"id": i, "prompt": p, "answer": a, "prediction": preds[i], "gold": gold_sub[i]}
            for i, p, a in list(zip(qids, prompts, answers))[:3]
        ],
    }
    return LiveResult(
        predictions=preds, report=report, raw_answers=dict(zip(qids, answers)), prompts=dict(zip(qids, prompts))
    )
