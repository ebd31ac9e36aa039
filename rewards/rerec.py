"""ReRec rewards: TRL reward functions for reasoning + ranking completions on ``llmrec.training.rerec_tasks``.

Every function has TRL's signature ``fn(prompts, completions, **kwargs) -> list[float]``; the task
columns (``candidates``, ``targets``, ``target_attributes``, ``candidate_attributes``,
``candidate_pas``, ...) arrive as kwargs, one value per completion. Completions may be strings or
conversational (``[{"role": "assistant", "content": ...}]``). A malformed completion (empty, None,
truncated, no ``\\boxed{}``, garbage or out-of-range numbers inside) never raises: it scores 0.0.

The answer is the LAST ``\\boxed{...}`` in the completion: candidate numbers (1-based), best first,
e.g. ``\\boxed{7, 3, 12}``. Only an answer with status "ok" earns ranking rewards.

Rewards (each in [0, 1]):

- ``format``: 1.0 for a well-formed answer after some reasoning text; 0.5 for a well-formed answer
  with nothing before the box (the task asks for reasoning, but the answer is still usable); else 0.
- ``ndcg``: NDCG@K of the ranking against ``targets`` (binary relevance; the ideal DCG counts every
  target), computed with ``llmrec.eval.ranking`` (the project's metric engine, checked against
  trec_eval and ranx).
- ``qas`` (Query Alignment Score): for each of the top K ranked items, the share of
  ``target_attributes`` it has, averaged with position weights ``1/log2(rank + 1)`` normalised to sum
  to 1 over the ranked positions (so an answer listing one item is judged by that item alone). We take
  the discounted top-K average rather than top-1 only so that the items after the first still get a
  signal, while the first one weighs most.
- ``pas`` (Preference Alignment Score): the same discounted average over ``candidate_pas`` (CF
  similarity of each candidate to the targets, see ``rerec_tasks.candidate_pas``).
- ``rerec_reward`` = ``format_weight * format + ndcg + W1 * qas + W2 * pas``.

Malformation counting: every function accepts TRL's ``log_metric(name, value)`` kwarg; ``format``
(and ``rerec_reward``, which contains it) logs ``rerec/format_valid`` (share of "ok" answers),
``rerec/malformed/<status>`` for every non-ok status and ``rerec/no_reasoning``.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llmrec.errors import LlmrecError

W1 = 0.5  # weight of QAS in rerec_reward
W2 = 0.5  # weight of PAS in rerec_reward
K = 10  # cut-off of NDCG and of the QAS/PAS discounted averages
NO_REASONING_FORMAT = 0.5

STATUSES = ("ok", "no-answer", "empty-box", "out-of-range", "duplicate", "unparseable")
BOX = "\\boxed"
# Separators allowed between numbers in the box: commas, semicolons, whitespace, arrows, '>' and '|'.
_SPLIT = re.compile(r"(?:[,;\s>|]|->|→)+")
# A number as the model may write it in the box: 7, [7], (7), #7, 7.
_NUMBER = re.compile(r"^[\[(#]*(\d+)[\])]*\.?$")
# LaTeX commands (\text, \mathrm; their arguments are kept) and escaped characters (\{, \,).
_LATEX_CMD = re.compile(r"\\[a-zA-Z]+\*?|\\[^a-zA-Z0-9]")
_BRACE = re.compile(r"[{}]")
MAX_DIGITS = 9  # longer numbers are out of range anyway (and int() refuses strings of 4,300+ digits)


# ---------------------------------------------------------------------------------------------
# Parsing


@dataclass
class Answer:
    """The parsed ``\\boxed{}`` answer: 0-based candidate indices (unique, in range, order kept) and a status."""

    ranking: list[int] = field(default_factory=list)
    status: str = "no-answer"
    box_start: int = -1  # char span of the last "\boxed..." in the text (end: after its closing brace,
    box_end: int = -1  # or the text's end when it is truncated); -1 without a box

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _box_span(text: str) -> tuple[int, int, str | None]:
    """(start, end, inner text or None when the box is not closed) of the last ``\\boxed``; (-1, -1, None) if none."""
    start = text.rfind(BOX)
    if start < 0:
        return -1, -1, None
    i = start + len(BOX)
    n = len(text)
    while i < n and text[i] in " \t":
        i += 1
    if i >= n or text[i] != "{":
        return start, min(n, start + len(BOX)), None
    depth = 0
    for m in _BRACE.finditer(text, i):  # regex jumps between braces: fast on long box contents
        depth += 1 if m.group() == "{" else -1
        if depth == 0:
            return start, m.end(), text[i + 1: m.start()]
    return start, n, None  # truncated: never closed


def parse_answer(text: Any, n_candidates: int) -> Answer:
    """The last ``\\boxed{...}`` of ``text`` as a ranking over ``n_candidates`` (numbers 1..n).

    Status: "ok"; "no-answer" (no ``\\boxed``); "empty-box"; "unparseable" (box not closed, or a token
    that is not a number, e.g. ``\\boxed{a, b}``); "out-of-range" (a number outside 1..n);
    "duplicate" (a number twice). ``ranking`` keeps the in-range numbers in order, duplicates dropped,
    whatever the status; rewards only use it when the status is "ok". Nested braces are allowed
    (``\\boxed{\\{7, 3\\}}``, ``\\boxed{\\text{7, 3}}``).
    """
    text = completion_text(text)
    start, end, inner = _box_span(text)
    if start < 0:
        return Answer(status="no-answer")
    if inner is None:
        return Answer(status="unparseable", box_start=start, box_end=end)
    body = _LATEX_CMD.sub(" ", inner).replace("{", " ").replace("}", " ")
    tokens = [t for t in _SPLIT.split(body) if t]
    if not tokens:
        return Answer(status="empty-box", box_start=start, box_end=end)
    numbers = []
    for t in tokens:
        m = _NUMBER.match(t)
        if not m:
            return Answer(status="unparseable", box_start=start, box_end=end)
        digits = m.group(1)
        numbers.append(int(digits) if len(digits) <= MAX_DIGITS else -1)
    ranking: list[int] = []
    seen: set[int] = set()
    out_of_range = duplicate = False
    for x in numbers:
        if not 1 <= x <= n_candidates:
            out_of_range = True
        elif x - 1 in seen:
            duplicate = True
        else:
            seen.add(x - 1)
            ranking.append(x - 1)
    status = "out-of-range" if out_of_range else "duplicate" if duplicate else "ok"
    return Answer(ranking=ranking, status=status, box_start=start, box_end=end)


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or a conversational list of messages (assistant contents joined)."""
    if completion is None:
        return ""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _content_text(completion.get("content"))
    if isinstance(completion, (list, tuple)):
        msgs = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in msgs if m.get("role", "assistant") == "assistant"] or msgs
        return "\n".join(_content_text(m.get("content")) for m in assistant)
    return ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal content parts: [{"type": "text", "text": ...}]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


