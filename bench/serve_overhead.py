"""Benchmark: what the llmrec gateway costs in front of vLLM, and what vLLM gains over HF generate.

    .venv/bin/python bench/serve_overhead.py [--n 16] [--tokens 32] [--rounds 3] [--out runs/bench/serve_overhead.json]

One vLLM server (SmolLM2-135M-Instruct, the pretrained backbone), the gateway as its own process in
front of it. Each round sends N concurrent completions (real review prompts, greedy, exactly --tokens
new tokens) in six ways, interleaved so machine noise hits all alike:
  direct-plain   vs gateway-plain     (no user)
  direct-profile vs gateway-profile   (direct gets the same profile text the gateway injects)
  direct-prefix  vs gateway-prefix    (direct gets the same 16-vector prefix as prompt_embeds, built here)
Reports p50 latency and throughput per mode and the gateway/direct ratios (target: p50 within 10%,
throughput at least 0.9x). Then, with vLLM stopped, Hugging Face `generate` on the same model and
prompts (one padded batch, fp32): the vLLM/HF throughput ratio. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

from serve_common import fire, pct, review_prompts, vllm_and_gateway

from llmrec.serving.personalize import ProfileTemplate

MODES = ["direct-plain", "gateway-plain", "direct-profile", "gateway-profile", "direct-prefix", "gateway-prefix"]


def bodies_for(mode: str, prompts: list[str], tokens: int, embeds: list[str], profile_prefix: str) -> list[dict]:
    common = {"model": "smollm2", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    out = []
    for i, p in enumerate(prompts):
        if mode == "direct-plain" or mode == "gateway-plain":
            out.append({**common, "prompt": p})
        elif mode == "direct-profile":
            out.append({**common, "prompt": profile_prefix + p})
        elif mode == "gateway-profile":
            out.append({**common, "prompt": p, "user": f"p{i % 8}"})
        elif mode == "direct-prefix":
            out.append({**common, "prompt_embeds": embeds[i]})
        else:
            out.append({**common, "prompt": p, "user": f"x{i % 8}"})
    return out


def hf_baseline(model_path: Path, prompts: list[str], tokens: int) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    batch = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        model.generate(**tok(prompts[:2], return_tensors="pt", padding=True), max_new_tokens=2)  # warm-up
        t0 = time.perf_counter()
        out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
        wall = time.perf_counter() - t0
    assert out.shape[1] - batch["input_ids"].shape[1] == tokens
    return len(prompts) * tokens / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16, help="concurrent requests per batch")
    ap.add_argument("--tokens", type=int, default=32, help="new tokens per request")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    prompts = review_prompts(args.n)
    profile_prefix = ProfileTemplate.load().completion_prefix.format(
        profile=__import__("serve_common").PROFILE)
    lat: dict[str, list[float]] = {m: [] for m in MODES}
    wall: dict[str, float] = dict.fromkeys(MODES, 0.0)
    errors = 0
    with vllm_and_gateway() as (server, gw_url, model_path, store_path):
        from llmrec.serving.prompt_embeds import PromptEmbedder, encode_embeds
        from llmrec.serving.user_state import open_user_store

        emb, store = PromptEmbedder.load(model_path), open_user_store(store_path)
        embeds = [encode_embeds(emb.with_prefix(store.get(f"x{i % 8}").prefix, ids=emb.token_ids(p, chat=False)))
                  for i, p in enumerate(prompts)]
        # Warm-up both paths (first requests pay one-off costs in vLLM and the gateway).
        for base in (server.url, gw_url):
            asyncio.run(fire(base, bodies_for("gateway-prefix" if base == gw_url else "direct-plain", prompts,
                                              4, embeds, profile_prefix), args.n))
        for r in range(args.rounds):
            for mode in MODES:
                base = server.url if mode.startswith("direct") else gw_url
                ls, w, outs = asyncio.run(fire(base, bodies_for(mode, prompts, args.tokens, embeds, profile_prefix),
                                               args.n))
                errors += sum(o is None for o in outs)
                lat[mode] += ls
                wall[mode] += w
            print(f"round {r + 1}/{args.rounds} done", flush=True)
    hf_tps = hf_baseline(model_path, prompts, args.tokens)
    report = {"n": args.n, "tokens": args.tokens, "rounds": args.rounds, "errors": errors, "modes": {}}
    print(f"\n{args.n} concurrent requests x {args.tokens} tokens, {args.rounds} rounds, SmolLM2-135M; errors: {errors}")
    print(f"{'mode':16s} {'p50 s':>8s} {'p90 s':>8s} {'tok/s':>8s}")
    for m in MODES:
        tps = args.n * args.tokens * args.rounds / wall[m]
        report["modes"][m] = {"p50_s": pct(lat[m], 50), "p90_s": pct(lat[m], 90), "tokens_per_s": tps}
        print(f"{m:16s} {pct(lat[m], 50):8.3f} {pct(lat[m], 90):8.3f} {tps:8.1f}")
    print("\ngateway vs direct (p50 latency ratio, throughput ratio):")
    for kind in ("plain", "profile", "prefix"):
        d, g = report["modes"][f"direct-{kind}"], report["modes"][f"gateway-{kind}"]
        report[f"ratio_{kind}"] = {"p50": g["p50_s"] / d["p50_s"], "throughput": g["tokens_per_s"] / d["tokens_per_s"]}
        print(f"  {kind:8s} p50 x{g['p50_s'] / d['p50_s']:.3f}   throughput x{g['tokens_per_s'] / d['tokens_per_s']:.3f}")
    vllm_tps = report["modes"]["direct-plain"]["tokens_per_s"]
    report["hf_generate_tokens_per_s"] = hf_tps
    report["vllm_over_hf"] = vllm_tps / hf_tps
    print(f"\nHF generate (one padded batch of {args.n}, fp32): {hf_tps:.1f} tok/s; vLLM direct {vllm_tps:.1f} tok/s "
          f"-> vLLM x{vllm_tps / hf_tps:.2f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
