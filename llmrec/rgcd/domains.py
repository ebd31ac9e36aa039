"""Two domains with shared users, split for cross-domain retrieval.

Each item belongs to one domain (``source`` or ``target``). Users who interacted with both are *shared*;
they are split by user (``test_frac``, seeded): a **training** user contributes behavioural-collaboration
pairs (every source item x every target item they interacted with, capped per user) to the contrastive
objective; an **evaluation** user is a query: their source-domain history (time order) must retrieve their
target-domain items, which training never sees as that user's pairs.

Front ends:
- :func:`category_domains`: one data set, domains by an item category at a given level (Amazon Beauty:
  level 1 is "Makeup", "Skin Care", "Hair Care", "Fragrance", "Bath & Body", "Tools & Accessories");
- :func:`dataset_domains`: two data sets in any of the loaders' formats, users matched by ``user_id``.
"""

from __future__ import annotations

import html
import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from llmrec.errors import LlmrecError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class Item:
    """An item's content: what the teacher reads, the student sees and the encoders embed."""

    item_id: str
    domain: str
    title: str
    text: str  # one line: title, category path, brand, price
    image: str | None = None  # path of the item's image, when it has one


@dataclass
class CrossDomainData:
    """Items of two domains, the shared users' interactions and the user split."""

    source: str
    target: str
    items: dict[str, Item]
    history: dict[str, list[str]]  # shared user -> source-domain items, time order
    target_items_of: dict[str, list[str]]  # shared user -> target-domain items, time order
    train_users: list[str]
    test_users: list[str]
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (source item, target item) of training users
    max_pairs_per_user: int = 50
    seed: int = 0

    def dev_split(self, dev_frac: float = 0.2, seed: int | None = None) -> CrossDomainData:
        """The training users alone, split again: some become evaluation users of a *dev* split.

        Choices tuned on it (e.g. the popularity weight) never see this split's evaluation users; its pairs
        (and any counts) come from the remaining training users only.
        """
        if not 0 < dev_frac < 1 or len(self.train_users) < 2:
            raise LlmrecError(f"dev_frac must be in (0, 1) with >= 2 training users, got {dev_frac}, "
                              f"{len(self.train_users)} users")
        users = list(self.train_users)
        seed = self.seed + 1000 if seed is None else seed
        random.Random(seed).shuffle(users)
        n_dev = max(1, round(dev_frac * len(users)))
        dev, fit = sorted(users[:n_dev]), sorted(users[n_dev:])
        pairs = _sample_pairs(fit, self.history, self.target_items_of, self.max_pairs_per_user, seed + 1)
        return CrossDomainData(self.source, self.target, self.items, self.history, self.target_items_of, fit, dev,
                               pairs, self.max_pairs_per_user, seed)

    def interaction_counts(self, users: list[str] | None = None) -> dict[str, int]:
        """Item id -> how many of ``users`` (default: the training users) interacted with it, both domains."""
        counts: dict[str, int] = defaultdict(int)
        for u in self.train_users if users is None else users:
            for i in set(self.history[u]) | set(self.target_items_of[u]):
                counts[i] += 1
        return dict(counts)

    def domain_items(self, domain: str) -> list[str]:
        """Item ids of one domain, sorted (the row order of exports and indexes)."""
        return sorted(i for i, it in self.items.items() if it.domain == domain)

    def summary(self) -> str:
        return (f"{self.source} -> {self.target}: {len(self.domain_items(self.source)):,} + "
                f"{len(self.domain_items(self.target)):,} items, {len(self.train_users) + len(self.test_users):,} "
                f"shared users ({len(self.train_users):,} train, {len(self.test_users):,} test), "
                f"{len(self.pairs):,} training pairs, "
                f"{sum(it.image is not None for it in self.items.values()):,} items with an image")


def item_text(title: str, categories: list[str], brand: str, price: float | None, skip_root: bool = True) -> str:
    """``"Title | category: A > B | brand: X | price: $12"``: the item as one short line."""
    cats = [html.unescape(c).strip() for c in categories or [] if c and c.strip()]
    if skip_root and len(cats) > 1:
        cats = cats[1:]  # the root ("Beauty") is shared by every item
    parts = [html.unescape(title or "").strip() or "(untitled)"]
    if cats:
        parts.append("category: " + " > ".join(cats))
    brand = html.unescape(brand or "").strip()
    if brand and brand.lower() not in ("unknown", "none", "nan"):
        parts.append(f"brand: {brand}")
    if price is not None and not math.isnan(price) and price > 0:
        parts.append(f"price: ${price:.2f}")
    return " | ".join(parts)


def _image_of(item_id: str, image_dir: str | Path | None) -> str | None:
    if image_dir is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        p = Path(image_dir) / f"{item_id}{suffix}"
        if p.is_file():
            return str(p)
    return None


def _items_from(data, domain_of, image_dir) -> dict[str, Item]:
    cols = data.items.select_columns(["item_id", "title", "categories", "brand", "price"]).to_dict()
    out = {}
    for iid, title, cats, brand, price in zip(cols["item_id"], cols["title"], cols["categories"], cols["brand"],
                                              cols["price"]):
        dom = domain_of(iid, cats)
        if dom is None:
            continue
        out[iid] = Item(iid, dom, html.unescape(title or "").strip(), item_text(title, cats, brand, price),
                        _image_of(iid, image_dir))
    return out


