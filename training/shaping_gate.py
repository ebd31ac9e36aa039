"""Reward shaping as a fallback: the shaping rewards count only in GRPO groups where the ranking reward is flat.

ReRec adds format, QAS and PAS to NDCG because NDCG alone is sparse: a group whose rollouts all miss the target
(or all hit it) has no NDCG spread and, after group normalisation, no gradient. In a group where NDCG already
separates the rollouts, the shaping terms change what is learned: a well-formed box that misses the target is
paid for its form and its items' attributes, so it can get a positive advantage beside the rollout that ranked
the target first (Amazon Beauty, docs/training.md: adding the format term alone to NDCG-only cost 0.19 NDCG@10).
With the gate, such groups train on NDCG alone, and groups without NDCG spread keep the shaped signal.

No library does this: TRL sums weighted reward columns for every group alike, so the gate edits the gathered
per-function rewards before TRL turns them into advantages (``LlmrecGRPOTrainer._calculate_rewards``).
"""

from __future__ import annotations

import torch


def gate_shaping(rewards_per_func: torch.Tensor, anchor_col: int, num_generations: int,
                 tol: float = 1e-6) -> tuple[torch.Tensor, float]:
    """(rewards with every column but ``anchor_col`` zeroed in the groups where the anchor has spread, share of
    groups gated). Rows are TRL's layout: ``num_generations`` consecutive rollouts per prompt. NaN (a reward
    function that did not score a row) is ignored for the spread and left as it is."""
    n, n_funcs = rewards_per_func.shape
    if n % num_generations:
        raise ValueError(f"{n} rows are not groups of {num_generations}")
    grouped = rewards_per_func.view(-1, num_generations, n_funcs)
    anchor = grouped[:, :, anchor_col]
    hi = torch.where(torch.isnan(anchor), -torch.inf, anchor).amax(dim=1)
    lo = torch.where(torch.isnan(anchor), torch.inf, anchor).amin(dim=1)
    spread = (hi - lo) > tol  # one scored row: hi == lo; none: hi - lo is -inf; either way no spread
    others = torch.ones(n_funcs, dtype=torch.bool, device=rewards_per_func.device)
    others[anchor_col] = False
    zero = spread[:, None, None] & others[None, None, :] & ~torch.isnan(grouped)
    gated = torch.where(zero, torch.zeros_like(grouped), grouped).view(n, n_funcs)
    return gated, spread.float().mean().item() if len(spread) else 0.0
