"""The pieces llmrec adds to TRL's GRPO: reasoning-aware token advantages, the online curriculum and the shaping
gate."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmrec.training.curriculum import CurriculumRepeatSampler, CurriculumScheduler
from llmrec.training.reasoning_advantages import (
    bad_token_mask,
    group_token_advantages,
    penalised,
    token_advantages,
)
from llmrec.training.shaping_gate import gate_shaping


def _grpo(rewards, g):
    r = rewards.view(-1, g)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).flatten()


def test_without_bad_segments_it_is_grpo():
    rewards = torch.tensor([1.0, 0.2, 0.7, 0.0, 2.0, 2.5, 1.5, 0.5])
    good, bad = group_token_advantages(rewards, torch.zeros(8), num_generations=4, factor=0.5)
    assert torch.allclose(good, _grpo(rewards, 4), atol=1e-6)
    r = rewards.view(-1, 4)
    expected_bad = (penalised(r, 0.5) - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)
    assert torch.allclose(bad, expected_bad.flatten(), atol=1e-6)  # what a bad token would get


def test_hand_computed_group_with_a_bad_half():
    # rollout 0: reward 1, half its tokens bad (factor 0.5 -> they earn 0.5); rollout 1: reward 0
    good, bad = group_token_advantages(torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0]), 2, factor=0.5)
    mean = (0.5 * 1.0 + 0.5 * 0.5 + 0.0) / 2  # 0.375, each rollout weighs one
    var = (0.5 * (1 - mean) ** 2 + 0.5 * (0.5 - mean) ** 2 + (0 - mean) ** 2) / (2 - 1)
    std = math.sqrt(var) + 1e-4
    assert good.tolist() == pytest.approx([(1 - mean) / std, (0 - mean) / std], abs=1e-6)
    assert bad[0].item() == pytest.approx((0.5 - mean) / std, abs=1e-6)
    assert bad[0] < good[0]  # the bad segment's tokens are pushed up less


def test_advantage_space_blames_the_bad_tokens_of_a_zero_reward_rollout():
    # a hit (2), a malformed answer (0, its box bad), two valid misses (1, 1); factor 0.5
    rewards, share = torch.tensor([2.0, 0.0, 1.0, 1.0]), torch.tensor([0.0, 0.2, 0.0, 0.0])
    std = math.sqrt((1 + 1 + 0 + 0) / 3) + 1e-4  # mean 1, unbiased
    good, bad = group_token_advantages(rewards, share, 4, factor=0.5, space="advantage")
    assert good.tolist() == pytest.approx([1 / std, -1 / std, 0.0, 0.0], abs=1e-6)  # GRPO's advantages
    assert bad.tolist() == pytest.approx([0.5 / std, -1.5 / std, 0.0, 0.0], abs=1e-6)  # A - 0.5|A|
    # in reward space the zero reward cannot be scaled: its box and its reasoning get one advantage
    good_r, bad_r = group_token_advantages(rewards, share, 4, factor=0.5)
    assert bad_r[1].item() == pytest.approx(good_r[1].item())
    with pytest.raises(ValueError, match="space must be one of"):
        group_token_advantages(rewards, share, 4, factor=0.5, space="tokens")


def test_penalty_moves_negative_rewards_down_too():
    assert penalised(torch.tensor([2.0, -2.0, 0.0]), 0.25).tolist() == [0.5, -3.5, 0.0]


def test_unscorable_rollouts_get_zero_advantage():
    good, bad = group_token_advantages(torch.tensor([1.0, float("nan"), 0.0, 0.5]), torch.zeros(4), 4, 0.5)
    assert good[1] == 0 and bad[1] == 0 and torch.isfinite(good).all()


def test_token_advantages_pick_per_token():
    adv = token_advantages(torch.tensor([1.0, -1.0]), torch.tensor([0.25, -2.0]),
                           torch.tensor([[False, True, False], [True, True, False]]))
    assert adv.tolist() == [[1.0, 0.25, 1.0], [-2.0, -2.0, -1.0]]


def test_shaping_gate_keeps_shaping_only_where_ndcg_is_flat():
    # columns: format, ndcg, qas; groups of 2 rollouts
    nan = float("nan")
    rpf = torch.tensor([
        [1.0, 1.0, 0.6], [1.0, 0.0, 0.4],    # NDCG separates: shaping zeroed
        [1.0, 0.0, 0.3], [0.0, 0.0, 0.0],    # NDCG flat (both miss): shaping kept
        [1.0, 0.5, 0.2], [nan, 0.5, nan],    # flat with a NaN elsewhere: kept, NaN stays NaN
        [0.5, nan, 0.1], [1.0, 0.25, 0.9],   # one scored NDCG: no spread, kept
    ])
    gated, share = gate_shaping(rpf, anchor_col=1, num_generations=2)
    expected = rpf.clone()
    expected[0:2, [0, 2]] = 0.0
    assert torch.equal(torch.nan_to_num(gated, nan=-1.0), torch.nan_to_num(expected, nan=-1.0))
    assert share == 0.25
    # the summed reward of the gated group is NDCG alone: the rollout that missed the target now earns nothing
    weights = torch.tensor([1.0, 1.0, 0.5])
    assert (gated[:2] * weights).nansum(1).tolist() == [1.0, 0.0]
    assert (rpf[:2] * weights).nansum(1).tolist() == pytest.approx([2.3, 1.2])


def test_shaping_gate_checks_the_group_layout():
    with pytest.raises(ValueError, match="groups of 4"):
        gate_shaping(torch.zeros(6, 3), 1, 4)


class _CharTokenizer:
    """One token per character, so offsets are obvious."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(i) for i in ids)


