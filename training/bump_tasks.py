"""BUMP tasks: a profile-writing prompt per user plus the user's held-out (later) reviews as text.

The policy sees a user's earlier reviews (``prompts/bump/profile.yaml``) and writes a short profile;
the reward (``llmrec.rewards.bump``) checks in-batch whether that profile identifies the user's
*later* reviews, which the prompt never shows. Per user, interactions are time-ordered; the last
``n_heldout`` are held out and the ``n_history`` before them form the prompt.

Users are split train/test by a seeded hash of their id (:func:`split_users`), so a user's side
does not depend on which other users pass the filters. :func:`build_rating_questions` turns the
held-out reviews of the same users into LaMP-3-style rating questions (review text -> stars) for
``llmrec.eval.profile_rating``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from llmrec.data.schema import RecData
from llmrec.errors import LlmrecError
from llmrec.paths import load_prompt_template

SPLITS = ("train", "test")


def cut_words(text: str, n: int | None) -> str:
    """``text`` cut to its first ``n`` words (whitespace normalised); ``None`` keeps it whole."""
    words = (text or "").split()
    if n is not None and len(words) > n:
        return " ".join(words[:n]) + " ..."
    return " ".join(words)


@dataclass
class ProfilePromptTemplate:
    """``prompts/bump/profile.yaml`` (see the comments there for the keys)."""

    system: str
    history_item: str
    prompt: str
    heldout_item: str
    max_history: int = 8
    max_review_words: int | None = 40
    max_heldout_words: int | None = 40

    @classmethod
    def load(cls, path: str | Path | None = None) -> ProfilePromptTemplate:
        return load_prompt_template(cls, path, "bump/profile.yaml")

    @staticmethod
    def _fields(it: dict, max_words: int | None) -> dict:
        return {"title": it["title"], "rating": "?" if it["rating"] is None else f"{it['rating']:g}",
                "text": cut_words(it["text"], max_words)}

    def messages(self, history: list[dict]) -> list[dict]:
        """Chat messages asking for a profile from ``history`` (oldest first; the last ``max_history`` shown)."""
        lines = [self.history_item.format(**self._fields(h, self.max_review_words))
                 for h in history[-self.max_history:]]
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.prompt.format(history="\n".join(lines))}]

    def heldout_text(self, it: dict) -> str:
        return self.heldout_item.format(**self._fields(it, self.max_heldout_words))


def user_reviews(data: RecData, dedupe_text: bool = True) -> dict[str, list[dict]]:
    """Each user's interactions in time order (ties keep table order) with a display title.

    The title is the item's title, else the review's summary line (Amazon 5-core review files come
    without item metadata), else the item id. With ``dedupe_text``, a review whose body repeats an
    earlier review of the same user (same first 30 words, case-insensitive) is dropped: some users post
    one text, or slight edits of it, for several products, and a held-out copy of a prompt review would
    leak it (and its rating) to the model.
    """
    titles = dict(zip(data.items["item_id"], data.items["title"]))
    cols = data.interactions.select_columns(["user_id", "item_id", "timestamp", "rating", "text", "summary"]).to_dict()
    order = sorted(range(len(cols["user_id"])), key=lambda i: (cols["user_id"][i], cols["timestamp"][i], i))
    out: dict[str, list[dict]] = {}
    seen: set[tuple[str, str]] = set()
    for i in order:
        item, user = cols["item_id"][i], cols["user_id"][i]
        body = " ".join((cols["text"][i] or "").lower().split()[:30])
        if dedupe_text and body:
            if (user, body) in seen:
                continue
            seen.add((user, body))
        title = " ".join((titles.get(item) or cols["summary"][i] or item).split())
        out.setdefault(user, []).append(
            {"item_id": item, "title": title, "rating": cols["rating"][i], "text": cols["text"][i] or "",
             "timestamp": cols["timestamp"][i]})
    return out


def user_side(user_id: str, test_fraction: float = 0.2, seed: int = 0) -> str:
    """``"train"`` or ``"test"`` from a seeded hash of the id (stable whatever other users exist)."""
    h = hashlib.sha256(f"{seed}:{user_id}".encode()).digest()
    return "test" if int.from_bytes(h[:8], "big") / 2**64 < test_fraction else "train"


def split_users(user_ids: Iterable[str], test_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Sorted (train, test) user ids; deterministic in ``seed`` and each id alone."""
    if not 0.0 <= test_fraction <= 1.0:
        raise LlmrecError(f"test_fraction must be in [0, 1], got {test_fraction}")
    train, test = [], []
    for u in sorted(set(user_ids)):
        (test if user_side(u, test_fraction, seed) == "test" else train).append(u)
    return train, test


