"""TRL's ``GRPOTrainer`` plus what ReRec needs from it: reasoning-aware token advantages, an online curriculum
and, as an option, shaping rewards gated to the groups where the ranking reward is flat. Everything else
(generation, rewards, loss, PEFT, accelerate, checkpoints) is TRL's.

Hooks used (TRL 1.x): ``_calculate_rewards`` (to see the gathered per-function rewards), the output of
``_generate_and_score_completions`` (``advantages`` may be (B, T): TRL's loss accepts token-level
advantages from subclasses), ``_get_train_sampler`` and ``_save_checkpoint``.
"""

from __future__ import annotations

import json
import os

import torch
from accelerate.utils import gather, gather_object
from trl import GRPOTrainer

from llmrec.training.curriculum import CurriculumRepeatSampler, CurriculumScheduler
from llmrec.training.reasoning_advantages import (
    PENALTY_SPACES,
    SegmentFn,
    bad_token_mask,
    group_token_advantages,
    token_advantages,
)
from llmrec.training.shaping_gate import gate_shaping


def completion_text(completion) -> str:
    """TRL hands rewards either strings or conversational completions ([{"role", "content"}])."""
    if isinstance(completion, list):
        return "".join(str(m.get("content") or "") for m in completion if isinstance(m, dict))
    return completion if isinstance(completion, str) else ""


class LlmrecGRPOTrainer(GRPOTrainer):
    def __init__(self, *args, segment_fn: SegmentFn | None = None, bad_segment_factor: float = 0.5,
                 bad_segment_penalty: str = "reward",
                 curriculum: CurriculumScheduler | None = None, curriculum_reward: str = "ndcg",
                 curriculum_key: str = "task_id", shaping_anchor: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.segment_fn = segment_fn
        self.bad_segment_factor = bad_segment_factor
        self.bad_segment_penalty = bad_segment_penalty
        self.curriculum = curriculum
        self.curriculum_reward = curriculum_reward
        self.curriculum_key = curriculum_key
        self.shaping_anchor = shaping_anchor
        if segment_fn is not None:
            if self.scale_rewards == "batch" or self.multi_objective_aggregation != "sum_then_normalize":
                raise ValueError("reasoning-aware advantages are group-normalised: use scale_rewards 'group' or "
                                 "'none' and multi_objective_aggregation 'sum_then_normalize'")
            if not 0.0 <= bad_segment_factor <= 1.0:
                raise ValueError(f"bad_segment_factor must be in [0, 1], got {bad_segment_factor}")
            if bad_segment_penalty not in PENALTY_SPACES:
                raise ValueError(f"bad_segment_penalty must be one of {PENALTY_SPACES}, got {bad_segment_penalty!r}")
        if curriculum is not None and curriculum_reward not in self.reward_func_names:
            raise ValueError(f"curriculum_reward {curriculum_reward!r} is not one of the reward functions "
                             f"{self.reward_func_names}")
        if shaping_anchor is not None and shaping_anchor not in self.reward_func_names:
            raise ValueError(f"shaping_anchor {shaping_anchor!r} is not one of the reward functions "
                             f"{self.reward_func_names}")
        self._last_scored = None

    # ------------------------------------------------------------------ curriculum
    def _get_train_sampler(self, dataset=None):
        if self.curriculum is None:
            return super()._get_train_sampler(dataset)
        dataset = self.train_dataset if dataset is None else dataset
        return CurriculumRepeatSampler(
            self.curriculum, len(dataset), mini_repeat_count=self.num_generations,
            batch_size=self.args.generation_batch_size // self.num_generations,
            repeat_count=self.num_iterations * self.args.steps_per_generation)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self.shaping_anchor is not None:
            mode = "train" if self.model.training else "eval"
            group = self.num_generations if mode == "train" else self.num_generations_eval
            rewards_per_func, gated = gate_shaping(
                rewards_per_func, self.reward_func_names.index(self.shaping_anchor), group)
            self._metrics[mode]["rerec/shaping_gated"].append(gated)
        self._last_scored = (inputs, completions)
        if self.curriculum is not None and self.model.training:
            keys = gather_object([str(x[self.curriculum_key]) for x in inputs])
            col = self.reward_func_names.index(self.curriculum_reward)
            self.curriculum.observe(keys, rewards_per_func[:, col].tolist())
        self._last_rewards_per_func = rewards_per_func
        return rewards_per_func

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.curriculum is not None and self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self.args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            state = self.curriculum.state_dict()
            epoch = self.state.epoch or 0.0
            if abs(epoch - round(epoch)) < 1e-6:  # saved at the end of a pass: nothing to replay
                state["current_order"] = None
            with open(os.path.join(folder, "curriculum_state.json"), "w") as f:
                json.dump(state, f)

    # ------------------------------------------------------------------ reasoning-aware advantages
    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.segment_fn is None or not self.model.training:
            return output
        local_inputs, completions = self._last_scored
        ids, mask = output["completion_ids"], output["completion_mask"].bool()
        bad = torch.zeros_like(mask)
        for i, (example, completion) in enumerate(zip(local_inputs, completions)):
            spans = self.segment_fn(completion_text(completion), example)
            if not any(is_bad for _, _, is_bad in spans):
                continue
            tokens = ids[i][mask[i]].tolist()
            row = torch.tensor(bad_token_mask(self.processing_class, tokens, spans), dtype=torch.bool)
            bad[i, mask[i].nonzero(as_tuple=True)[0]] = row.to(bad.device)
        share = bad.sum(dim=1).float() / mask.sum(dim=1).clamp(min=1).float()
        all_share = gather(share)
        rpf = self._last_rewards_per_func
        rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
        rewards[torch.isnan(rpf).all(dim=1)] = torch.nan
        good_adv, bad_adv = group_token_advantages(
            rewards, all_share.to(rewards.device), self.num_generations, self.bad_segment_factor,
            scale=self.scale_rewards != "none", space=self.bad_segment_penalty)
        n = len(local_inputs)
        local = slice(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n)
        output["advantages"] = token_advantages(good_adv[local], bad_adv[local], bad).to(output["advantages"].dtype)
        self._metrics["train"]["reasoning/bad_token_share"].append(all_share.mean().item())
        self._metrics["train"]["reasoning/rollouts_with_bad_segments"].append((all_share > 0).float().mean().item())
        return output
