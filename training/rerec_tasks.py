"""ReRec tasks: one user's history, a need stated from the held-out item's attributes, 20 numbered candidates.

The model reasons step by step and ends with a ranking of candidate numbers in ``\\boxed{...}``; the
rewards in ``llmrec.rewards.rerec`` score it from the columns each task carries (targets, attributes,
Preference Alignment Scores). Splits follow ``llmrec.data.leave_one_out``:

- ``split="train"``: history = the user's train part, target = their valid item;
- ``split="test"``: history = train + valid, target = their test item.

So a train task never shows or asks for the test item, and the test task of the same user asks for a
different interaction. Candidates are the target plus 19 negatives sampled by
``llmrec.recommend.next_item.make_cases`` (items the user never interacted with, seeded).

Item-attribute knowledge graph: ``item_attributes(data)`` gives the item -> attribute edges (categories
or genres, ``brand:<name>``, ``price:<band>``). Attributes held by more than half of the catalog are left
out: they tell items apart no better than chance (e.g. Amazon Beauty's root category "Beauty", which
every item has).

Example::

    data = load_recdata("ml-100k")
    tasks = build_rerec_tasks(data, "train", cf=load_cf("runs/cf_lightgcn_ml100k"), max_users=500)
    ds = tasks_to_dataset(tasks)           # columns: prompt, task_id, candidates, targets, ...
"""

from __future__ import annotations

import html
import re
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.data.schema import RecData
from llmrec.errors import LlmrecError
from llmrec.jsonl import write_jsonl
from llmrec.paths import load_prompt_template
from llmrec.recommend.next_item import make_cases

SPLITS = ("train", "test")
MAX_ATTRIBUTE_SHARE = 0.5  # attributes on more items than this are uninformative and left out
# Values sources use for "no value": never an attribute.
_MISSING = {"", "unknown", "none", "n/a", "(no genres listed)"}
# Price bands (US dollars): fixed, human-readable edges rather than quantiles, so a band means the
# same thing in every data set and can be said in a need.
PRICE_BANDS = ((10.0, "under $10"), (25.0, "$10-$25"), (50.0, "$25-$50"), (float("inf"), "$50 and up"))
BRAND, PRICE = "brand:", "price:"


@dataclass
class RerecTemplate:
    system: str
    history_item: str
    history_item_unrated: str
    candidate_item: str
    needs: list[dict]
    need_fallback: str
    prompt: str
    max_title_chars: int = 0  # longer titles are cut (with "...") in the prompt and candidate_titles; 0 = no cut

    @classmethod
    def load(cls, path: str | Path | None = None) -> RerecTemplate:
        return load_prompt_template(cls, path, "rerec/task.yaml")

    def title(self, raw: str) -> str:
        """A title as shown: HTML entities decoded (Amazon metadata has "&amp;"), cut to ``max_title_chars``."""
        t = " ".join(html.unescape(raw).split())
        if self.max_title_chars and len(t) > self.max_title_chars:
            t = t[: self.max_title_chars - 3].rstrip() + "..."
        return t

    def need(self, dataset_name: str, attributes: list[str]) -> str:
        """The user's need in words from the target's category/genre attributes."""
        if not attributes:
            return self.need_fallback
        for entry in self.needs:
            if re.search(entry["match"], dataset_name):
                return entry["text"].format(attributes=entry.get("joiner", ", ").join(attributes))
        return self.need_fallback

    def messages(self, history: list[dict], need: str, candidates: list[dict]) -> list[dict]:
        """Chat messages: history ``{"title", "rating"}`` oldest first, candidates ``{"title", "attributes"}``."""
        hist = [self.history_item_unrated.format(title=self.title(h["title"])) if h.get("rating") is None
                else self.history_item.format(title=self.title(h["title"]), rating=f"{h['rating']:g}")
                for h in history]
        # what a need can ask for (categories/genres); brand and price stay out of the candidate line
        cands = [self.candidate_item.format(number=i + 1, title=c["title"],
                                            attributes=", ".join(category_attributes(c["attributes"])) or "n/a")
                 for i, c in enumerate(candidates)]
        user = self.prompt.format(history="\n".join(hist), need=need, candidates="\n".join(cands), n=len(candidates))
        return ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": user}]


def price_band(price: float | None) -> str | None:
    if price is None or not np.isfinite(price) or price <= 0:
        return None
    return next(label for edge, label in PRICE_BANDS if price < edge)


