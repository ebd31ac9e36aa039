"""Catalog items as products to estimate: one ``{"id", "name", "description", "category", "source"}`` per item.

Any data set the data layer loads becomes an ``llmrec carbon estimate --items`` file. An item with a
title is described by its metadata (title, brand, most specific category). Many review data sets have no
titles at all (the 2014 Amazon 5-cores ship without metadata), yet their reviews say what the product is
("this pop filter...", "the strings feel..."), so such an item is described by its reviews: the review
summaries as the name, the opening sentences of its longest reviews as the description. ``source`` says
which of the two each line used, so an evaluation can report them apart.
"""

from __future__ import annotations

import html
import re
from collections import defaultdict
from dataclasses import dataclass

from llmrec.data.schema import RecData

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# Marketplace placeholders that name no maker: as a description they would pull every such item towards the
# same neighbours in the retriever (Amazon Beauty has 20 "Unknown" and 26 "Generic" brands).
_PLACEHOLDER_BRANDS = frozenset({"unknown", "generic", "n/a", "na", "none", "null", "no brand", "unbranded"})


def _brand(value) -> str:
    """The brand as readable text (metadata keeps HTML entities such as ``L&#39;Oreal``), '' for a placeholder."""
    brand = " ".join(html.unescape(str(value or "")).split())
    return "" if brand.lower() in _PLACEHOLDER_BRANDS else brand


@dataclass(frozen=True)
class ReviewDescription:
    """How much review text describes an item without a title (MiniLM reads at most 256 word pieces)."""

    summaries: int = 4        # distinct review summaries joined into the name
    reviews: int = 3          # longest reviews whose opening sentences form the description
    sentences: int = 2        # opening sentences taken from each of those reviews
    max_chars: int = 400      # cap on the description


def _opening(text: str, sentences: int) -> str:
    parts = [p.strip() for p in _SENTENCE_END.split(" ".join(str(text).split())) if p.strip()]
    return " ".join(parts[:sentences])


def _from_reviews(reviews: list[tuple[str, str]], how: ReviewDescription) -> tuple[str, str]:
    """``(name, description)`` from ``[(summary, text), ...]`` in time order."""
    seen, summaries = set(), []
    for summary, _ in reviews:
        s = " ".join(str(summary).split())
        if s and s.lower() not in seen:
            seen.add(s.lower())
            summaries.append(s)
        if len(summaries) == how.summaries:
            break
    longest = sorted((t for _, t in reviews if str(t).strip()), key=len, reverse=True)[: how.reviews]
    description = " ".join(_opening(t, how.sentences) for t in longest)
    if len(description) > how.max_chars:
        description = description[: how.max_chars].rsplit(" ", 1)[0]
    name = "; ".join(summaries) or _opening(description, 1)
    return name, description


def catalog_items(data: RecData, how: ReviewDescription = ReviewDescription(),
                  default_category: str | None = None) -> list[dict]:
    """One product record per item of ``data`` (items table order).

    ``default_category`` (default: the data set's name, e.g. "Musical Instruments") stands in for items
    without categories, so the retriever knows the domain. Items with neither a title nor a review with
    text are left out (nothing describes them); the caller sees it from the counts.
    """
    default_category = default_category if default_category is not None else data.name.replace("_", " ")
    untitled = {r["item_id"] for r in data.items if not str(r["title"]).strip()}
    reviews: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    if untitled:
        cols = data.interactions.select_columns(["item_id", "timestamp", "summary", "text"]).to_dict()
        for item, ts, summary, text in zip(cols["item_id"], cols["timestamp"], cols["summary"], cols["text"]):
            if item in untitled and (str(summary).strip() or str(text).strip()):
                reviews[item].append((ts, summary, text))
    out = []
    for r in data.items:
        category = r["categories"][-1] if r["categories"] else default_category
        title = html.unescape(str(r["title"])).strip()
        if title:
            description = _brand(r["brand"]) or str(r["text"] or "").strip()[:400]
            out.append({"id": r["item_id"], "name": title, "description": description, "category": category,
                        "source": "title"})
            continue
        item_reviews = [(s, t) for _, s, t in sorted(reviews.get(r["item_id"], []), key=lambda x: x[0])]
        if not item_reviews:
            continue
        name, description = _from_reviews(item_reviews, how)
        if name:
            out.append({"id": r["item_id"], "name": name, "description": description, "category": category,
                        "source": "reviews"})
    return out