def _selected(data: RecData, n_history: int, n_heldout: int, min_interactions: int | None, max_users: int | None,
              seed: int, split: str | None, test_fraction: float) -> list[tuple[str, list[dict], list[dict]]]:
    """(user, history, held-out) for the users of ``split`` with enough interactions, sorted by user id."""
    if n_heldout < 1 or n_history < 1:
        raise LlmrecError(f"n_history and n_heldout must be >= 1, got {n_history} and {n_heldout}")
    if split not in (None, *SPLITS):
        raise LlmrecError(f"split must be one of {SPLITS} or None (all users), got {split!r}")
    # At least two reviews to describe by default: one review is an anecdote, not a taste.
    need = n_heldout + 2 if min_interactions is None else min_interactions
    if need < n_heldout + 1:
        raise LlmrecError(f"min_interactions={need} leaves no history before {n_heldout} held-out interactions")
    out = []
    for user, revs in sorted(user_reviews(data).items()):
        if len(revs) < need or (split is not None and user_side(user, test_fraction, seed) != split):
            continue
        out.append((user, revs[:-n_heldout][-n_history:], revs[-n_heldout:]))
        if max_users is not None and len(out) >= max_users:
            break
    return out


def build_bump_tasks(data: RecData, n_history: int = 8, n_heldout: int = 3, min_interactions: int | None = None,
                     max_users: int | None = None, seed: int = 0, template: ProfilePromptTemplate | str | Path | None = None,
                     split: str | None = None, test_fraction: float = 0.2) -> list[dict]:
    """One task per user: ``prompt`` (chat messages), ``task_id``, ``user_id``, ``heldout`` (list[str]).

    Args:
        data: review data (e.g. ``load_recdata(".../musical_instruments_5core_2014")``).
        n_history: at most this many reviews (the most recent before the held-out ones) in the prompt;
            the template's ``max_history`` caps it too.
        n_heldout: the user's last ``n_heldout`` interactions, rendered with ``heldout_item``.
        min_interactions: users with fewer are skipped; default ``n_heldout + 2``.
        max_users: keep the first ``max_users`` selected users (sorted by id).
        seed, split, test_fraction: ``split="train"``/``"test"`` keeps that side of :func:`split_users`;
            ``None`` keeps all users.
    """
    tpl = template if isinstance(template, ProfilePromptTemplate) else ProfilePromptTemplate.load(template)
    tasks = []
    for user, history, held in _selected(data, n_history, n_heldout, min_interactions, max_users, seed, split,
                                         test_fraction):
        tasks.append({"prompt": tpl.messages(history), "task_id": f"bump-{user}", "user_id": user,
                      "heldout": [tpl.heldout_text(h) for h in held]})
    if not tasks:
        raise LlmrecError(f"no user of {data.name} qualifies (split={split}, min_interactions="
                          f"{min_interactions or n_heldout + 2}); lower min_interactions or n_heldout")
    return tasks


def bump_dataset(tasks: list[dict]):
    """The tasks as a ``datasets.Dataset`` (what GRPOTrainer takes; extra columns reach the reward as kwargs)."""
    import datasets

    if not tasks:
        raise LlmrecError("no BUMP tasks to make a dataset from")
    return datasets.Dataset.from_list(tasks)


def build_rating_questions(data: RecData, n_history: int = 8, n_heldout: int = 3, min_interactions: int | None = None,
                           max_users: int | None = None, seed: int = 0, split: str | None = "test",
                           test_fraction: float = 0.2) -> list[dict]:
    """LaMP-3-style questions from the held-out reviews of the same users as :func:`build_bump_tasks`.

    Pass the same arguments as to ``build_bump_tasks`` to get the same users. One question per held-out
    review: ``{"id", "user_id", "review", "rating"}`` (review body -> integer stars). The shared
    ``lamp/derived_lamp3_like_amazon_mi`` set is not used: its questions carry no user ids, so they
    cannot be joined to generated profiles.
    """
    out = []
    for user, _, held in _selected(data, n_history, n_heldout, min_interactions, max_users, seed, split,
                                   test_fraction):
        for j, h in enumerate(held):
            if h["rating"] is None or not h["text"].strip():
                continue
            out.append({"id": f"{user}-{j}", "user_id": user, "review": h["text"], "rating": round(h["rating"])})
    return out