def item_attributes(data: RecData, max_share: float = MAX_ATTRIBUTE_SHARE) -> dict[str, list[str]]:
    """The knowledge graph's item -> attribute edges: ``{item_id: [attribute, ...]}``.

    Attributes are the item's categories/genres (most general first, as in ``items.categories``),
    ``brand:<name>`` and ``price:<band>`` (see ``PRICE_BANDS``). Category names are used as they are,
    so a leaf shared by two paths ("Face" under Skin Care and under Makeup) is one attribute. Attributes
    held by more than ``max_share`` of the items are dropped as uninformative, and so are missing-value
    markers ("unknown" genre, "Unknown" brand).
    """
    cols = data.items.select_columns(["item_id", "categories", "brand", "price"]).to_dict()
    raw: dict[str, list[str]] = {}
    for item, cats, brand, price in zip(cols["item_id"], cols["categories"], cols["brand"], cols["price"]):
        attrs = [html.unescape(c).strip() for c in (cats or [])]
        attrs = [c for c in attrs if c.lower() not in _MISSING]
        brand = html.unescape(brand or "").strip()
        if brand.lower() not in _MISSING:
            attrs.append(BRAND + brand)
        band = price_band(price)
        if band:
            attrs.append(PRICE + band)
        raw[item] = list(dict.fromkeys(attrs))
    counts = Counter(a for attrs in raw.values() for a in attrs)
    limit = max_share * len(raw)
    return {item: [a for a in attrs if counts[a] <= limit] for item, attrs in raw.items()}


def category_attributes(attributes: list[str]) -> list[str]:
    """The category/genre attributes (what a need may say): not brand, not price."""
    return [a for a in attributes if not a.startswith((BRAND, PRICE))]


def candidate_pas(cf: Any, candidates: list[str], targets: list[str], known: set[str] | None = None) -> list[float]:
    """Preference Alignment Score of each candidate: mean over targets of (cos + 1) / 2 of CF item embeddings.

    0.0 for a candidate the CF model does not know, and for all when ``cf`` is None or knows no target.
    ``known`` (the CF model's item ids as a set) saves rebuilding it when called per task.
    """
    if cf is None:
        return [0.0] * len(candidates)
    known = set(map(str, cf.item_ids)) if known is None else known
    tgt = [t for t in targets if t in known]
    rows = [i for i, c in enumerate(candidates) if c in known]
    out = [0.0] * len(candidates)
    if not tgt or not rows:
        return out
    sims = cf.item_similarities([candidates[i] for i in rows], tgt).astype(np.float64)
    pas = np.clip((sims.mean(1) + 1.0) / 2.0, 0.0, 1.0)
    for i, v in zip(rows, pas.tolist()):
        out[i] = float(v)
    return out


def _user_items(data: RecData) -> dict[str, set[str]]:
    cols = data.interactions.select_columns(["user_id", "item_id"]).to_dict()
    out: dict[str, set[str]] = {}
    for u, i in zip(cols["user_id"], cols["item_id"]):
        out.setdefault(u, set()).add(i)
    return out


def build_rerec_tasks(data: RecData, split: str = "train", n_candidates: int = 20, max_history: int = 10,
                      seed: int = 0, cf: Any = None, max_users: int | None = None,
                      template: RerecTemplate | str | Path | None = None) -> list[dict]:
    """One ReRec task per user (see the module docstring for the split protocol and the columns).

    Each task is a dict of JSON-able values: ``prompt`` (chat messages), ``task_id``
    (``"<data>/<split>/s<seed>/<user>"``), ``user_id``, ``candidates`` (item ids; number i+1 is
    ``candidates[i]``), ``candidate_titles``, ``targets``, ``target_attributes`` (attributes all targets
    share), ``candidate_attributes``, ``candidate_pas`` (see ``candidate_pas``).

    The history shown is the last ``max_history`` items. A user is skipped when their target's title is
    also the title of a shown history item (a same-titled different item, e.g. two "Sabrina" films):
    the prompt would appear to leak the answer. For ``split="train"`` negatives that the user
    interacts with later (their test item) are re-drawn, since they are not true negatives.
    """
    from llmrec.data.splits import leave_one_out

    if split not in SPLITS:
        raise LlmrecError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    if n_candidates < 2:
        raise LlmrecError(f"n_candidates must be at least 2, got {n_candidates}")
    if not isinstance(template, RerecTemplate):
        template = RerecTemplate.load(template)
    parts = leave_one_out(data)
    if split == "train":
        cases = make_cases(parts.train, parts.valid, n_negatives=n_candidates - 1, seed=seed)
    else:
        cases = make_cases([parts.train, parts.valid], parts.test, n_negatives=n_candidates - 1, seed=seed)
    attrs = item_attributes(data)
    titles = {i: (t or i) for i, t in zip(data.items["item_id"], data.items["title"])}
    later = _user_items(parts.test) if split == "train" else {}
    catalog = list(data.items["item_id"])
    known = set(map(str, cf.item_ids)) if cf is not None else set()
    tasks = []
    for case in cases:
        history = case.history[-max_history:] if max_history > 0 else []
        if template.title(titles[case.target]) in {template.title(h["title"]) for h in history}:
            continue
        cands = _redraw_false_negatives(case, later.get(case.user_id, set()), catalog, seed)
        targets = [case.target]
        common = [a for a in attrs.get(targets[0], []) if all(a in attrs.get(t, []) for t in targets[1:])]
        need = template.need(data.name, category_attributes(common))
        cand_attrs = [attrs.get(c, []) for c in cands]
        cand_titles = [template.title(titles.get(c, c)) for c in cands]
        tasks.append({
            "prompt": template.messages(history, need, [{"title": t, "attributes": a}
                                                         for t, a in zip(cand_titles, cand_attrs)]),
            "task_id": f"{data.name}/{split}/s{seed}/{case.user_id}",
            "user_id": case.user_id,
            "candidates": cands,
            "candidate_titles": cand_titles,
            "targets": targets,
            "target_attributes": common,
            "candidate_attributes": cand_attrs,
            "candidate_pas": candidate_pas(cf, cands, targets, known),
        })
        if max_users and len(tasks) >= max_users:
            break
    return tasks


