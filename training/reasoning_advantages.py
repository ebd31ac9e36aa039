"""Reasoning-aware advantage estimation (ReRec): token-level advantages from segment-level penalties.

A completion's reasoning is cut into segments (``llmrec.rewards.rerec.reasoning_segments``). Tokens of a bad
segment (it argues for a wrong item, names an item that is not a candidate, or breaks the answer format) earn
a reduced reward ``R - (1 - factor) * |R|`` instead of the completion's reward ``R``; the other tokens earn
``R``. Advantages are then normalised over the rollout group, each completion weighing as one rollout
(its tokens share its weight), so with no bad segment this is exactly GRPO's group-relative advantage.
That is the default (``space="reward"``); ``space="advantage"`` penalises GRPO's advantage instead
(``group_token_advantages``).

The group statistics need only each rollout's reward and its share of bad tokens, so multi-process runs
gather two numbers per rollout, not token arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

# (start_char, end_char, is_bad) spans of a completion's text
Spans = Sequence[tuple[int, int, bool]]


def token_char_ends(tokenizer, ids: Sequence[int]) -> list[int]:
    """For each token, the length of the decoded text up to and including it (same decoding as TRL's
    ``batch_decode(..., skip_special_tokens=True)``, so offsets match the completion text rewards saw)."""
    # Prefix decoding, not per-token decoding: byte-level BPE tokens can split a character, and only the
    # decoded prefix says where a token's text ends.
    return [len(tokenizer.decode(ids[: t + 1], skip_special_tokens=True)) for t in range(len(ids))]


def bad_token_mask(tokenizer, ids: Sequence[int], spans: Spans) -> list[bool]:
    """True for tokens whose text ends inside a bad span."""
    ends = token_char_ends(tokenizer, ids)
    bad = [(s, e) for s, e, is_bad in spans if is_bad]
    mask, prev = [], 0
    for end in ends:
        # a token covering [prev, end) is bad if it overlaps a bad span
        mask.append(end > prev and any(s < end and prev < e for s, e in bad))
        prev = end
    return mask


def penalised(rewards: torch.Tensor, factor: float) -> torch.Tensor:
    """The reward a bad segment's tokens earn: scaled towards zero by ``factor`` (also for negative rewards)."""
    return rewards - (1.0 - factor) * rewards.abs()


PENALTY_SPACES = ("reward", "advantage")


def group_token_advantages(rewards: torch.Tensor, bad_share: torch.Tensor, num_generations: int, factor: float,
                           scale: bool = True, eps: float = 1e-4,
                           space: str = "reward") -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages of the good and of the bad tokens of each rollout, normalised over its group.

    ``rewards`` and ``bad_share`` (share of a rollout's completion tokens that are bad) are flat, grouped by
    ``num_generations`` consecutive rollouts, as in TRL. NaN rewards (unscorable rollouts) get 0.

    ``space="reward"`` scales the bad tokens' reward (module docstring). ``space="advantage"`` takes GRPO's
    group-relative advantage ``A`` of the rollout and gives its bad tokens ``A - (1 - factor) * |A|``: less credit
    in a rollout that did better than its group, more blame in one that did worse. Why both: a rollout whose
    reward is 0 (every malformed answer) cannot be scaled down in reward space, so there its malformed box and
    its sound reasoning share one advantage; in advantage space the box takes more of the blame.
    """
    if space not in PENALTY_SPACES:
        raise ValueError(f"space must be one of {PENALTY_SPACES}, got {space!r}")
    if space == "advantage":
        adv = group_advantages(rewards, num_generations, scale=scale, eps=eps)
        return adv, penalised(adv, factor)
    r = rewards.view(-1, num_generations)
    b = bad_share.view(-1, num_generations).clamp(0, 1)
    rb = penalised(r, factor)
    valid = ~torch.isnan(r)
    w = valid.float()
    n = w.sum(dim=1, keepdim=True).clamp(min=1)
    r0, rb0 = torch.nan_to_num(r), torch.nan_to_num(rb)
    mean = (w * ((1 - b) * r0 + b * rb0)).sum(dim=1, keepdim=True) / n
    var = (w * ((1 - b) * (r0 - mean) ** 2 + b * (rb0 - mean) ** 2)).sum(dim=1, keepdim=True)
    var = var / (n - 1).clamp(min=1)  # unbiased, as TRL's nanstd
    good, bad = r0 - mean, rb0 - mean
    if scale:
        std = var.sqrt()
        good, bad = good / (std + eps), bad / (std + eps)
    good, bad = good * w, bad * w
    return good.flatten(), bad.flatten()


def group_advantages(rewards: torch.Tensor, num_generations: int, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO's group-relative advantages (TRL's: mean over the group, unbiased std), NaN rewards left out and
    given 0."""
    zeros = torch.zeros_like(rewards)
    return group_token_advantages(rewards, zeros, num_generations, factor=1.0, scale=scale, eps=eps)[0]


def token_advantages(good: torch.Tensor, bad: torch.Tensor, bad_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) advantages: each token gets its rollout's good or bad advantage."""
    return torch.where(bad_mask, bad.unsqueeze(1), good.unsqueeze(1))


SegmentFn = Callable[[str, dict], Spans]
