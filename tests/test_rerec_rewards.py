"""ReRec rewards: parsing, hand-computed NDCG/QAS/PAS, malformed completions, logging, reasoning segments."""

from __future__ import annotations

import math
import random

import pytest

from llmrec.errors import LlmrecError
from llmrec.rewards import rerec
from llmrec.rewards.rerec import (
    Segment,
    discounted_mean,
    format_reward,
    make_component_rewards,
    make_rerec_reward,
    ndcg_reward,
    parse_answer,
    pas_reward,
    qas_reward,
    reasoning_segments,
    rerec_reward,
)

N = 20
CANDS = [f"i{n}" for n in range(1, N + 1)]  # number n shows item "i<n>"
D3 = 1 / math.log2(3)  # discount of rank 2


def columns(n_rows: int, targets=("i5",), target_attributes=("Crime", "Thriller", "brand:Acme"),
            candidate_attributes=None, candidate_pas=None) -> dict:
    """Task columns as TRL passes them: one value per completion."""
    cattrs = candidate_attributes or [[] for _ in range(N)]
    pas = candidate_pas or [0.0] * N
    return {"candidates": [CANDS] * n_rows, "targets": [list(targets)] * n_rows,
            "target_attributes": [list(target_attributes)] * n_rows,
            "candidate_attributes": [cattrs] * n_rows, "candidate_pas": [pas] * n_rows,
            "candidate_titles": [[f"Title {n}" for n in range(1, N + 1)]] * n_rows}


def call(fn, completions, **over):
    kw = columns(len(completions))
    kw.update(over)
    return fn([[{"role": "user", "content": "p"}]] * len(completions), completions, **kw)


# ---------------------------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize("text,ranking,status", [
    ("Reasoning. \\boxed{7, 3, 12}", [6, 2, 11], "ok"),
    ("\\boxed{\\{7, 3\\}}", [6, 2], "ok"),  # nested / escaped braces
    ("\\boxed{\\text{7; 3}}", [6, 2], "ok"),
    ("\\boxed{[7] > [3] > #12}", [6, 2, 11], "ok"),
    ("first \\boxed{1, 2} then \\boxed{4}", [3], "ok"),  # the LAST box counts
    ("no box here, 7 3 12", [], "no-answer"),
    ("\\boxed{}", [], "empty-box"),
    ("\\boxed{ , ; }", [], "empty-box"),
    ("\\boxed{", [], "unparseable"),
    ("\\boxed{7, 3", [], "unparseable"),  # truncated
    ("\\boxed{a, b}", [], "unparseable"),
    ("\\boxed{7, 3 and 12}", [], "unparseable"),
    ("\\boxed 7", [], "unparseable"),
    ("\\boxed{0}", [], "out-of-range"),
    ("\\boxed{21}", [], "out-of-range"),
    ("\\boxed{4, 21, 2}", [3, 1], "out-of-range"),  # ranking keeps the valid numbers, status says why
    ("\\boxed{3, 3, 1}", [2, 0], "duplicate"),
    ("\\boxed{1, 2} ... \\boxed{5, 5}", [4], "duplicate"),
])
def test_parse_answer(text, ranking, status):
    a = parse_answer(text, N)
    assert (a.ranking, a.status) == (ranking, status)


def test_parse_answer_box_span_and_huge_numbers():
    text = "Because. \\boxed{2, 1} done"
    a = parse_answer(text, N)
    assert text[a.box_start:a.box_end] == "\\boxed{2, 1}"
    # int() refuses strings of 4,300+ digits: such a number is simply out of range
    assert parse_answer("\\boxed{" + "9" * 10000 + "}", N).status == "out-of-range"


# ---------------------------------------------------------------------------------------------
# Hand-computed rewards