def _redraw_false_negatives(case, later: set[str], catalog: list[str], seed: int) -> list[str]:
    """Candidates with any negative the user interacts with later replaced by a fresh unseen item."""
    bad = [i for i, c in enumerate(case.candidates) if c != case.target and c in later]
    if not bad:
        return list(case.candidates)
    cands = list(case.candidates)
    taken = set(cands) | later | {h["item_id"] for h in case.history}
    # Seeded per user, so a user's task does not depend on which other users were built.
    rng = np.random.default_rng([seed, zlib.crc32(case.user_id.encode())])
    for i in bad:
        while (new := catalog[int(rng.integers(len(catalog)))]) in taken:
            pass
        cands[i] = new
        taken.add(new)
    return cands


# ---------------------------------------------------------------------------------------------
# Storage

FEATURES_SPEC = {
    "task_id": "string", "user_id": "string", "candidates": ["string"], "candidate_titles": ["string"],
    "targets": ["string"], "target_attributes": ["string"], "candidate_attributes": [["string"]],
    "candidate_pas": ["float64"],
}


def _features():
    import datasets

    def feat(spec):
        if isinstance(spec, list):
            return datasets.List(feat(spec[0]))
        return datasets.Value(spec)

    f = {"prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})}
    f.update({k: feat(v) for k, v in FEATURES_SPEC.items()})
    return datasets.Features(f)


def tasks_to_dataset(tasks: list[dict]):
    """A ``datasets.Dataset`` with fixed features (empty attribute lists would otherwise infer as null)."""
    import datasets

    features = _features()
    missing = [k for k in features if tasks and k not in tasks[0]]
    if missing:
        raise LlmrecError(f"ReRec tasks lack column(s) {', '.join(missing)}")
    return datasets.Dataset.from_list([{k: t[k] for k in features} for t in tasks], features=features)


def write_tasks_jsonl(tasks: list[dict], path: str | Path) -> Path:
    """One task a line (UTF-8 JSON); parent folders created."""
    return write_jsonl(tasks, path)


def read_tasks_jsonl(path: str | Path) -> list[dict]:
    from llmrec.jsonl import iter_jsonl

    return [task for _, task in iter_jsonl(path)]


def load_rerec_tasks(split: str, *, data: str | Path | None = None, tasks_file: str | Path | None = None,
                     item_meta: str | Path | None = None, cf_dir: str | Path | None = None, n_candidates: int = 20,
                     max_history: int = 10, seed: int = 0, max_tasks: int | None = None,
                     template: RerecTemplate | str | Path | None = None) -> list[dict]:
    """Tasks from a JSONL file, or built from a data folder (with the CF run in ``cf_dir`` for PAS).

    What the training recipe and ``llmrec eval rerec`` both do with their command-line arguments.
    ``template`` is the task prompt file (default prompts/rerec/task.yaml); a tasks file keeps its own prompts.
    """
    if tasks_file:
        tasks = read_tasks_jsonl(tasks_file)
    else:
        from llmrec.data import load_recdata

        cf = None
        if cf_dir:
            from llmrec.cf import load_cf

            cf = load_cf(cf_dir)
        recdata = load_recdata(data, **({"item_meta": item_meta} if item_meta else {}))
        tasks = build_rerec_tasks(recdata, split=split, n_candidates=n_candidates, max_history=max_history,
                                  seed=seed, cf=cf, max_users=max_tasks, template=template)
    return tasks[:max_tasks] if max_tasks else tasks
