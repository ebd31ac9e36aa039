"""ReRec tasks on real ML-100K (and Amazon Beauty): candidates, targets, needs, attributes, PAS with LightGCN."""

from __future__ import annotations

import datasets
import numpy as np
import pytest

from llmrec.data.schema import ITEM_FEATURES, RecData
from llmrec.training.rerec_tasks import (
    RerecTemplate,
    build_rerec_tasks,
    candidate_pas,
    category_attributes,
    item_attributes,
    read_tasks_jsonl,
    tasks_to_dataset,
    write_tasks_jsonl,
)


@pytest.fixture(scope="module")
def ml100k(shared_data):
    from llmrec.data.loading import load_recdata

    return load_recdata(shared_data / "movielens" / "recbole_ml-100k")  


@pytest.fixture(scope="module")
def ml_cf(ml100k, tmp_path_factory):
    """A short LightGCN on ML-100K (6 epochs, ~15 s; the budget tests/test_cf.py shows beats popularity)."""
    from llmrec.cf import load_cf
    from llmrec.cf.config import CFConfig
    from llmrec.cf.train import train_cf

    cfg = CFConfig(model="lightgcn", epochs=6, lr=0.02, eval_every=6, patience=0, progress=False, seed=0, threads=2)
    out = tmp_path_factory.mktemp("cf_lightgcn_ml100k")
    train_cf(cfg, data=ml100k, out=out)
    return load_cf(out)


@pytest.fixture(scope="module")
def ml_tasks(ml100k, ml_cf):
    return {split: build_rerec_tasks(ml100k, split, cf=ml_cf) for split in ("train", "test")}


