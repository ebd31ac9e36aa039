"""Benchmark: a bounded load through the gateway: no errors, no lost responses, p50/p99 latency.

    .venv/bin/python bench/serve_load.py [--requests 512] [--concurrency 32] [--tokens 16]

SmolLM2-135M-Instruct on vLLM, the gateway in its own process; requests cycle through plain,
profile-personalized and prefix-personalized users, half of them chat. A response counts only if it
is a 200 with exactly --tokens completion tokens and its own request's headers say the right
personalization was applied.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
from serve_common import pct, review_prompts, vllm_and_gateway

KINDS = [(None, "none"), ("p{}", "profile"), ("x{}", "prefix")]


async def run(base: str, n: int, concurrency: int, tokens: int, prompts: list[str]) -> dict:
    sem = asyncio.Semaphore(concurrency)
    lat, ok, bad = [], 0, []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        async def one(i: int):
            nonlocal ok
            user_fmt, expect = KINDS[i % 3]
            body = {"model": "smollm2", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
            if user_fmt:
                body["user"] = user_fmt.format(i % 8)
            chat = (i // 3) % 2 == 1
            if chat:
                body["messages"] = [{"role": "user", "content": prompts[i % len(prompts)]}]
            else:
                body["prompt"] = prompts[i % len(prompts)]
            async with sem:
                t = time.perf_counter()
                try:
                    r = await client.post("/v1/chat/completions" if chat else "/v1/completions", json=body)
                    good = (r.status_code == 200 and r.json()["usage"]["completion_tokens"] == tokens
                            and r.headers.get("x-llmrec-personalization") == expect)
                except (httpx.HTTPError, ValueError, KeyError) as e:
                    good, r = False, e
                lat.append(time.perf_counter() - t)
            if good:
                ok += 1
            else:
                bad.append((i, getattr(r, "status_code", repr(r))))

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - t0
    return {"requests": n, "ok": ok, "errors": len(bad), "first_errors": bad[:5], "wall_s": wall,
            "p50_s": pct(lat, 50), "p99_s": pct(lat, 99), "requests_per_s": n / wall,
            "tokens_per_s": ok * tokens / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=512)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=16)
    args = ap.parse_args()
    prompts = review_prompts(64)
    with vllm_and_gateway() as (_server, gw_url, _model, _store):
        asyncio.run(run(gw_url, 32, 32, 2, prompts))  # warm-up
        res = asyncio.run(run(gw_url, args.requests, args.concurrency, args.tokens, prompts))
    print(f"\n{res['requests']} requests at concurrency {args.concurrency} through the gateway "
          f"({args.tokens} tokens each; plain/profile/prefix users, completions and chat):")
    print(f"  ok {res['ok']}, errors {res['errors']} {res['first_errors'] or ''}")
    print(f"  p50 {res['p50_s']:.2f} s   p99 {res['p99_s']:.2f} s   {res['requests_per_s']:.1f} req/s   "
          f"{res['tokens_per_s']:.0f} tok/s   wall {res['wall_s']:.1f} s")
    if res["errors"] or res["ok"] != res["requests"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