def test_ndcg_hand_computed():
    comps = ["r. \\boxed{5, 1, 2}",  # target (number 5) at rank 1
             "r. \\boxed{1, 2, 5}",  # rank 3: 1/log2(4)
             "r. \\boxed{1, 2, 3}",  # absent
             "r. \\boxed{1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 5}",  # rank 11: beyond K=10
             "r. \\boxed{5, 5}"]  # malformed: no credit even though 5 is first
    assert call(ndcg_reward, comps) == pytest.approx([1.0, 0.5, 0.0, 0.0, 0.0])
    assert call(ndcg_reward, comps[3:4], k=11) == pytest.approx([1 / math.log2(12)])
    # two targets at ranks 1 and 3: (1 + 1/log2(4)) / (1 + 1/log2(3))
    two = call(ndcg_reward, ["r. \\boxed{5, 1, 9}"], targets=[["i5", "i9"]])
    assert two == pytest.approx([(1 + 0.5) / (1 + D3)])


def test_qas_and_pas_near_miss_beats_unrelated():
    cattrs = [[] for _ in range(N)]
    cattrs[0] = ["Crime", "Thriller"]  # number 1: near miss (2 of the 3 target attributes)
    cattrs[1] = ["Comedy", "brand:Other"]  # number 2: unrelated
    pas = [0.0] * N
    pas[0], pas[1] = 0.9, 0.2
    kw = {"candidate_attributes": [cattrs] * 3, "candidate_pas": [pas] * 3}
    comps = ["r. \\boxed{1}", "r. \\boxed{2}", "r. \\boxed{1, 2}"]
    qas = call(qas_reward, comps, **kw)
    assert qas == pytest.approx([2 / 3, 0.0, (2 / 3) / (1 + D3)])
    assert call(pas_reward, comps, **kw) == pytest.approx([0.9, 0.2, (0.9 + 0.2 * D3) / (1 + D3)])
    # no target attributes: QAS is 0 whatever the ranking
    assert call(qas_reward, comps[:1], target_attributes=[[]], candidate_attributes=[cattrs]) == [0.0]


def test_discounted_mean():
    assert discounted_mean([1.0, 0.0, 1.0]) == pytest.approx((1 + 0.5) / (1 + D3 + 0.5))
    assert discounted_mean([0.3] * 15, k=10) == pytest.approx(0.3)
    assert discounted_mean([]) == 0.0


def test_format_reward_and_log_metric():
    comps = ["I compared them. \\boxed{3, 1}", "\\boxed{3, 1}", "no answer at all", "why \\boxed{25}"]
    logged = {}
    out = format_reward([None] * 4, comps, log_metric=lambda k, v: logged.__setitem__(k, v), **columns(4))
    assert out == [1.0, 0.5, 0.0, 0.0]
    assert logged["rerec/format_valid"] == 0.5
    assert logged["rerec/malformed/no-answer"] == 0.25
    assert logged["rerec/malformed/out-of-range"] == 0.25
    assert logged["rerec/malformed/empty-box"] == 0.0
    assert logged["rerec/no_reasoning"] == 0.25
    assert set(logged) == {"rerec/format_valid", "rerec/no_reasoning"} | {
        f"rerec/malformed/{s}" for s in rerec.STATUSES[1:]}
    # without log_metric (and with TRL's other kwargs) it works the same
    assert format_reward(None, comps, trainer_state=None, completion_ids=[[1]] * 4, **columns(4)) == out


def test_combined_reward_is_the_weighted_sum():
    cattrs = [["Crime"] if n % 2 else [] for n in range(N)]
    pas = [n / N for n in range(N)]
    comps = ["Because. \\boxed{5, 2, 4}", "\\boxed{2, 5}", "nothing", "So \\boxed{1, 2, 3, 4, 5, 6, 7}"]
    kw = {"candidate_attributes": [cattrs] * 4, "candidate_pas": [pas] * 4}
    parts = [call(f, comps, **kw) for f in (format_reward, ndcg_reward, qas_reward, pas_reward)]
    expected = [f + n + rerec.W1 * q + rerec.W2 * p for f, n, q, p in zip(*parts)]
    assert call(rerec_reward, comps, **kw) == pytest.approx(expected)
    assert expected[0] > expected[1] > expected[2] == 0.0
    custom = make_rerec_reward(k=3, w1=2.0, w2=0.0, format_weight=0.5)
    parts3 = [call(f, comps, **kw) for f in (format_reward, ndcg_reward, qas_reward)]
    parts3[1] = call(ndcg_reward, comps, k=3, **kw)
    parts3[2] = call(qas_reward, comps, k=3, **kw)
    assert call(custom, comps, **kw) == pytest.approx([0.5 * f + n + 2 * q for f, n, q in zip(*parts3)])
    assert rerec_reward.__name__ == custom.__name__ == "rerec_reward"
    logged = []
    call(rerec_reward, comps, log_metric=lambda k, v: logged.append((k, v)), **kw)
    assert ("rerec/format_valid", 0.75) in logged