def build_cross_domain(items: dict[str, Item], interactions: list[tuple[str, str, int]], source: str, target: str,
                       test_frac: float = 0.2, seed: int = 0, max_pairs_per_user: int = 50) -> CrossDomainData:
    """Shared users of ``source``/``target`` split by user; ``interactions``: (user, item, timestamp)."""
    if source == target:
        raise LlmrecError(f"source and target domain are the same: '{source}'")
    if not 0 < test_frac < 1:
        raise LlmrecError(f"test_frac must be in (0, 1), got {test_frac}")
    per_user: dict[str, dict[str, list[tuple[int, str]]]] = defaultdict(lambda: {source: [], target: []})
    for user, iid, ts in interactions:
        it = items.get(iid)
        if it is not None and it.domain in (source, target):
            per_user[user][it.domain].append((ts, iid))
    history, tgt = {}, {}
    for user, d in per_user.items():
        if d[source] and d[target]:
            history[user] = list(dict.fromkeys(i for _, i in sorted(d[source])))
            tgt[user] = list(dict.fromkeys(i for _, i in sorted(d[target])))
    users = sorted(history)
    if len(users) < 2:
        raise LlmrecError(f"{len(users)} users interacted with both '{source}' and '{target}'; need at least 2")
    random.Random(seed).shuffle(users)
    n_test = max(1, round(test_frac * len(users)))
    test, train = sorted(users[:n_test]), sorted(users[n_test:])
    pairs = _sample_pairs(train, history, tgt, max_pairs_per_user, seed + 1)
    used = {i for u in users for i in history[u] + tgt[u]}
    kept = {i: it for i, it in items.items() if it.domain in (source, target) and i in used}
    return CrossDomainData(source, target, kept, history, tgt, train, test, pairs, max_pairs_per_user, seed)


def _sample_pairs(users: list[str], history: dict[str, list[str]], tgt: dict[str, list[str]],
                  max_pairs_per_user: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for user in users:
        up = [(s, t) for s in history[user] for t in tgt[user]]
        if len(up) > max_pairs_per_user:
            up = rng.sample(up, max_pairs_per_user)
        pairs += up
    return pairs


def category_domains(data, source: str, target: str, level: int = 1, image_dir: str | Path | None = None,
                     **split) -> CrossDomainData:
    """Domains by the item category at ``level`` (0 = root) of one ``RecData`` (e.g. Amazon Beauty)."""

    def domain_of(_iid, cats):
        cats = [html.unescape(c).strip() for c in cats or []]
        return cats[level] if len(cats) > level and cats[level] in (source, target) else None

    items = _items_from(data, domain_of, image_dir)
    if not any(it.domain == source for it in items.values()) or not any(it.domain == target for it in items.values()):
        from collections import Counter

        known = Counter(c[level] for c in data.items["categories"] if c and len(c) > level).most_common(12)
        raise LlmrecError(f"no items in category '{source}' or '{target}' at level {level}; "
                          f"most common there: {[k for k, _ in known]}")
    return build_cross_domain(items, _interactions(data), source, target, **split)


def dataset_domains(source_data, target_data, source: str = "source", target: str = "target",
                    image_dir: str | Path | None = None, **split) -> CrossDomainData:
    """Two data sets (any loader format) as the two domains; users are matched by ``user_id``."""
    items = _items_from(source_data, lambda *_: source, image_dir)
    for iid, it in _items_from(target_data, lambda *_: target, image_dir).items():
        if iid in items:
            iid = f"{target}:{iid}"  # the same id in both data sets is two different items
            it.item_id = iid
        items[iid] = it
    renamed = {k.split(":", 1)[1] for k in items if k.startswith(f"{target}:")}
    inter = _interactions(source_data) + [(u, f"{target}:{i}" if i in renamed else i, t)
                                          for u, i, t in _interactions(target_data)]
    return build_cross_domain(items, inter, source, target, **split)


def _interactions(data) -> list[tuple[str, str, int]]:
    cols = data.interactions.select_columns(["user_id", "item_id", "timestamp"]).to_dict()
    return list(zip(cols["user_id"], cols["item_id"], cols["timestamp"]))


def load_cross_domain(data: str | Path, source: str, target: str, *, item_meta: str | Path | None = None,
                      target_data: str | Path | None = None, target_item_meta: str | Path | None = None,
                      level: int = 1, image_dir: str | Path | None = None, test_frac: float = 0.2, seed: int = 0,
                      max_pairs_per_user: int = 50) -> CrossDomainData:
    """From paths: one data set split by category (``target_data`` None) or two data sets (any loader format)."""
    from llmrec.data import load_recdata

    split = {"test_frac": test_frac, "seed": seed, "max_pairs_per_user": max_pairs_per_user}
    src = load_recdata(data, **({"item_meta": str(item_meta)} if item_meta else {}))
    if target_data is None:
        return category_domains(src, source, target, level=level, image_dir=image_dir, **split)
    tgt = load_recdata(target_data, **({"item_meta": str(target_item_meta)} if target_item_meta else {}))
    return dataset_domains(src, tgt, source, target, image_dir=image_dir, **split)
