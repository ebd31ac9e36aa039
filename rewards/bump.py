"""BUMP reward: a profile is good when it identifies its own user's held-out interactions in the batch.

A TRL reward function (``fn(prompts, completions, **kwargs) -> list[float]``) over one generation
batch (several users x G rollouts each). Dataset columns ``user_id`` and ``heldout`` (list of
held-out interaction texts, from ``llmrec.training.bump_tasks``) arrive as kwargs. With a judge
scoring (query, doc) relatedness (``llmrec.rewards.judges``), each rollout r of user u gets:

(i) profile -> interactions: r's profile ranks ALL held-out texts of all distinct users in the batch;
    u's are the positives; NDCG over the full ranking (binary gains, ideal DCG over |positives|).
(ii) interactions -> profile: each held-out text of u ranks r's profile among the (non-empty)
    profiles of all other users' rollouts; single-positive NDCG = 1 / log2(1 + rank), averaged
    over u's held-out texts.

reward = alpha * (i) + (1 - alpha) * (ii).

Conventions (all deterministic):
- Ties in score count against the positive (a negative tied with it ranks first), so a degenerate
  judge or a copy of another profile earns nothing from a tie.
- No contrast, no reward: a direction scores 0 for a rollout when there is nothing to rank its
  positive against (no other user's held-out text for (i), no other user's non-empty profile for
  (ii)). A batch holding one user only therefore gives 0.0 everywhere (warned once per reward
  function): make sure a generation batch spans at least two prompts (users).
- Empty or malformed completions (None, "", non-text, whitespace) get 0, count in
  ``bump/empty_profile`` and are left out of every other rollout's candidate lists. Profiles
  longer than ``max_profile_chars`` are cut before judging. Nothing here raises on a completion.
- Metrics via TRL's ``log_metric`` kwarg: ``bump/empty_profile`` (share of the batch),
  ``bump/profile_to_items`` and ``bump/items_to_profile`` (means of (i) and (ii) over non-empty
  profiles).

NDCG comes from ``llmrec.eval.ranking.evaluate_topk`` (trec_eval's definition, the same code every
other ranking metric in llmrec uses): we only build the ranked lists here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

from llmrec.errors import LlmrecError

logger = logging.getLogger(__name__)

MAX_PROFILE_CHARS = 4000


def completion_text(completion) -> str:
    """The text of a completion: a string, or the assistant content of conversational messages; else ""."""
    try:
        if isinstance(completion, str):
            return completion
        if isinstance(completion, dict):
            content = completion.get("content")
            return content if isinstance(content, str) else ""
        if isinstance(completion, (list, tuple)):
            parts = [m.get("content") for m in completion if isinstance(m, dict)
                     and m.get("role", "assistant") == "assistant"]
            return "\n".join(p for p in parts if isinstance(p, str))
    except Exception:  # noqa: BLE001 - a reward must never fail on what the policy produced
        return ""
    return ""


def _ranking(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Candidate indices by score descending; on ties negatives come first (pessimistic for the positive)."""
    return np.lexsort((positive.astype(np.int8), -scores))


def _ndcg_rows(rankings: list[np.ndarray], positives: list[np.ndarray]) -> np.ndarray:
    """trec NDCG of each ranked list (candidate indices) against its positive indices (binary gains)."""
    from llmrec.eval.ranking import UserItems, evaluate_topk

    if not rankings:
        return np.zeros(0)
    width = max(len(r) for r in rankings)
    topk = np.full((len(rankings), width), -1, dtype=np.int64)
    for i, r in enumerate(rankings):
        topk[i, :len(r)] = r
    pos = UserItems.from_lists([sorted(int(x) for x in p) for p in positives])
    return evaluate_topk(topk, pos, "ndcg").per_query["ndcg"]