def test_component_rewards_match_the_functions():
    comps = ["Because. \\boxed{5, 2, 4}", "\\boxed{2, 5}"]
    fns = make_component_rewards(k=2)
    assert [f.__name__ for f in fns] == ["format", "ndcg", "qas", "pas"]
    assert call(fns[0], comps) == call(format_reward, comps)
    assert call(fns[1], comps) == pytest.approx([1.0, D3])  # target at rank 1, then at rank 2 (k=2)


def test_alignment_k_scores_the_top_items_only():
    cattrs = [[] for _ in range(N)]
    cattrs[4] = ["Crime", "Thriller", "brand:Acme"]  # number 5: the target
    cattrs[0] = ["Crime"]  # number 1: shares 1 of 3
    pas = [0.5] * N
    pas[4], pas[0] = 1.0, 0.8
    kw = {"candidate_attributes": [cattrs] * 2, "candidate_pas": [pas] * 2}
    comps = ["r. \\boxed{5, 1, 2}", "r. \\boxed{5, 2, 1}"]  # same top item, different tails
    top1 = make_component_rewards(k=10, alignment_k=1)
    assert call(top1[1], comps) == pytest.approx([1.0, 1.0])  # NDCG keeps k=10
    assert call(top1[2], comps, **kw) == pytest.approx([1.0, 1.0])  # the tail no longer counts
    assert call(top1[3], comps, **kw) == pytest.approx([1.0, 1.0])
    deep = make_component_rewards(k=10)  # default: the discounted top-10 mean, so the tail counts
    w = [1.0, D3, 0.5]
    assert call(deep[2], comps, **kw) == pytest.approx([(1 + D3 / 3) / sum(w), (1 + 0.5 / 3) / sum(w)])
    assert call(deep[3], comps, **kw) == pytest.approx([(1 + 0.8 * D3 + 0.25) / sum(w),
                                                        (1 + 0.5 * D3 + 0.4) / sum(w)])
    full1 = make_rerec_reward(alignment_k=1)
    assert call(full1, comps, **kw) == pytest.approx([1 + 1 + rerec.W1 + rerec.W2] * 2)
    assert "QAS@1" in full1.__doc__


def test_conversational_completions_score_like_strings():
    texts = ["Because. \\boxed{5, 2}", "no box", "\\boxed{1, 5}"]
    convo = [[{"role": "assistant", "content": t}] for t in texts]
    for fn in (format_reward, ndcg_reward, qas_reward, pas_reward, rerec_reward):
        assert call(fn, convo) == call(fn, texts)
    # content given as parts, and an empty message list
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": texts[0]}]}], []]
    assert call(format_reward, parts) == [1.0, 0.0]


MALFORMED = [
    "", None, "\\boxed{", "\\boxed{}", "\\boxed{a, b}", "\\boxed{0}", "\\boxed{21}", "\\boxed{-3}",
    "\\boxed{1.5}", "\\boxed{3 4 x}", "\\boxed{{{{", "}}}}\\boxed}", "\\boxed{\\boxed{\\boxed{", "\\boxed{" * 5000,
    "word " * 200_000, "x" * 1_000_000 + "\\boxed{1", "\\boxed{" + "1, " * 100_000 + "}",
    "\\boxed{" + "9" * 20_000 + "}", "\\boxed{１٢३}", "🙂 \\boxed{🙂}", "\x00\\boxed{\x00}", "\\boxed{NaN}",
    "\\boxed{inf}", 12345, ["not a message"], [{"role": "assistant"}], [{"role": "assistant", "content": None}],
    {"content": 5}, "\\boxed{2, 2, 2}", "\ud800 lone surrogate \\boxed{1",
]


