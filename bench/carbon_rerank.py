"""Speed of carbon-aware re-ranking (llmrec.carbon.rerank): numpy-vectorised against a per-user Python loop.

1. Re-rank 1M (user, item) scores (the first users of the Beauty CF run x its 12,101 items, about
   83 users; synthetic scores of that shape when the run is absent) with both implementations.
2. A 50-point lambda sweep over all Beauty users (the vectorised path only, as `llmrec carbon
   frontier` runs it), with the loop timed on a sample of users and extrapolated.
Both must give the same top-k lists.

Run: flock -w 550 /tmp/llmrec-heavy.lock .venv/bin/python bench/carbon_rerank.py \
         [--cf runs/cf_bprmf_beauty] [--pcf runs/carbon_rerank/beauty_pcf_nn.jsonl]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from llmrec.carbon.rerank import (
    carbon_penalty,
    combine,
    read_pcf,
    rerank,
    rerank_loop,
    seen_mask,
    topk_rows,
    user_blocks,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cf", default="runs/cf_bprmf_beauty")
    ap.add_argument("--pcf", default="runs/carbon_rerank/beauty_pcf_nn.jsonl")
    ap.add_argument("--lam", type=float, default=0.3)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--loop_users", type=int, default=20, help="users the loop is timed on in the sweep")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    cf = None
    if Path(args.cf).is_dir():
        from llmrec.cf import load_cf

        cf = load_cf(args.cf)
        n_users, n_items = len(cf.user_ids), len(cf.item_ids)
        print(f"CF run {args.cf}: {n_users} users x {n_items} items")
    else:
        n_users, n_items = 22363, 12101
        print(f"no CF run at {args.cf}: synthetic scores, {n_users} x {n_items}")
    if cf is not None and Path(args.pcf).is_file():
        _, pcf = read_pcf(args.pcf, cf.item_ids)
        print(f"PCFs from {args.pcf}: {int(np.isfinite(pcf).sum())} of {n_items} items")
    else:
        pcf = 10 ** rng.uniform(-1, 3, n_items)
        print("synthetic PCFs")
    pen = carbon_penalty(pcf)

    # 1. 1M scores
    b = -(-1_000_000 // n_items)
    users = np.arange(b)
    if cf is not None:
        scores, seen = cf._score_rows(users, None).astype(np.float64), seen_mask(cf, users)
    else:
        scores, seen = rng.normal(size=(b, n_items)), rng.random((b, n_items)) < 0.001
    t = time.perf_counter()
    fast = rerank(scores, pen, args.lam, args.k, seen)
    t_fast = time.perf_counter() - t
    t = time.perf_counter()
    slow = rerank_loop(scores, pen, args.lam, args.k, seen)
    t_slow = time.perf_counter() - t
    assert np.array_equal(fast, slow), "vectorised and loop top-k differ"
    print(f"re-rank {scores.size:,} scores ({b} users), lambda {args.lam}, k {args.k}: vectorised {t_fast:.3f} s, "
          f"loop {t_slow:.2f} s, ratio {t_slow / t_fast:.0f}x; top-k equal")

    # 2. sweep over all users
    lambdas = np.linspace(0, 1, args.points)
    if cf is None:
        raise SystemExit("the sweep needs a CF run")
    t = time.perf_counter()
    n_done, sample = 0, None
    for u, rel in user_blocks(cf, None, 2048):
        for lam in lambdas:
            top = topk_rows(combine(rel, pen, lam), args.k)
        if sample is None:
            sample = (u[: args.loop_users], top[: args.loop_users])
        n_done += len(u)
    t_sweep = time.perf_counter() - t
    u = sample[0]
    s, m = cf._score_rows(u, None).astype(np.float64), seen_mask(cf, u)
    t = time.perf_counter()
    loop_top = [rerank_loop(s, pen, lam, args.k, m) for lam in lambdas]
    t_loop = time.perf_counter() - t
    assert np.array_equal(loop_top[-1], sample[1]), "sweep: vectorised and loop top-k differ"
    assert all(np.array_equal(a, rerank(s, pen, lam, args.k, m)) for a, lam in zip(loop_top, lambdas))
    est = t_loop * n_done / len(u)
    print(f"{args.points}-lambda sweep over {n_done} users: vectorised {t_sweep:.1f} s (incl. scoring); loop "
          f"{t_loop:.1f} s on {len(u)} users -> {est:.0f} s extrapolated to all, ratio {est / t_sweep:.0f}x; "
          "top-k equal on the sample")


if __name__ == "__main__":
    main()