def bump_scores(profiles: Sequence[str], user_ids: Sequence[str], heldout: Sequence[Sequence[str]], judge,
                alpha: float = 0.5, max_profile_chars: int = MAX_PROFILE_CHARS) -> dict[str, np.ndarray]:
    """Per-rollout scores of both directions and the reward (see the module docstring).

    Returns ``{"reward", "profile_to_items", "items_to_profile", "empty"}``, arrays of ``len(profiles)``.
    """
    n = len(profiles)
    texts = [(p or "").strip()[:max_profile_chars] if isinstance(p, str) else "" for p in profiles]
    users = [str(u) for u in user_ids]
    empty = np.array([not t for t in texts], dtype=bool)
    p2i, i2p = np.zeros(n), np.zeros(n)

    # Documents: each distinct user's held-out texts, from the first row of that user.
    docs: list[str] = []
    doc_user: list[str] = []
    seen: set[str] = set()
    for u, held in zip(users, heldout):
        if u in seen:
            continue
        seen.add(u)
        for h in held if isinstance(held, (list, tuple)) else []:
            if isinstance(h, str) and h.strip():
                docs.append(h)
                doc_user.append(u)
    doc_user_arr = np.array(doc_user, dtype=object)
    valid = np.flatnonzero(~empty)
    if len(seen) < 2 or not len(valid) or not docs:
        return {"reward": np.zeros(n), "profile_to_items": p2i, "items_to_profile": i2p, "empty": empty}

    # Score each distinct profile text once (G rollouts of a prompt often coincide).
    uniq = list(dict.fromkeys(texts[i] for i in valid))
    col = {t: j for j, t in enumerate(uniq)}
    s_pd = judge.score_matrix(uniq, docs)  # [profiles, docs]
    s_dp = s_pd.T if getattr(judge, "symmetric", False) else judge.score_matrix(docs, uniq)  # [docs, profiles]
    s_pd = np.nan_to_num(np.asarray(s_pd, dtype=np.float64), nan=-np.inf)
    s_dp = np.nan_to_num(np.asarray(s_dp, dtype=np.float64), nan=-np.inf)

    # (i) one ranked list of all docs per rollout.
    rows, rankings, positives = [], [], []
    for r in valid:
        is_pos = doc_user_arr == users[r]
        if is_pos.any() and not is_pos.all():
            rows.append(r)
            rankings.append(_ranking(s_pd[col[texts[r]]], is_pos))
            positives.append(np.flatnonzero(is_pos))
    p2i[rows] = _ndcg_rows(rankings, positives)

    # (ii) per rollout and held-out doc of its user: its profile (index 0) against other users' profiles.
    rows, rankings, positives = [], [], []
    for r in valid:
        others = [j for j in valid if users[j] != users[r]]
        own_docs = np.flatnonzero(doc_user_arr == users[r])
        if not others or not len(own_docs):
            continue
        cand_cols = [col[texts[r]]] + [col[texts[j]] for j in others]
        is_pos = np.zeros(len(cand_cols), dtype=bool)
        is_pos[0] = True
        for d in own_docs:
            rows.append(r)
            rankings.append(_ranking(s_dp[d, cand_cols], is_pos))
            positives.append(np.array([0]))
    if rows:
        vals = _ndcg_rows(rankings, positives)
        rows_arr = np.array(rows)
        sums = np.bincount(rows_arr, weights=vals, minlength=n)
        counts = np.bincount(rows_arr, minlength=n)
        np.divide(sums, counts, out=i2p, where=counts > 0)

    reward = alpha * p2i + (1.0 - alpha) * i2p
    return {"reward": reward, "profile_to_items": p2i, "items_to_profile": i2p, "empty": empty}


def make_bump_reward(judge=None, alpha: float = 0.5, max_profile_chars: int = MAX_PROFILE_CHARS) -> Callable:
    """A TRL reward function (``__name__ == "bump_reward"``) scoring profiles with ``judge``.

    ``judge`` is an object with ``score_matrix`` or a zero-argument callable returning one (created on
    first use, so building the trainer does not load an encoder); ``None`` = the packaged MiniLM.
    """
    if not 0.0 <= alpha <= 1.0:
        raise LlmrecError(f"alpha must be in [0, 1], got {alpha}")
    state = {"judge": judge, "warned": False}

    def get_judge():
        j = state["judge"]
        if j is None:
            from llmrec.rewards.judges import SentenceTransformerJudge

            j = state["judge"] = SentenceTransformerJudge()
        elif not hasattr(j, "score_matrix") and callable(j):
            j = state["judge"] = j()
        return j

    def bump_reward(prompts, completions, **kwargs) -> list[float]:
        if "user_id" not in kwargs or "heldout" not in kwargs:
            raise LlmrecError("bump_reward needs the dataset columns 'user_id' and 'heldout' "
                              "(build the dataset with llmrec.training.bump_tasks)")
        user_ids, heldout = list(kwargs["user_id"]), list(kwargs["heldout"])
        n = len(completions)
        if len(user_ids) != n or len(heldout) != n:
            raise LlmrecError(f"bump_reward got {n} completions but {len(user_ids)} user ids and "
                              f"{len(heldout)} held-out lists")
        profiles = [completion_text(c) for c in completions]
        if len(set(map(str, user_ids))) < 2 and not state["warned"]:
            state["warned"] = True
            logger.warning("bump_reward: a generation batch holds a single user, so no profile can be contrasted "
                           "and every reward is 0.0; use a generation batch spanning at least two prompts")
        out = bump_scores(profiles, user_ids, heldout, get_judge(), alpha=alpha, max_profile_chars=max_profile_chars)
        log = kwargs.get("log_metric")
        if callable(log):
            ok = ~out["empty"]
            log("bump/empty_profile", float(out["empty"].mean()) if n else 0.0)
            log("bump/profile_to_items", float(out["profile_to_items"][ok].mean()) if ok.any() else 0.0)
            log("bump/items_to_profile", float(out["items_to_profile"][ok].mean()) if ok.any() else 0.0)
        return [float(x) for x in out["reward"]]

    return bump_reward


# ``trl grpo --reward_funcs llmrec.rewards.bump.bump_reward``: MiniLM judge, alpha 0.5, loaded on first call.
bump_reward = make_bump_reward()