# ---------------------------------------------------------------------------------------------
# Reward functions


def _column(kwargs: dict, name: str, n: int) -> list:
    # A missing column is a trainer/dataset setup error, not a malformed completion: say so.
    if name not in kwargs or kwargs[name] is None:
        raise LlmrecError(f"ReRec reward needs the dataset column '{name}' (build tasks with "
                          f"llmrec.training.rerec_tasks); got columns {sorted(kwargs)}")
    values = list(kwargs[name])
    if len(values) != n:
        raise LlmrecError(f"column '{name}' has {len(values)} values for {n} completions")
    return values


def _parse_all(completions: Sequence, kwargs: dict) -> list[Answer]:
    cands = _column(kwargs, "candidates", len(completions))
    return [parse_answer(c, len(cs or [])) for c, cs in zip(completions, cands)]


def _log_statuses(answers: list[Answer], texts: list[str], log_metric: Callable | None) -> None:
    if log_metric is None or not answers:
        return
    n = len(answers)
    for status in STATUSES[1:]:
        log_metric(f"rerec/malformed/{status}", sum(a.status == status for a in answers) / n)
    log_metric("rerec/format_valid", sum(a.ok for a in answers) / n)
    log_metric("rerec/no_reasoning", sum(a.ok and not _has_reasoning(t, a) for a, t in zip(answers, texts)) / n)