def test_malformed_completions_never_raise():
    for fn in (format_reward, ndcg_reward, qas_reward, pas_reward, rerec_reward, *make_component_rewards()):
        out = call(fn, MALFORMED)
        assert len(out) == len(MALFORMED) and all(isinstance(v, float) and math.isfinite(v) for v in out)
    # none earns ranking credit ("\boxed{1, 1, ...}" is a duplicate, "\boxed{１٢३}" reads as 123: out of range)
    assert call(rerec_reward, MALFORMED) == [0.0] * len(MALFORMED)
    for t in MALFORMED:
        segs = reasoning_segments(t, CANDS, {4}, N)
        text = rerec.completion_text(t)
        assert "".join(text[s.start:s.end] for s in segs) == text


def test_random_garbage_never_raises():
    rng = random.Random(0)
    alphabet = "\\boxed{}[]#,;0123456789 \n.é漢🙂item"
    comps = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))) for _ in range(300)]
    out = call(rerec_reward, comps)
    assert all(math.isfinite(v) for v in out)
    for t in comps:
        segs = reasoning_segments(t, [f"Title {n}" for n in range(1, N + 1)], {4}, N)
        assert "".join(t[s.start:s.end] for s in segs) == t
        assert all(s.label in rerec.SEGMENT_LABELS for s in segs)


def test_missing_column_is_a_setup_error():
    with pytest.raises(LlmrecError, match="candidate_pas"):
        pas_reward(None, ["\\boxed{1}"], candidates=[CANDS])


# ---------------------------------------------------------------------------------------------
# Reasoning segments


def test_reasoning_segments_hand_made():
    titles = ["Star Wars (1977)", "Star Trek: The Wrath of Khan (1982)", "Heat (1995)", "It (1990)", "Kolya"]
    text = ("The user loves sci-fi like L.A. Confidential fans do. "
            "STAR WARS is the obvious pick!\n"
            "1. Star Trek: The Wrath of Khan is weaker.\n"
            "Item 3 is a thriller. [9] is not a candidate.\n"
            "Both #2 and item 1 are space films; it is fine.\n"
            "\\boxed{1, 2, 3}")
    segs = reasoning_segments(text, titles, {0}, 5)
    got = [(text[s.start:s.end], s.label) for s in segs]
    assert got == [
        ("The user loves sci-fi like L.A. Confidential fans do. ", "ok"),
        ("STAR WARS is the obvious pick!\n", "ok"),  # names the target by title
        ("1. Star Trek: The Wrath of Khan is weaker.\n", "ok"),  # "1." at line start names the target
        ("Item 3 is a thriller. ", "wrong-item"),
        ("[9] is not a candidate.\n", "unknown-item"),
        ("Both #2 and item 1 are space films; it is fine.\n", "ok"),  # names the target too ("it": no match)
        ("\\boxed{1, 2, 3}", "ok"),
    ]
    assert segs[0] == Segment(0, len(got[0][0]), "ok")
    # a title by its distinctive prefix, case-insensitive; a non-target only
    segs = reasoning_segments("I'd go with star trek: the wrath. \\boxed{2}", titles, {0}, 5)
    assert [s.label for s in segs] == ["wrong-item", "ok"]


def test_reasoning_segments_above_target_rule_spares_the_rankings_tail():
    text = ("The user asks for Nail Tools: [1] Star Wars. It fits. "
            "Candidates 3, 4 share part of the request, so they come next. "
            "Item 5 would also do. \\boxed{1, 3, 4}")

    def labels(t, targets, rule):
        return [s.label for s in reasoning_segments(t, CANDS, targets, 5, wrong_item_rule=rule)]

    assert labels(text, {0}, "any-non-target") == ["ok", "ok", "wrong-item", "wrong-item", "ok"]
    # 3 and 4 come after the target: the tail's explanation is fine; 5 is not ranked, so still "wrong-item"
    assert labels(text, {0}, "above-target") == ["ok", "ok", "ok", "wrong-item", "ok"]
    # target 3 ranked second: "[1]", placed above it, argues for a wrong item ("Candidates 3, 4" names the target)
    assert labels(text, {2}, "above-target") == ["wrong-item", "ok", "ok", "wrong-item", "ok"]
    # the target not ranked, or a malformed box: nothing is below a target, so the rules agree
    for t, targets in ((text, {4}), (text.replace("1, 3, 4}", "1, 3, 3}"), {0})):
        assert labels(t, targets, "above-target") == labels(t, targets, "any-non-target")
    with pytest.raises(LlmrecError, match="wrong_item_rule"):
        reasoning_segments(text, CANDS, {0}, 5, wrong_item_rule="below")


