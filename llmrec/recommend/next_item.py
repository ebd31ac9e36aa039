"""Next-item recommendation as an LLM task: a history prompt and candidate item titles.

Used on both sides: SFT examples (history -> title of the next item) and evaluation (the model
scores the held-out item against sampled negatives). Histories come from a time-ordered split, so a
prompt never shows the item it asks for or anything after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmrec.data.schema import RecData
from llmrec.errors import LlmrecError
from llmrec.paths import load_prompt_template


@dataclass
class NextItemTemplate:
    system: str
    history_item: str
    history_item_unrated: str
    prompt: str
    max_history: int = 10

    @classmethod
    def load(cls, path: str | Path | None = None) -> NextItemTemplate:
        return load_prompt_template(cls, path, "rec/next_item.yaml")

    def messages(self, history: list[dict]) -> list[dict]:
        """Chat messages for a history of ``{"title", "rating"}`` dicts, oldest first."""
        lines = []
        for h in history[-self.max_history:]:
            if h.get("rating") is None:
                lines.append(self.history_item_unrated.format(title=h["title"]))
            else:
                lines.append(self.history_item.format(title=h["title"], rating=f"{h['rating']:g}"))
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.prompt.format(history="\n".join(lines))}]


@dataclass
class NextItemCase:
    user_id: str
    history: list[dict]  # [{"item_id", "title", "rating"}], oldest first
    target: str  # item id
    candidates: list[str]  # item ids, target included, in a seeded random order


def user_histories(data: RecData) -> dict[str, list[dict]]:
    """Each user's interactions in time order (ties keep table order), with item titles."""
    titles = dict(zip(data.items["item_id"], data.items["title"]))
    cols = data.interactions.select_columns(["user_id", "item_id", "timestamp", "rating"]).to_dict()
    order = sorted(range(len(cols["user_id"])), key=lambda i: (cols["user_id"][i], cols["timestamp"][i], i))
    out: dict[str, list[dict]] = {}
    for i in order:
        item = cols["item_id"][i]
        out.setdefault(cols["user_id"][i], []).append(
            {"item_id": item, "title": titles.get(item) or item, "rating": cols["rating"][i]})
    return out


def make_cases(history_part: RecData | list[RecData], target_part: RecData, n_negatives: int = 19, seed: int = 0,
               max_users: int | None = None) -> list[NextItemCase]:
    """One case per user of ``target_part``: history from ``history_part``, the target, sampled negatives.

    ``history_part`` may be several parts (leave-one-out's train and valid for the test case), joined
    in time order. Negatives are catalog items the user never interacted with in any part (sampled
    uniformly, deterministic by ``seed``), as in the sampled-metric protocol of P5/TALLRec-style
    evaluations.
    """
    if isinstance(history_part, list):
        import datasets

        parts = history_part
        history_part = RecData(parts[0].name, parts[0].users, parts[0].items,
                               datasets.concatenate_datasets([p.interactions for p in parts]))
    histories = user_histories(history_part)
    targets = user_histories(target_part)
    catalog = list(history_part.items["item_id"])
    if len(catalog) <= n_negatives:
        raise LlmrecError(f"catalog of {len(catalog)} items is too small for {n_negatives} negatives")
    rng = np.random.default_rng(seed)
    cases = []
    for user in sorted(targets):
        if user not in histories:
            continue
        seen = {h["item_id"] for h in histories[user]} | {t["item_id"] for t in targets[user]}
        target = targets[user][0]["item_id"]
        negs: list[str] = []
        while len(negs) < n_negatives:
            cand = catalog[int(rng.integers(len(catalog)))]
            if cand not in seen and cand not in negs:
                negs.append(cand)
        cands = [target, *negs]
        rng.shuffle(cands)
        cases.append(NextItemCase(user, histories[user], target, cands))
        if max_users and len(cases) >= max_users:
            break
    return cases


def sft_examples(train_part: RecData, template: NextItemTemplate | None = None, min_history: int = 3,
                 per_user: int = 1) -> list[dict]:
    """Chat prompt/completion examples: each user's last ``per_user`` train items from their earlier ones."""
    template = template or NextItemTemplate.load()
    out = []
    for user, hist in sorted(user_histories(train_part).items()):
        for j in range(max(min_history, len(hist) - per_user), len(hist)):
            out.append({"prompt": template.messages(hist[:j]),
                        "completion": [{"role": "assistant", "content": hist[j]["title"]}]})
    return out
