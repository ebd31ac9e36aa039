"""Next-item cases, SFT examples and LLM candidate scoring on the synthetic default data."""

from __future__ import annotations

import numpy as np
import pytest

from llmrec.recommend.next_item import NextItemTemplate, make_cases, sft_examples


@pytest.fixture(scope="module")
def split():
    from llmrec.data.splits import leave_one_out
    from llmrec.data.synthetic import make_synthetic

    return leave_one_out(make_synthetic(n_users=30, n_items=60, interactions_per_user=8, seed=1))


def test_cases_never_leak_the_target(split):
    cases = make_cases(split.train, split.test, n_negatives=9, seed=0)
    assert len(cases) == len(set(split.test.interactions["user_id"]))
    for c in cases:
        assert len(c.candidates) == 10 and len(set(c.candidates)) == 10 and c.target in c.candidates
        assert c.target not in {h["item_id"] for h in c.history}
    # with valid joined in, each history ends with the user's valid item (the standard test protocol)
    joined = make_cases([split.train, split.valid], split.test, n_negatives=9, seed=0)
    valid_item = dict(zip(split.valid.interactions["user_id"], split.valid.interactions["item_id"]))
    assert all(c.history[-1]["item_id"] == valid_item[c.user_id] for c in joined)
    assert all(len(j.history) == len(c.history) + 1 for j, c in zip(joined, cases))
    # deterministic by seed
    again = make_cases(split.train, split.test, n_negatives=9, seed=0)
    assert [c.candidates for c in again] == [c.candidates for c in cases]


def test_sft_examples_predict_the_last_train_item(split):
    ex = sft_examples(split.train, per_user=1)
    t = NextItemTemplate.load()
    assert ex[0]["prompt"][0] == {"role": "system", "content": t.system}
    assert ex[0]["prompt"][1]["content"].count("\n- ") <= t.max_history
    assert ex[0]["completion"][0]["role"] == "assistant"


def test_rank_cases_hand_computed():
    from llmrec.eval.llm_ranking import rank_cases

    scores = [np.array([0.1, 0.9, 0.5]), np.array([0.3, 0.2, 0.1])]
    cands = [["a", "b", "c"], ["x", "y", "z"]]
    m = rank_cases(scores, cands, ["c", "x"], "hr@1,mrr,ndcg@3")
    # case 1: target c at rank 2; case 2: target x at rank 1
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx((1 / 2 + 1) / 2)
    assert m["ndcg@3"] == pytest.approx((1 / np.log2(3) + 1) / 2)


def test_target_ranks_and_per_case_ndcg_agree_with_rank_cases():
    from llmrec.eval.llm_ranking import ndcg_at_k_of_ranks, rank_cases, target_ranks

    scores = [np.array([0.1, 0.9, 0.5]), np.array([0.3, 0.2, 0.1]), np.array([0.5, 0.5, 0.5])]
    cands = [["a", "b", "c"], ["x", "y", "z"], ["p", "q", "r"]]
    ranks = target_ranks(scores, cands, ["c", "x", "q"])
    assert ranks.tolist() == [2, 1, 2]  # a tie keeps the candidate order, as rank_cases does
    per_case = ndcg_at_k_of_ranks(ranks, k=10)
    assert per_case.tolist() == pytest.approx([1 / np.log2(3), 1.0, 1 / np.log2(3)])
    assert per_case.mean() == pytest.approx(rank_cases(scores, cands, ["c", "x", "q"], "ndcg@10")["ndcg@10"])
    assert ndcg_at_k_of_ranks([11, 10], k=10).tolist() == [0.0, pytest.approx(1 / np.log2(11))]


def test_paired_comparison_counts_and_intervals():
    from llmrec.eval.llm_ranking import paired_comparison

    rng = np.random.default_rng(0)
    b = rng.random(200)
    a = b + 0.1 + rng.normal(0, 0.05, 200)  # a is better on almost every case
    c = paired_comparison(a, b)
    assert c["n"] == 200 and c["wins"] + c["losses"] + c["ties"] == 200 and c["wins"] > 190
    assert c["mean_diff"] == pytest.approx(float(np.mean(a - b)))
    assert c["ci95"][0] < c["mean_diff"] < c["ci95"][1] and c["ci95"][0] > 0.08
    assert c["wilcoxon_p"] < 1e-10
    same = paired_comparison(b, b)
    assert same["ties"] == 200 and same["mean_diff"] == 0 and np.isnan(same["wilcoxon_p"])


def test_candidate_scores_match_a_direct_forward(tiny_backbone):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.eval.llm_ranking import candidate_scores

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    msgs = [[{"role": "user", "content": "guitar strings"}], [{"role": "user", "content": "tuner"}]]
    cands = [["great tone", "bad"], ["works fine for me", "ok"]]
    got = candidate_scores(model, tok, msgs, cands, progress=False)
    # reference: one unpadded forward per (prompt, candidate)
    for i in range(2):
        prefix = tok.apply_chat_template(msgs[i], add_generation_prompt=True, tokenize=False)
        for j, c in enumerate(cands[i]):
            p = tok(prefix, add_special_tokens=False).input_ids
            a = tok(c + tok.eos_token, add_special_tokens=False).input_ids
            ids = torch.tensor([p + a])
            with torch.no_grad():
                lp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            ref = lp[torch.arange(len(p) - 1, len(p) + len(a) - 1), torch.tensor(a)].mean().item()
            assert got[i][j] == pytest.approx(ref, abs=1e-4)
