"""Benchmark: what a 16-vector user prefix (TAP-PER / SAILRec soft tokens) costs a request through the gateway.

    .venv/bin/python bench/prefix_serving.py [--n 16] [--tokens 32] [--rounds 3] [--out runs/bench/prefix_serving.json]

One vLLM server (SmolLM2-135M-Instruct) and the gateway in front of it, as in production. The same
real review prompts are sent through the gateway in two ways, interleaved round by round so machine
noise hits both alike:
  plain   no user: the text prompt goes to vLLM as text
  prefix  a user with a stored 16-vector prefix: the gateway embeds the prompt, puts the prefix in
          front and sends the whole sequence as prompt_embeds (vLLM then skips its own embedding)
and, to tell the costs apart, three requests straight to vLLM: `text`, the prompt's own embeddings
(`embeds`: what prompt_embeds cost at equal length) and the same prefix + embeddings the gateway
builds (`prefix`: what 16 more positions cost vLLM; gateway-prefix / direct-prefix is then the
gateway's own work). Each at concurrency 1 (latency of a lone request) and at
concurrency N (a loaded server). Prints p50 / p90 latency and throughput per mode and the
prefix/plain ratios; the target is p50 latency within 15%. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from serve_common import PREFIX_VECTORS, fire, pct, review_prompts, vllm_and_gateway

MODES = ["gateway-plain", "gateway-prefix", "direct-text", "direct-embeds", "direct-prefix"]


def bodies_for(mode: str, prompts: list[str], tokens: int, embeds: dict[str, list[str]]) -> list[dict]:
    common = {"model": "smollm2", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    if mode == "gateway-prefix":
        return [{**common, "prompt": p, "user": f"x{i % 8}"} for i, p in enumerate(prompts)]
    if mode in ("direct-embeds", "direct-prefix"):
        return [{**common, "prompt_embeds": e} for e in embeds[mode]]
    return [{**common, "prompt": p} for p in prompts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="requests per batch (and the concurrency of the loaded case)")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    prompts = review_prompts(args.n)
    cases = [("lone", 1), ("loaded", args.n)]
    lat = {(c, m): [] for c, _ in cases for m in MODES}
    wall = dict.fromkeys(lat, 0.0)
    errors = 0
    with vllm_and_gateway() as (server, gw_url, model_path, store_path):
        from llmrec.serving.prompt_embeds import PromptEmbedder, encode_embeds
        from llmrec.serving.user_state import open_user_store

        emb, store = PromptEmbedder.load(model_path), open_user_store(store_path)
        ids = [emb.token_ids(p, chat=False) for p in prompts]
        embeds = {"direct-embeds": [encode_embeds(emb.embed_ids(t).float()) for t in ids],
                  "direct-prefix": [encode_embeds(emb.with_prefix(store.get(f"x{i % 8}").prefix, ids=t))
                                    for i, t in enumerate(ids)]}
        for base, mode in ((gw_url, "gateway-prefix"), (gw_url, "gateway-plain"), (server.url, "direct-prefix")):
            asyncio.run(fire(base, bodies_for(mode, prompts, 4, embeds), args.n))    # warm-up: one-off costs
        for r in range(args.rounds):
            for case, conc in cases:
                for mode in MODES:
                    base = gw_url if mode.startswith("gateway") else server.url
                    ls, w, outs = asyncio.run(fire(base, bodies_for(mode, prompts, args.tokens, embeds), conc))
                    errors += sum(o is None for o in outs)
                    lat[case, mode] += ls
                    wall[case, mode] += w
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    report = {"n": args.n, "tokens": args.tokens, "rounds": args.rounds, "prefix_vectors": PREFIX_VECTORS,
              "prompt_tokens": [len(t) for t in ids], "errors": errors, "cases": {}}
    print(f"\n{args.n} requests x {args.tokens} new tokens, {args.rounds} rounds, SmolLM2-135M, prefix "
          f"{PREFIX_VECTORS} vectors, prompts {min(report['prompt_tokens'])}-{max(report['prompt_tokens'])} tokens; "
          f"errors: {errors}")
    for case, conc in cases:
        rows = {}
        print(f"\n{case} (concurrency {conc})\n{'mode':16s} {'p50 s':>8s} {'p90 s':>8s} {'tok/s':>8s}")
        for m in MODES:
            tps = args.n * args.tokens * args.rounds / wall[case, m]
            rows[m] = {"p50_s": pct(lat[case, m], 50), "p90_s": pct(lat[case, m], 90), "tokens_per_s": tps}
            print(f"{m:16s} {rows[m]['p50_s']:8.3f} {rows[m]['p90_s']:8.3f} {tps:8.1f}")
        p, q = rows["gateway-prefix"], rows["gateway-plain"]
        d = {m: rows[m]["p50_s"] for m in MODES}
        ratio = {"p50": p["p50_s"] / q["p50_s"], "p90": p["p90_s"] / q["p90_s"],
                 "throughput": p["tokens_per_s"] / q["tokens_per_s"],
                 "direct_embeds_over_text_p50": d["direct-embeds"] / d["direct-text"],
                 "direct_prefix_over_embeds_p50": d["direct-prefix"] / d["direct-embeds"],
                 "gateway_prefix_over_direct_prefix_p50": d["gateway-prefix"] / d["direct-prefix"]}
        report["cases"][case] = {"concurrency": conc, "modes": rows, "prefix_over_plain": ratio}
        verdict = "within" if ratio["p50"] <= 1.15 else "NOT within"
        print(f"prefix / plain through the gateway: p50 x{ratio['p50']:.3f} ({verdict} the 15% target), "
              f"p90 x{ratio['p90']:.3f}, throughput x{ratio['throughput']:.3f}")
        print(f"  where it goes (p50): prompt_embeds instead of text x{ratio['direct_embeds_over_text_p50']:.3f}, "
              f"{PREFIX_VECTORS} more positions in vLLM x{ratio['direct_prefix_over_embeds_p50']:.3f}, the gateway's "
              f"own work x{ratio['gateway_prefix_over_direct_prefix_p50']:.3f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