def _has_reasoning(text: str, answer: Answer) -> bool:
    return any(ch.isalnum() for ch in text[: max(answer.box_start, 0)])


def _format_scores(answers: list[Answer], texts: list[str]) -> list[float]:
    return [0.0 if not a.ok else 1.0 if _has_reasoning(t, a) else NO_REASONING_FORMAT
            for a, t in zip(answers, texts)]


def format_reward(prompts, completions, log_metric: Callable | None = None, **kwargs) -> list[float]:
    """1.0: a well-formed ``\\boxed{}`` ranking after reasoning text; 0.5: well-formed, no reasoning; else 0.0."""
    texts = [completion_text(c) for c in completions]
    answers = _parse_all(texts, kwargs)
    _log_statuses(answers, texts, log_metric)
    return _format_scores(answers, texts)


def _ndcg_scores(answers: list[Answer], kwargs: dict, k: int) -> list[float]:
    from llmrec.eval.ranking import UserItems, evaluate_topk

    n = len(answers)
    if n == 0:
        return []
    cands = _column(kwargs, "candidates", n)
    targets = _column(kwargs, "targets", n)
    topk = np.full((n, k), -1, dtype=np.int64)
    positives: list[list[int]] = []
    for row, (a, cs, ts) in enumerate(zip(answers, cands, targets)):
        cs = list(cs or [])
        pos = sorted({cs.index(t) for t in (ts or []) if t in cs})
        # Targets missing from the candidates still count in the ideal DCG: give them indices past the list.
        pos += [len(cs) + j for j, t in enumerate(dict.fromkeys(ts or [])) if t not in cs]
        positives.append(pos)
        if a.ok:
            r = a.ranking[:k]
            topk[row, : len(r)] = r
    res = evaluate_topk(topk, UserItems.from_lists(positives), [f"ndcg@{k}"])
    return [float(v) for v in res.per_query[f"ndcg@{k}"]]


def ndcg_reward(prompts, completions, k: int = K, log_metric: Callable | None = None, **kwargs) -> list[float]:
    """NDCG@k of the boxed ranking against ``targets`` (binary relevance); 0.0 for a malformed answer."""
    return _ndcg_scores(_parse_all(completions, kwargs), kwargs, k)


