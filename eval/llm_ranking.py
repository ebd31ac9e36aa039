"""Rank candidate items with a causal LM by the likelihood of each candidate's title.

Scoring every candidate as a completion of the same prompt is the standard way to use an LLM as a
ranker over a closed candidate set (no parsing, no hallucinated items). We length-normalise (mean
token log-probability) so long titles are not penalised for their length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from llmrec.errors import LlmrecError


def candidate_scores(model, tokenizer, prompts: Sequence[list[dict]], candidates: Sequence[Sequence[str]],
                     progress: bool = True) -> list[np.ndarray]:
    """Mean log p(candidate text + end-of-turn | chat prompt) for every candidate of every prompt.

    The prompt is run once per case and its KV cache shared by all the case's candidates, so the
    cost is about one prompt plus the candidates' few tokens, not one full sequence per candidate.

    Args:
        prompts: chat messages per case (the assistant turn is what is scored).
        candidates: candidate texts per case.
    Returns:
        one float array [len(candidates[i])] per case; higher is more likely.
    """
    import torch
    from tqdm.auto import tqdm

    if len(prompts) != len(candidates):
        raise LlmrecError(f"{len(prompts)} prompts but {len(candidates)} candidate lists")
    end = tokenizer.eos_token or ""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    device = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for msgs, cands in tqdm(list(zip(prompts, candidates)), desc="scoring candidates", disable=not progress):
            if not cands:
                out.append(np.zeros(0))
                continue
            prefix = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
            p_ids = torch.tensor([tokenizer(prefix, add_special_tokens=False).input_ids], device=device)
            a_ids = [tokenizer(c + end, add_special_tokens=False).input_ids for c in cands]
            first = model(input_ids=p_ids, use_cache=True)
            first_logp = torch.log_softmax(first.logits[0, -1].float(), -1)  # [vocab]
            cache = first.past_key_values
            cache.batch_repeat_interleave(len(cands))
            width = max(len(a) for a in a_ids)
            ids = torch.full((len(cands), width), pad_id, dtype=torch.long, device=device)
            amask = torch.zeros((len(cands), width), dtype=torch.long, device=device)
            for r, a in enumerate(a_ids):
                ids[r, :len(a)] = torch.tensor(a)
                amask[r, :len(a)] = 1
            # Right padding: padded positions come after every scored token, so they change nothing.
            mask = torch.cat([torch.ones((len(cands), p_ids.shape[1]), dtype=torch.long, device=device), amask], 1)
            logits = model(input_ids=ids, attention_mask=mask, past_key_values=cache).logits.float()
            logp = torch.log_softmax(logits[:, :-1], -1)  # [n, width-1, vocab]
            tok_lp = torch.cat([first_logp[ids[:, 0]].unsqueeze(1),
                                logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)], 1)  # [n, width]
            scores = (tok_lp * amask).sum(1) / amask.sum(1)
            out.append(scores.cpu().numpy().astype(np.float64))
    return out


def target_ranks(scores: Sequence[np.ndarray], candidates: Sequence[Sequence[str]],
                 targets: Sequence[str]) -> np.ndarray:
    """1-based rank of each case's target among its candidates (ties keep candidate order, as in rank_cases)."""
    out = np.empty(len(scores), dtype=np.int64)
    for r, (s, cands, t) in enumerate(zip(scores, candidates, targets)):
        order = np.argsort(-np.asarray(s), kind="stable")
        out[r] = int(np.flatnonzero(order == list(cands).index(t))[0]) + 1
    return out


def ndcg_at_k_of_ranks(ranks, k: int = 10) -> np.ndarray:
    """Per-case NDCG@k of a single relevant item at 1-based ``ranks`` (1 / log2(rank + 1), 0 below k)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def paired_comparison(a, b, seed: int = 0, n_resamples: int = 9999) -> dict:
    """Per-case scores ``a`` vs ``b`` on the same cases: mean difference a - b with scipy's 95% paired bootstrap
    interval (BCa), the Wilcoxon signed-rank p-value (two-sided; cases with no difference left out) and the
    counts of cases a wins, loses and ties. Spread over training seeds says nothing about this sampling error."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a - b
    out = {"n": len(d), "mean_diff": float(d.mean()), "wins": int((d > 0).sum()), "losses": int((d < 0).sum()),
           "ties": int((d == 0).sum()), "ci95": [float("nan"), float("nan")], "wilcoxon_p": float("nan")}
    if np.any(d != 0):
        ci = stats.bootstrap((d,), np.mean, n_resamples=n_resamples, confidence_level=0.95,
                             rng=np.random.default_rng(seed)).confidence_interval
        out["ci95"] = [float(ci.low), float(ci.high)]
        out["wilcoxon_p"] = float(stats.wilcoxon(d[d != 0]).pvalue)
    return out


def rank_cases(scores: Sequence[np.ndarray], candidates: Sequence[Sequence[str]], targets: Sequence[str],
               metrics: str = "hr@1,hr@5,ndcg@5,ndcg@10,mrr") -> dict[str, float]:
    """Ranking metrics of the held-out target among each case's candidates (trec_eval definitions)."""
    from llmrec.eval.ranking import evaluate_topk

    width = max(len(c) for c in candidates)
    topk = np.full((len(scores), width), -1, dtype=np.int64)
    pos = np.full(len(scores), -1, dtype=np.int64)
    for r, (s, cands, t) in enumerate(zip(scores, candidates, targets)):
        # Stable sort on -score: ties keep candidate order (candidates were shuffled by seed).
        topk[r, :len(cands)] = np.argsort(-np.asarray(s), kind="stable")
        pos[r] = list(cands).index(t)
    return {k: float(v) for k, v in evaluate_topk(topk, pos, metrics).metrics.items()}