def test_reasoning_segments_top_item_box_rule_blames_a_box_that_puts_a_non_target_first():
    right_reasoning = "The user asks for Nail Tools: [1] Star Wars. "

    def labels(box, targets, rule):
        return [s.label for s in reasoning_segments(right_reasoning + box, CANDS, targets, 5, box_rule=rule)]

    # the reasoning names the target, the box puts item 3 first: only "top-item" blames the box
    assert labels("\\boxed{3, 1, 4}", {0}, "format") == ["ok", "ok"]
    assert labels("\\boxed{3, 1, 4}", {0}, "top-item") == ["ok", "wrong-item"]
    assert labels("\\boxed{1, 3, 4}", {0}, "top-item") == ["ok", "ok"]
    assert labels("\\boxed{3, 1, 4}", {0, 2}, "top-item") == ["ok", "ok"]  # any target first will do
    # malformed boxes keep their own labels under both rules
    assert labels("\\boxed{3, 3}", {0}, "top-item") == ["ok", "format"]
    assert labels("\\boxed{9}", {0}, "top-item") == ["ok", "unknown-item"]
    with pytest.raises(LlmrecError, match="box_rule"):
        reasoning_segments(right_reasoning, CANDS, {0}, 5, box_rule="first")


def test_reasoning_segments_box_labels():
    assert [s.label for s in reasoning_segments("Hmm. \\boxed{7}", CANDS, {0}, 5)] == ["ok", "unknown-item"]
    assert [s.label for s in reasoning_segments("Hmm. \\boxed{2, 2}", CANDS, {0}, 5)] == ["ok", "format"]
    segs = reasoning_segments("Hmm. \\boxed{2, 1", CANDS, {0}, 5)  # truncated box: to the end of the text
    assert [(s.start, s.end, s.label) for s in segs] == [(0, 5, "ok"), (5, 16, "format")]
    assert reasoning_segments("", CANDS, {0}, 5) == []
    convo = [{"role": "assistant", "content": "Item 2 fits. \\boxed{2}"}]
    assert [s.label for s in reasoning_segments(convo, CANDS, {0}, 5)] == ["wrong-item", "ok"]


# ---------------------------------------------------------------------------------------------
# TRL's loading of reward functions by dotted path


def test_trl_grpo_cli_resolves_the_dotted_path(monkeypatch):
    """Runs TRL's own ``trl grpo`` main() up to the trainer, capturing the reward functions it resolved."""
    import sys
    from types import SimpleNamespace

    import datasets
    import trl
    from trl.scripts import grpo

    class Captured(Exception):
        pass

    def fake_trainer(**kwargs):
        raise Captured(kwargs["reward_funcs"])

    monkeypatch.setattr(sys, "path", list(sys.path))  # main() inserts the cwd
    monkeypatch.setattr(trl, "GRPOTrainer", fake_trainer)
    monkeypatch.setattr(trl, "get_quantization_config", lambda m: None)
    monkeypatch.setattr(trl, "get_peft_config", lambda m: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: {"train": []})
    script = SimpleNamespace(reward_model_name_or_path=None, dataset_name="x", dataset_config=None,
                             dataset_streaming=False, dataset_train_split="train", dataset_test_split="test",
                             reward_funcs=["llmrec.rewards.rerec.rerec_reward", "llmrec.rewards.rerec.format_reward"])
    training = SimpleNamespace(trust_remote_code=False, model_init_kwargs=None, eval_strategy="no",
                               resume_from_checkpoint=None)
    model = SimpleNamespace(model_revision="main", attn_implementation=None, dtype=None, model_name_or_path="m")
    with pytest.raises(Captured) as e:
        grpo.main(script, training, model, SimpleNamespace(datasets=None))
    assert e.value.args[0] == [rerec_reward, format_reward]