def _weights(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def discounted_mean(values: Sequence[float], k: int = K) -> float:
    """Mean of the first ``k`` values weighted by ``1/log2(rank + 1)``, weights normalised; 0.0 when empty."""
    v = np.asarray(list(values)[:k], dtype=np.float64)
    if len(v) == 0:
        return 0.0
    w = _weights(len(v))
    return float((w * v).sum() / w.sum())


def _qas_scores(answers: list[Answer], kwargs: dict, k: int) -> list[float]:
    n = len(answers)
    tattrs = _column(kwargs, "target_attributes", n)
    cattrs = _column(kwargs, "candidate_attributes", n)
    out = []
    for a, ta, ca in zip(answers, tattrs, cattrs):
        ta = set(ta or [])
        ca = list(ca or [])
        if not a.ok or not ta:
            out.append(0.0)
            continue
        shares = [len(ta.intersection(ca[i] or [])) / len(ta) if i < len(ca) else 0.0 for i in a.ranking[:k]]
        out.append(discounted_mean(shares, k))
    return out


def qas_reward(prompts, completions, k: int = K, log_metric: Callable | None = None, **kwargs) -> list[float]:
    """Query Alignment Score: discounted top-k mean of each ranked item's share of ``target_attributes``."""
    return _qas_scores(_parse_all(completions, kwargs), kwargs, k)


def _pas_scores(answers: list[Answer], kwargs: dict, k: int) -> list[float]:
    n = len(answers)
    pas = _column(kwargs, "candidate_pas", n)
    out = []
    for a, p in zip(answers, pas):
        p = list(p or [])
        if not a.ok:
            out.append(0.0)
            continue
        vals = [float(p[i]) if i < len(p) and p[i] is not None and math.isfinite(p[i]) else 0.0
                for i in a.ranking[:k]]
        out.append(discounted_mean(vals, k))
    return out


def pas_reward(prompts, completions, k: int = K, log_metric: Callable | None = None, **kwargs) -> list[float]:
    """Preference Alignment Score: discounted top-k mean of the ranked candidates' ``candidate_pas``."""
    return _pas_scores(_parse_all(completions, kwargs), kwargs, k)


def make_rerec_reward(k: int = K, w1: float = W1, w2: float = W2, format_weight: float = 1.0,
                      alignment_k: int | None = None) -> Callable:
    """The combined reward ``format_weight * format + ndcg@k + w1 * qas + w2 * pas`` (named "rerec_reward").

    QAS and PAS average over the top ``alignment_k`` items (default ``k``); 1 scores the recommended item alone.
    """
    ak = k if alignment_k is None else alignment_k

    def rerec_reward(prompts, completions, log_metric: Callable | None = None, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        answers = _parse_all(texts, kwargs)
        _log_statuses(answers, texts, log_metric)
        parts = (_format_scores(answers, texts), _ndcg_scores(answers, kwargs, k), _qas_scores(answers, kwargs, ak),
                 _pas_scores(answers, kwargs, ak))
        return [format_weight * f + nd + w1 * q + w2 * p for f, nd, q, p in zip(*parts)]

    rerec_reward.__doc__ = (f"format x{format_weight:g} + NDCG@{k} + {w1:g} x QAS@{ak} + {w2:g} x PAS@{ak} "
                            "(ReRec).")
    return rerec_reward


rerec_reward = make_rerec_reward()


def make_component_rewards(k: int = K, log_with: str = "format", alignment_k: int | None = None) -> list[Callable]:
    """[format, ndcg@k, qas@alignment_k, pas@alignment_k] as separate reward functions (for TRL's
    ``reward_weights``); ``alignment_k`` defaults to ``k``.

    ``log_with`` names the one that logs the answers' malformation shares (the format reward does; a run that
    uses NDCG alone passes "ndcg", so its malformed answers are counted too).
    """

    def named(fn: Callable, name: str) -> Callable:
        cut = k if name == "ndcg" or alignment_k is None else alignment_k
        f = functools.partial(fn, k=cut) if name != "format" else fn
        logs = name == log_with and name != "format"  # format_reward logs by itself

        def reward(prompts, completions, **kwargs):
            if logs:
                texts = [completion_text(c) for c in completions]
                _log_statuses(_parse_all(texts, kwargs), texts, kwargs.get("log_metric"))
            return f(prompts, completions, **kwargs)

        reward.__name__ = reward.__qualname__ = name
        reward.__doc__ = fn.__doc__
        return reward

    return [named(format_reward, "format"), named(ndcg_reward, "ndcg"), named(qas_reward, "qas"),
            named(pas_reward, "pas")]


# ---------------------------------------------------------------------------------------------
# Reasoning segments (for reasoning-aware advantages)

SEGMENT_LABELS = ("ok", "wrong-item", "unknown-item", "format")


@dataclass(frozen=True)
class Segment:
    start: int
    end: int
    label: str


# How reasoning names a candidate by number: "[3]", "item 3" / "candidate 3" / "option 3" / "number 3"
# / "no. 3", "#3", and "3." or "3)" at the start of a line.
_MENTION = re.compile(
    r"\[\s*(\d{1,6})\s*\]"
    r"|\b(?:items?|candidates?|options?|number|no\.)\s*#?\s*(\d{1,6})\b"
    r"|#\s?(\d{1,6})\b"
    r"|^[ \t]*[-*]?[ \t]*(\d{1,6})[.)](?=\s|$)",
    re.IGNORECASE | re.MULTILINE)
# Sentence ends: . ! ? followed by whitespace, not after a lone digit ("3. Title" is a mention) or a
# single capital ("L.A. Confidential"); every newline also ends a segment.
_SENTENCE_END = re.compile(r"(?<![\d\s])(?<!\b[A-Z])[.!?]+[\"')\]]*[ \t]+|\n+")
MIN_TITLE_KEY = 12  # a title is matched by its shortest distinctive word prefix of at least this many characters
MIN_TITLE_CHARS = 4  # shorter titles ("It") are never matched by title: too many false hits


def _mentioned_number(m: re.Match) -> int:
    """The candidate number a ``_MENTION`` match names (whichever of its alternatives matched)."""
    return next(int(g) for g in m.groups() if g is not None)


def _norm_title(title: str) -> str:
    t = re.sub(r"\s*\(\d{4}\)\s*$", "", title or "")  # "Toy Story (1995)" -> "Toy Story"
    return " ".join(t.lower().split())


@functools.lru_cache(maxsize=4096)
def _title_pattern(titles: tuple[str, ...]) -> re.Pattern | None:
    """One regex over the candidates' distinctive title prefixes; group name t<i> = candidate i."""
    norm = [_norm_title(t) for t in titles]
    alts = []
    for i, t in enumerate(norm):
        if len(t) < MIN_TITLE_CHARS:
            continue
        words = t.split(" ")
        key = t
        for j in range(1, len(words) + 1):
            prefix = " ".join(words[:j])
            if len(prefix) < min(MIN_TITLE_KEY, len(t)):
                continue
            if not any(o != t and o.startswith(prefix) for o in norm):
                key = prefix
                break
        alts.append(f"(?P<t{i}>{re.escape(key)})")
    if not alts:
        return None
    # Longest keys first so a title that extends another's is preferred; word boundaries around.
    alts.sort(key=len, reverse=True)
    return re.compile(r"(?<!\w)(?:" + "|".join(alts) + r")(?!\w)", re.IGNORECASE)


def _title_hits(text: str, titles: tuple[str, ...]) -> list[tuple[int, int, int]]:
    pat = _title_pattern(titles)
    if pat is None:
        return []
    return [(m.start(), m.end(), int(m.lastgroup[1:])) for m in pat.finditer(text)]


def _split_spans(text: str, start: int, end: int, protected: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sentence/line spans covering ``text[start:end]``; no cut falls inside a protected span (a title)."""
    cuts = []
    for m in _SENTENCE_END.finditer(text, start, end):
        c = m.end()
        if start < c < end and not any(a < m.start() < b for a, b in protected):
            cuts.append(c)
    bounds = [start, *cuts, end]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]


def first_named_candidate(text: Any, n_candidates: int) -> int | None:
    """0-based index of the first candidate the reasoning (the text before the box) names by number, or None.

    Numbers are read as ``reasoning_segments`` reads them ("[3]", "item 3", "#3", "3." at a line start), titles
    are not; a first number outside 1..n gives None. Evaluation compares this choice with the box's first item:
    a policy can pick the target in its sentence and still lose it in the box (docs/training.md).
    """
    text = completion_text(text)
    answer = parse_answer(text, n_candidates)
    end = answer.box_start if answer.box_start >= 0 else len(text)
    m = _MENTION.search(text, 0, end)
    if m is None:
        return None
    number = _mentioned_number(m)
    return number - 1 if 1 <= number <= n_candidates else None


WRONG_ITEM_RULES = ("any-non-target", "above-target")
BOX_RULES = ("format", "top-item")


def reasoning_segments(text: Any, candidate_titles: Sequence[str], targets_idx: set[int],
                       n_candidates: int, wrong_item_rule: str = "any-non-target",
                       box_rule: str = "format") -> list[Segment]:
    """Labelled char spans covering ``text`` in order, without gaps: sentences/lines, the box its own span.

    ``targets_idx`` are 0-based candidate indices of the targets (``candidates.index(t)``). Labels:

    - "ok": names no candidate, or names at least one target;
    - "wrong-item": names only non-target candidates, by number ("[3]", "item 3", "#3", "3." at a line
      start) or by title (case-insensitive; the shortest word prefix of 12+ characters that no other
      candidate's title starts with; a trailing "(1995)" year ignored). With ``wrong_item_rule=
      "above-target"`` only when one of them is not placed below a target by the well-formed answer: a
      sentence that explains the ranking's tail ("Candidates 4, 9 share part of the request, so they come
      next") after the target was put first argues for no wrong item;
    - "unknown-item": names a number outside 1..n (and no target), or the box's numbers are out of range;
    - "format": the box when its answer is malformed (empty, unparseable, duplicate, or never closed);
    - the box when well formed: "ok" with ``box_rule="format"``; with ``"top-item"`` the box argues for its
      first item like any sentence, so it is "wrong-item" when that item is not a target.

    Limits: mentions are found lexically, not understood: "item 5 does not fit" is still "wrong-item";
    a list after a keyword ("Candidates 15, 12, 16 share ...") names only its first number (so that sentence
    is "wrong-item" or "ok" by which of its items comes first); a numbered step list ("1. First, ...") reads
    as naming candidate 1; titles shorter than 4 characters, paraphrased or misspelt titles are not found;
    the text after the box is one more segment labelled like any other.
    """
    if wrong_item_rule not in WRONG_ITEM_RULES:
        raise LlmrecError(f"wrong_item_rule must be one of {WRONG_ITEM_RULES}, got {wrong_item_rule!r}")
    if box_rule not in BOX_RULES:
        raise LlmrecError(f"box_rule must be one of {BOX_RULES}, got {box_rule!r}")
    text = completion_text(text)
    if not text:
        return []
    titles = tuple(str(t) if t is not None else "" for t in (candidate_titles or []))
    targets = set(targets_idx or ())
    answer = parse_answer(text, n_candidates)
    # Why "above-target" exists: with "any-non-target", every sentence about the ranking's tail of a correct
    # answer is penalised, so in a group of good answers its tokens get a negative advantage. Whether that is
    # what makes full ReRec stop before the box on Amazon Beauty is not shown: the above_target arm did worse
    # there over 2 seeds (docs/training.md).
    tail: set[int] = set()
    if wrong_item_rule == "above-target" and answer.ok:
        ranked_targets = [r for r, i in enumerate(answer.ranking) if i in targets]
        if ranked_targets:
            tail = set(answer.ranking[ranked_targets[0] + 1:])
    hits = _title_hits(text, titles)
    protected = [(a, b) for a, b, _ in hits]
    spans: list[tuple[int, int]] = []
    box = (answer.box_start, answer.box_end) if answer.box_start >= 0 else None
    if box:
        spans += _split_spans(text, 0, box[0], protected) + [box] + _split_spans(text, box[1], len(text), protected)
    else:
        spans = _split_spans(text, 0, len(text), protected)
    # A number inside a matched title ("Gloss Bar #1") names that title's item, not candidate 1.
    mentions = [(m.start(), _mentioned_number(m)) for m in _MENTION.finditer(text)
                if not any(a <= m.start() < b for a, b in protected)]
    segments = []
    for a, b in spans:
        if box and (a, b) == box:
            label = "ok" if answer.ok else "unknown-item" if answer.status == "out-of-range" else "format"
            # Why "top-item" exists: a policy can name the target in its reasoning and put another item first in
            # the box (2 of full ReRec's 11 lost boxes on Amazon Beauty seed 0; the rest are malformed). Under
            # "format" that answer's right reasoning and wrong box share one advantage; "top-item" blames the box.
            if answer.ok and box_rule == "top-item" and answer.ranking[0] not in targets:
                label = "wrong-item"
            segments.append(Segment(a, b, label))
            continue
        named = {x - 1 for s, x in mentions if a <= s < b}
        named |= {i for s, _, i in hits if a <= s < b}
        if named & targets:
            label = "ok"
        elif any(not 0 <= i < n_candidates for i in named):
            label = "unknown-item"
        elif named and not named <= tail:
            label = "wrong-item"
        else:
            label = "ok"
        segments.append(Segment(a, b, label))
    return segments
