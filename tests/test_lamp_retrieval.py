"""Profile retrievers, LaMP prompt templates and answer post-processing (no server needed)."""

from __future__ import annotations

import hashlib
import json

import pytest

from llmrec.data.lamp_format import TASKS
from llmrec.errors import LlmrecError
from llmrec.eval.lamp_predict import (
    LampTemplate,
    build_prompts,
    postprocess_classification,
    postprocess_generation,
    postprocess_rating,
)
from llmrec.eval.retrieval import RETRIEVERS, get_retriever, top_k
from llmrec.paths import prompts_dir
from llmrec.text import cut_words

PROFILE = [
    "Great price for a set of nylon strings, they stay in tune on my classical guitar.",
    "This microphone stand wobbles and the boom arm droops under a heavy mic.",
    "The drum sticks chipped after a week of practice on the snare.",
    "Bought a capo for my acoustic; it clamps firmly and does not buzz.",
]


def test_registry_names():
    assert RETRIEVERS.names() == ["bm25", "dense", "none"]
    with pytest.raises(LlmrecError, match="unknown retriever 'tfidf'; valid names: bm25, dense, none"):
        get_retriever("tfidf")


def test_top_k_is_stable_on_ties():
    assert top_k([0.5, 2.0, 0.5, 2.0], 3) == [1, 3, 0]


def test_bm25_ranks_the_matching_item_first():
    r = get_retriever("bm25")
    ranked = r.rank(["the boom arm of my microphone stand", "snare drum sticks", "zzz qqq"], [PROFILE] * 3, 2)
    assert ranked[0][0] == 1
    assert ranked[1][0] == 2
    # No overlap at all: scores tie at 0, profile order is kept.
    assert ranked[2] == [0, 1]
    assert r.rank(["anything"], [[]], 3) == [[]]


def test_dense_ranks_the_matching_item_first():
    r = get_retriever("dense")
    # Paraphrases with little word overlap: the encoder has to carry the match.
    ranked = r.rank(
        [
            "my mic holder keeps tipping over",
            "sticks for drumming broke quickly",
            "clip-on device to change the key of a guitar",
        ],
        [PROFILE] * 3,
        4,
    )
    assert [x[0] for x in ranked] == [1, 2, 3]
    assert sorted(ranked[0]) == [0, 1, 2, 3]


def test_none_retrieves_nothing():
    assert get_retriever("none").rank(["q"], [PROFILE], 3) == [[]]


# ---------------------------------------------------------------- templates


def test_every_task_has_a_valid_template():
    for task in TASKS:
        t = LampTemplate.for_task(task)
        assert t.name == f"{task}.yaml"
        assert t.sha256 == hashlib.sha256((prompts_dir() / "lamp" / t.name).read_bytes()).hexdigest()
    assert LampTemplate.for_task("my_custom_task").name == "default.yaml"


def test_lamp3_prompt_in_the_paper_style():
    t = LampTemplate.for_task("LaMP_3")
    q = {
        "id": "1",
        "input": "What is the score of the following review on a scale of 1 to 5? just answer with "
        "1, 2, 3, 4, or 5 without further explanation. review: the capo clamps well",
        "profile": [{"id": "a", "text": PROFILE[1], "score": "2"}, {"id": "b", "text": PROFILE[3], "score": "5"}],
    }
    assert t.query(q["input"]) == "the capo clamps well"
    (prompt,) = build_prompts([q], t, get_retriever("bm25"), 1)
    assert prompt == f'5 is the score for "{PROFILE[3]}". {q["input"]}'
    (prompt,) = build_prompts([q], t, get_retriever("none"), 1)
    assert prompt == q["input"]
    (prompt,) = build_prompts([q], t, get_retriever("bm25"), 2)
    assert prompt.startswith(f'5 is the score for "{PROFILE[3]}", and 2 is the score for "{PROFILE[1]}". What')


def test_lamp1_query_is_the_two_references():
    t = LampTemplate.for_task("LaMP_1")
    inp = (
        'For an author who has written the paper with the title "Deep nets", which reference is related? '
        'Just answer with [1] or [2] without explanation. [1]: "Graph kernels" [2]: "Neural ranking"'
    )
    assert t.query(inp) == "Graph kernels Neural ranking"


def test_template_truncates_long_items_and_missing_fields_are_blank(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(
        "item: '{text} ({missing})'\nprompt: '{profile} | {input}'\ntruncate_fields: [text]\nmax_item_words: 3\n"
    )
    t = LampTemplate.load(path)
    assert t.render("in", [{"text": "one two three four five"}]) == "one two three () | in"
    # the item line alone (what TAP-PER embeds for each history entry) is the same text the prompt shows
    assert t.render_item({"text": "one two three four five", "missing": None}) == "one two three ()"
    path.write_text("item: x\nprompt: y\nbogus: 1\n")
    with pytest.raises(LlmrecError, match="unknown template keys \\['bogus'\\]"):
        LampTemplate.load(path)


def test_cut_words_keeps_short_text_as_is_unless_squeezed():
    assert cut_words("a  b\nc d", 2) == "a b"
    assert cut_words("a  b\nc", 3) == "a  b\nc"
    assert cut_words("a  b\nc", None) == "a  b\nc"
    assert cut_words("a  b\nc", 3, squeeze=True) == "a b c"
    assert cut_words("", 2) == ""


# ---------------------------------------------------------------- post-processing


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("4", "4"),
        (" The score is 5.", "5"),
        ("I'd give it 3 out of 5", "3"),
        ("Rating: 10", "1"),
        ("none", "none"),
    ],
)
def test_rating_postprocess(answer, expected):
    assert postprocess_rating(answer) == expected


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("[2]", "[2]"),
        ("The answer is [1].", "[1]"),
        ("2", "[2]"),
        ("Reference 1 is related", "[1]"),
        ("neither", "neither"),
    ],
)
def test_lamp1_postprocess(answer, expected):
    assert postprocess_classification(answer, ["[1]", "[2]"]) == expected


def test_tag_postprocess_prefers_exact_then_first_then_longest():
    tags = list(TASKS["LaMP_2"].labels)
    assert postprocess_classification('"Sci-Fi".', tags) == "sci-fi"
    assert postprocess_classification("Tag: dark comedy", tags) == "dark comedy"
    assert postprocess_classification("It is a classic with some comedy", tags) == "classic"
    assert postprocess_classification("horror", tags) == "horror"


def test_generation_postprocess():
    assert postprocess_generation('  Title: "Learning to Rank"\n') == "Learning to Rank"
    assert postprocess_generation("“A headline”\nSome explanation.", first_line=True) == "A headline"
    assert postprocess_generation("line one\nline two") == "line one\nline two"


def test_custom_task_default_template_uses_all_text_fields():
    t = LampTemplate.for_task("beauty_category")
    item = {"id": "1", "title": "Lip balm", "category": "Makeup", "price": 3.5}
    assert t.item_text(item) == "Lip balm Makeup"
    assert json.dumps(t.render("Which category?", [item])) == json.dumps(
        'Earlier items of this user: "Lip balm Makeup". Which category?'
    )
