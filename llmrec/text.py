"""Small text helpers shared by prompt templates (LaMP, judges, rating prompts)."""

from __future__ import annotations


class BlankMap(dict):
    """``str.format_map`` mapping where a field an item lacks renders as empty text."""

    def __missing__(self, key: str) -> str:
        return ""


def cut_words(text: str, n: int | None, squeeze: bool = False) -> str:
    """The first ``n`` whitespace-separated words of ``text`` (all of them when ``n`` is None).

    Text within the limit is returned as is unless ``squeeze``, which joins the words with single spaces always
    (the rating prompts were measured that way).
    """
    words = text.split()
    if n is not None and len(words) > n:
        return " ".join(words[:n])
    return " ".join(words) if squeeze else text
