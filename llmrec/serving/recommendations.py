"""``/v1/recommendations``: rank catalog items for a user with the served LLM, never inventing an item.

Grounding is by construction: the model does not write item names; it scores each candidate's title
as the answer to the user's next-item prompt (mean token log-probability of ``title<end of turn>``
via vLLM's ``prompt_logprobs``), the method `llmrec demo` and ``llmrec.eval.llm_ranking`` use with
Hugging Face models. Every returned id comes from the candidate list or the catalog.

Request: ``{"user", "catalog", "candidates", "k", "history", "query", "pool", "model", "personalize"}``
(only ``k`` and one of ``catalog``/``candidates`` are needed). Candidates are catalog item ids, or
objects ``{"item_id", "title"}`` when no catalog holds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmrec.paths import load_prompt_template
from llmrec.serving.api_errors import ApiError, bad_field, expect
from llmrec.serving.catalog import Catalog

MAX_K = 100
MAX_POOL = 500
DEFAULT_POOL = 50


@dataclass
class RecRequest:
    user: str | None
    catalog: Catalog | None
    candidates: list[tuple[str, str]]  # (item_id, title); empty -> retrieve a pool from the catalog
    k: int
    history: list[str] | None  # item ids; None -> the user's stored or catalog history
    query: str
    pool: int
    model: str | None
    personalize: bool


def parse_request(body: dict, catalogs: dict[str, Catalog]) -> RecRequest:
    user = expect(body, "user", (str,), "a string")
    name = expect(body, "catalog", (str,), "a string")
    catalog = None
    if name is not None:
        if name not in catalogs:
            served = ", ".join(sorted(catalogs)) or "none (start the gateway with --catalog NAME=PATH)"
            raise bad_field("catalog", f"unknown catalog '{name}'; served catalogs: {served}", 404)
        catalog = catalogs[name]
    elif len(catalogs) == 1 and body.get("candidates") is None:
        catalog = next(iter(catalogs.values()))
    raw = expect(body, "candidates", (list,), "a list of item ids or {item_id, title} objects")
    candidates: list[tuple[str, str]] = []
    if raw is not None:
        if not raw:
            raise bad_field("candidates", "must not be empty (leave it out to draw candidates from the catalog)")
        seen = set()
        for i, c in enumerate(raw):
            if isinstance(c, str):
                if catalog is None:
                    raise bad_field(f"candidates[{i}]", "is an item id but no 'catalog' is given; send "
                                    "{item_id, title} objects or name a catalog")
                if c not in catalog.index:
                    raise bad_field(f"candidates[{i}]", f"item '{c}' is not in catalog '{catalog.name}'")
                item = (c, catalog.title(c))
            elif isinstance(c, dict) and isinstance(c.get("item_id"), str) and isinstance(c.get("title"), str) \
                    and c["item_id"] and c["title"].strip():
                item = (c["item_id"], c["title"].strip())
            else:
                raise bad_field(f"candidates[{i}]", "must be an item id string or an object with non-empty "
                                "string 'item_id' and 'title'")
            if item[0] in seen:
                raise bad_field(f"candidates[{i}]", f"item '{item[0]}' is listed twice")
            seen.add(item[0])
            candidates.append(item)
    elif catalog is None:
        raise bad_field("catalog", "is required when no 'candidates' are given")
    k = expect(body, "k", (int,), "an integer")
    k = 10 if k is None else k
    pool = expect(body, "pool", (int,), "an integer")
    pool = DEFAULT_POOL if pool is None else pool
    if not 1 <= pool <= MAX_POOL:
        raise bad_field("pool", f"must be between 1 and {MAX_POOL}, got {pool}")
    available = len(candidates) if candidates else min(pool, len(catalog))
    if not 1 <= k <= min(MAX_K, available):
        raise bad_field("k", f"must be between 1 and {min(MAX_K, available)} (the number of candidates"
                        f"{'' if candidates else ' in the pool'}, at most {MAX_K}), got {k}")
    history = expect(body, "history", (list,), "a list of item ids")
    if history is not None:
        if catalog is None:
            raise bad_field("history", "item ids need a 'catalog' to look their titles up")
        for i, h in enumerate(history):
            if not isinstance(h, str):
                raise bad_field(f"history[{i}]", "must be an item id string")
            if h not in catalog.index:
                raise bad_field(f"history[{i}]", f"item '{h}' is not in catalog '{catalog.name}'")
    query = expect(body, "query", (str,), "a string") or ""
    model = expect(body, "model", (str,), "a string")
    personalize = expect(body, "personalize", (bool,), "a boolean")
    return RecRequest(user, catalog, candidates, k, history, query, pool, model,
                      True if personalize is None else personalize)


@dataclass
class RecTemplate:
    query_line: str
    empty_history: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> RecTemplate:
        return load_prompt_template(cls, path, "serve/recommend.yaml")


def rec_messages(history_titles: list[str], query: str, next_item, template: RecTemplate) -> list[dict]:
    """The next-item chat prompt (prompts/rec/next_item.yaml) for this history and need."""
    messages = next_item.messages([{"title": t, "rating": None} for t in history_titles])
    if not history_titles:
        messages[-1]["content"] = next_item.prompt.format(history=template.empty_history)
    if query:
        messages[-1]["content"] += template.query_line.format(query=query)
    return messages


def candidate_token_prompts(tokenizer, prompt_text: str, titles: list[str]) -> tuple[list[list[int]], int]:
    """Token ids of prompt + each ``title<eos>`` (tokenized apart, as llm_ranking does) and the prompt length."""
    end = tokenizer.eos_token or ""
    p_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    return [p_ids + tokenizer(t + end, add_special_tokens=False)["input_ids"] for t in titles], len(p_ids)


def scores_from_prompt_logprobs(response: dict, prompts: list[list[int]], prompt_len: int) -> np.ndarray:
    """Mean log-probability of each candidate's tokens, read from vLLM's ``prompt_logprobs``."""
    choices = sorted(response.get("choices", []), key=lambda c: c.get("index", 0))
    if len(choices) != len(prompts):
        raise ApiError(502, f"upstream returned {len(choices)} choices for {len(prompts)} candidate prompts")
    scores = np.empty(len(prompts))
    for r, (choice, ids) in enumerate(zip(choices, prompts)):
        plp = choice.get("prompt_logprobs")
        if not plp or len(plp) != len(ids):
            raise ApiError(502, "upstream returned no prompt log-probabilities (is it a vLLM server?)")
        total = 0.0
        for pos in range(prompt_len, len(ids)):
            entry = plp[pos] or {}
            lp = entry.get(str(ids[pos]))
            if lp is None:
                raise ApiError(502, f"upstream prompt log-probabilities lack token {ids[pos]} at {pos}")
            total += lp["logprob"] if isinstance(lp, dict) else float(lp)
        scores[r] = total / max(1, len(ids) - prompt_len)
    return scores