def test_bad_token_mask_follows_char_spans():
    text = "good. bad one. \\boxed{1}"
    spans = [(0, 5, False), (5, 14, True), (14, len(text), False)]
    mask = bad_token_mask(_CharTokenizer(), [ord(c) for c in text], spans)
    assert "".join(c for c, m in zip(text, mask) if m) == " bad one."


def test_bad_token_mask_with_a_real_tokenizer(tiny_backbone):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    text = "These strings fit. Item 3 is a tuner, wrong. So \\boxed{1, 2}"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    start = text.index("Item 3")
    end = text.index("So")
    mask = bad_token_mask(tok, ids, [(0, start, False), (start, end, True), (end, len(text), False)])
    bad_text = tok.decode([i for i, m in zip(ids, mask) if m])
    assert "Item 3 is a tuner" in bad_text and "strings" not in bad_text and "boxed" not in bad_text


# ---------------------------------------------------------------------------- curriculum
def test_curriculum_orders_easy_to_hard_and_drops_trivial(tmp_path):
    keys = [f"t{i}" for i in range(6)]
    sched = CurriculumScheduler(keys, drop_below=0.05, seed=0, log_path=tmp_path / "curriculum.jsonl")
    first = sched.next_order(6)
    assert sorted(first) == list(range(6))
    # NDCG per rollout (2 rollouts each): t0 trivial (1.0), t1 easy, t2 hard, t3 medium, t4 not seen, t5 hard
    sched.observe(["t0", "t0", "t1", "t1", "t2", "t2", "t3", "t3", "t5", "t5"],
                  [1.0, 1.0, 0.9, 0.7, 0.0, 0.1, 0.5, 0.6, 0.0, float("nan")])
    order = sched.next_order(6)
    assert len(order) == 6 and 0 not in order  # trivial task dropped, pass refilled to full length
    assert order[:5] == [1, 3, 4, 2, 5] or order[:5] == [1, 3, 4, 5, 2]  # easy -> hard; unseen counts as 0.5
    assert order[5] == order[0]  # refilled by cycling through the order
    assert sched.difficulty["t1"] == pytest.approx(0.2) and sched.difficulty["t5"] == 1.0
    log = [json.loads(line) for line in (tmp_path / "curriculum.jsonl").read_text().splitlines()]
    assert [r["pass"] for r in log] == [0, 1] and log[1]["dropped_total"] == 1 and log[1]["first"][0][0] == "t1"


def test_curriculum_keeps_training_when_everything_is_trivial():
    sched = CurriculumScheduler(["a", "b"], drop_below=0.05)
    sched.next_order(2)
    sched.observe(["a", "b"], [1.0, 1.0])
    assert sorted(sched.next_order(2)) == [0, 1]


def test_curriculum_state_round_trip_replays_the_pass_in_progress(tmp_path):
    keys = [f"t{i}" for i in range(4)]
    a = CurriculumScheduler(keys, seed=3)
    a.next_order(4)
    a.observe(["t1", "t2"], [0.9, 0.1])
    in_progress = a.next_order(4)
    a.observe(["t3"], [0.2])
    a.save(tmp_path)
    b = CurriculumScheduler(keys, seed=3)
    assert b.load(tmp_path)
    assert b.next_order(4) == in_progress  # the resumed run replays the same pass
    a.observe([], [])
    assert b.next_order(4) == a.next_order(4)  # and continues exactly as the uninterrupted one


def test_curriculum_keeps_trl_order_until_difficulty_separates_tasks():
    from trl.trainer.grpo_trainer import RepeatSampler

    n, g, bs = 8, 2, 2
    trl = RepeatSampler(list(range(n)), mini_repeat_count=g, batch_size=bs, seed=5)
    sched = CurriculumScheduler([f"t{i}" for i in range(n)], seed=5)
    ours = CurriculumRepeatSampler(sched, n, mini_repeat_count=g, batch_size=bs)
    # two passes with nothing observed: TRL's first and second epoch, prompt for prompt
    assert list(ours) == list(trl)
    assert list(ours) == list(trl)
    # the third pass: t0 trivial (dropped), t1 easy (first), the rest unseen and tied, so in TRL's third order
    sched.observe(["t0", "t1"], [1.0, 0.9])
    third = torch.randperm(n, generator=trl.generator).tolist()
    assert sched.next_order(n) == [1] + [i for i in third if i not in (0, 1)] + [1]


def test_sampler_has_trl_repeat_sampler_layout():
    from trl.trainer.grpo_trainer import RepeatSampler

    n, g, bs, rep = 6, 2, 3, 2
    trl_layout = list(RepeatSampler(list(range(n)), mini_repeat_count=g, batch_size=bs, repeat_count=rep, shuffle=False))

    class Fixed(CurriculumScheduler):
        def next_order(self, k):
            return list(range(k))

    ours = CurriculumRepeatSampler(Fixed([str(i) for i in range(n)]), n, mini_repeat_count=g, batch_size=bs,
                                   repeat_count=rep)
    assert list(ours) == trl_layout and len(ours) == len(trl_layout)