def _sections(task: dict) -> tuple[list[str], str]:
    """(history titles, need) parsed back out of the user message."""
    text = task["prompt"][-1]["content"]
    history = text.split("oldest first:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    titles = [h[2:].rsplit(" (rated ", 1)[0] for h in history]
    need = text.split('The user says: "', 1)[1].split('"\n', 1)[0]
    return titles, need


def _check_tasks(tasks: list[dict], data: RecData, split: str):
    from llmrec.data.splits import leave_one_out

    parts = leave_one_out(data)
    target_part = parts.valid if split == "train" else parts.test
    truth = dict(zip(target_part.interactions["user_id"], target_part.interactions["item_id"]))
    touched: dict[str, set[str]] = {}
    for u, i in zip(data.interactions["user_id"], data.interactions["item_id"]):
        touched.setdefault(u, set()).add(i)
    cats = dict(zip(data.items["item_id"], data.items["categories"]))
    with_need = 0
    for t in tasks:
        assert len(t["candidates"]) == 20 and len(set(t["candidates"])) == 20
        assert t["targets"] == [truth[t["user_id"]]]
        assert sum(c in t["targets"] for c in t["candidates"]) == 1
        # negatives: items the user never interacted with (in any part, later ones included)
        assert not (set(t["candidates"]) - set(t["targets"])) & touched[t["user_id"]]
        target_title = t["candidate_titles"][t["candidates"].index(t["targets"][0])]
        history, need = _sections(t)
        assert 1 <= len(history) <= 10
        assert target_title not in history and target_title.lower() not in need.lower()
        need_attrs = category_attributes(t["target_attributes"])
        if need_attrs:
            with_need += 1
            assert all(a in need for a in need_attrs)
            assert set(need_attrs) <= set(cats[t["targets"][0]])  # real attributes of the target
        lines = t["prompt"][-1]["content"].splitlines()
        assert [ln for ln in lines if ln.startswith("[")] == [
            f"[{n}] {title}" for n, title in enumerate(t["candidate_titles"], 1)]
        assert len(t["candidate_attributes"]) == len(t["candidate_pas"]) == 20
    assert with_need >= 0.95 * len(tasks)
    assert len({t["task_id"] for t in tasks}) == len(tasks)


def test_ml100k_tasks(ml_tasks, ml100k):
    for split, tasks in ml_tasks.items():
        assert len(tasks) >= 900  # 943 users; a few skipped (same-titled item in the history)
        _check_tasks(tasks, ml100k, split)
    t = ml_tasks["train"][0]
    assert t["prompt"][0]["role"] == "system" and "\\boxed{7, 3, 12}" in t["prompt"][1]["content"]
    _, need = _sections(t)
    assert need.startswith("I'm in the mood for a movie in these genres: ")
    # the same user asks for a different item in train (valid item) and test (test item); test history
    # ends with the train target
    train = {t["user_id"]: t for t in ml_tasks["train"]}
    both = [(train[t["user_id"]], t) for t in ml_tasks["test"] if t["user_id"] in train]
    assert len(both) >= 900
    assert all(a["targets"] != b["targets"] for a, b in both)
    titles = dict(zip(ml100k.items["item_id"], ml100k.items["title"]))
    assert all(_sections(b)[0][-1] == titles[a["targets"][0]] for a, b in both)


def test_deterministic_by_seed(ml100k, ml_tasks):
    again = build_rerec_tasks(ml100k, "train", cf=None, max_users=50)
    assert [t["candidates"] for t in again] == [t["candidates"] for t in ml_tasks["train"][:50]]
    assert [t["prompt"] for t in again] == [t["prompt"] for t in ml_tasks["train"][:50]]
    assert all(t["candidate_pas"] == [0.0] * 20 for t in again)  # no CF model: PAS 0
    other = build_rerec_tasks(ml100k, "train", seed=1, max_users=50)
    assert sum(a["candidates"] != b["candidates"] for a, b in zip(again, other)) >= 45
    assert [t["targets"] for t in other] == [t["targets"] for t in again]


def test_pas_with_real_lightgcn(ml_tasks, ml_cf):
    tasks = ml_tasks["train"]
    for t in tasks[:100]:
        i = t["candidates"].index(t["targets"][0])
        assert t["candidate_pas"][i] == pytest.approx(1.0, abs=1e-6)
        assert all(0.0 <= p <= 1.0 for p in t["candidate_pas"])
        j = (i + 1) % 20
        cos = ml_cf.item_similarity(t["candidates"][j], t["targets"][0])
        assert t["candidate_pas"][j] == pytest.approx((cos + 1) / 2, abs=1e-6)
    rng = np.random.default_rng(0)
    near, rand = [], []
    for t in tasks[:200]:
        target = t["targets"][0]
        neighbours = [x for x, _ in ml_cf.similar_items(target, k=10)]
        near += candidate_pas(ml_cf, neighbours, [target])
        rand += candidate_pas(ml_cf, list(rng.choice(ml_cf.item_ids, 10)), [target])
    assert np.mean(near) > np.mean(rand) + 0.1
    # unknown items score 0, as does everything when no target is known to the model
    assert candidate_pas(ml_cf, ["no-such-item", target], [target])[0] == 0.0
    assert candidate_pas(ml_cf, [target], ["no-such-item"]) == [0.0]


def test_item_attributes_hand_made():
    items = datasets.Dataset.from_dict({
        "item_id": ["a", "b", "c", "d"],
        "title": ["A", "B", "C", "D"],
        "text": [""] * 4,
        "categories": [["Beauty", "Skin Care", "Face"], ["Beauty", "Makeup"], ["Beauty", "Skin Care"], ["Beauty"]],
        "brand": ["L&#39;Oreal", "Unknown", "", "OPI"],
        "price": [9.99, 10.0, None, 120.0],
    }, features=ITEM_FEATURES)
    empty = datasets.Dataset.from_dict({"user_id": []})
    attrs = item_attributes(RecData("toy", empty, items, empty))
    # "Beauty" is on 4/4 items (> 50%): dropped; "Skin Care" on exactly 2/4: kept
    assert attrs == {"a": ["Skin Care", "Face", "brand:L'Oreal", "price:under $10"],
                     "b": ["Makeup", "price:$10-$25"],
                     "c": ["Skin Care"],
                     "d": ["brand:OPI", "price:$50 and up"]}
    assert category_attributes(attrs["a"]) == ["Skin Care", "Face"]


def test_template_need_and_titles():
    t = RerecTemplate.load()
    assert t.need("ml-100k", ["Crime", "Drama"]) == "I'm in the mood for a movie in these genres: Crime, Drama."
    assert t.need("openp5_beauty", ["Skin Care", "Face"]) == "I'm looking for something in Skin Care > Face."
    assert t.need("openp5_beauty", []) == t.need_fallback
    assert t.title("Lip &amp; Cheek   Stain") == "Lip & Cheek Stain"
    assert len(t.title("x" * 500)) == t.max_title_chars and t.title("x" * 500).endswith("...")


def test_attribute_template_lists_candidate_genres(ml100k):
    from llmrec.errors import LlmrecError

    t = RerecTemplate.load("rerec/task_attributes.yaml")
    msg = t.messages([{"title": "Heat", "rating": 4.0}], "need", [
        {"title": "Casper", "attributes": ["Adventure", "Children's", "brand:x", "price:under $10"]},
        {"title": "Odd", "attributes": []}])
    assert "[1] Casper (Adventure, Children's)\n[2] Odd (n/a)" in msg[-1]["content"]
    tasks = build_rerec_tasks(ml100k, "test", max_users=3, template="rerec/task_attributes.yaml")
    first = tasks[0]
    for number, attrs in enumerate(first["candidate_attributes"], start=1):
        assert f"[{number}] {first['candidate_titles'][number - 1]} ({', '.join(attrs) or 'n/a'})" in \
            first["prompt"][-1]["content"]
    with pytest.raises(LlmrecError, match="not found"):
        RerecTemplate.load("rerec/no_such_prompt.yaml")


def test_storage_roundtrip(ml_tasks, tmp_path):
    tasks = ml_tasks["test"][:30]
    path = write_tasks_jsonl(tasks, tmp_path / "sub" / "tasks.jsonl")
    assert read_tasks_jsonl(path) == tasks
    ds = tasks_to_dataset(tasks)
    assert len(ds) == 30 and ds[0] == tasks[0]
    assert ds.features["candidate_attributes"] == datasets.List(datasets.List(datasets.Value("string")))
    # an all-empty attribute column keeps its type (plain inference would make it null)
    bare = [dict(t, target_attributes=[]) for t in tasks[:2]]
    assert tasks_to_dataset(bare).features["target_attributes"] == datasets.List(datasets.Value("string"))


def test_beauty_tasks(shared_data):
    from llmrec.data.loading import load_recdata

    root = shared_data / "amazon"
    data = load_recdata(root / "openp5_beauty", item_meta=root / "recbole_amazon_beauty" / "Amazon_Beauty.item")
    tasks = build_rerec_tasks(data, "test", cf=None, max_users=150)  # PAS with a CF model: the ML-100K test
    assert len(tasks) == 150
    _check_tasks(tasks, data, "test")
    attrs = [a for t in tasks for a in t["target_attributes"]]
    assert "Beauty" not in attrs  # on every item: uninformative
    assert any(a.startswith("brand:") for a in attrs) and any(a.startswith("price:") for a in attrs)
    assert not any("&amp;" in title for t in tasks for title in t["candidate_titles"])
    _, need = _sections(tasks[0])
    assert need.startswith("I'm looking for something in ")
