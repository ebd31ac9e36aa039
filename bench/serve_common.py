"""Shared by bench/serve_overhead.py and bench/serve_load.py: one SmolLM2 vLLM server, a user-state store,
the gateway as its own process (as in production: `llmrec serve --upstream`), prompts from real reviews."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np

from llmrec.paths import shared_data_dir

PROFILE = ("Plays bass in a jazz trio and guitar at home; buys strings, cables and tuners often; prefers "
           "durable, well-reviewed gear over cheap accessories.")
PREFIX_VECTORS = 16


def review_prompts(n: int) -> list[str]:
    """LaMP-style prompts from real Amazon Musical Instruments reviews (a fixed sentence where data is absent)."""
    texts = []
    d = shared_data_dir()
    if d is not None:
        with open(d / "amazon" / "musical_instruments_5core_2014" / "Musical_Instruments.json") as f:
            for line in f:
                words = json.loads(line).get("reviewText", "").split()
                if len(words) >= 40:
                    texts.append(" ".join(words[:40]))
                if len(texts) >= n:
                    break
    while len(texts) < n:
        texts.append("These strings sound bright and stay in tune for weeks; the tuner is accurate and fast.")
    return [f"Write a short title for this product review.\nReview: {t}\nTitle:" for t in texts[:n]]


def make_store(root: Path, model_path: Path, users: int = 8) -> Path:
    """Users p0.. with a text profile and x0.. with a 16-vector prefix (at the scale of the token embeddings)."""
    from llmrec.serving.prompt_embeds import PromptEmbedder
    from llmrec.serving.user_state import open_user_store

    store = open_user_store(root / "users")
    table_std = float(PromptEmbedder.load(model_path).table.std())
    rng = np.random.default_rng(0)
    for u in range(users):
        store.update(f"p{u}", profile=PROFILE)
        store.update(f"x{u}", prefix=(rng.standard_normal((PREFIX_VECTORS, 576)) * table_std).astype(np.float32))
    return root / "users"


@contextmanager
def vllm_and_gateway(max_model_len: int = 2048):
    """(vLLM server, gateway URL, model path, store path) for SmolLM2-135M-Instruct."""
    from llmrec.backbone import get_backbone
    from llmrec.serving.vllm_server import VLLMServer, free_port

    model_path = get_backbone("smollm2-135m-instruct")
    tmp = Path(tempfile.mkdtemp(prefix="llmrec-bench-"))
    store = make_store(tmp, model_path)
    t0 = time.monotonic()
    with VLLMServer(model_path, served_model_name="smollm2", max_model_len=max_model_len, kv_cache_gib=2,
                    extra_args=["--enable-prompt-embeds"]) as server:
        print(f"vLLM ready in {time.monotonic() - t0:.0f}s ({server.log_path})", flush=True)
        port = free_port()
        cmd = [sys.executable, "-m", "llmrec.cli.main", "serve", "--model", str(model_path), "--upstream",
               server.url, "--user-state", str(store), "--port", str(port)]
        gw = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=dict(os.environ))
        try:
            url = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError("gateway not ready")
            yield server, url, model_path, store
        finally:
            gw.terminate()
            gw.wait(timeout=30)


async def fire(base: str, bodies: list[dict], concurrency: int, path: str = "/v1/completions",
               ) -> tuple[list[float], float, list[dict | None]]:
    """Send ``bodies`` with at most ``concurrency`` in flight: (latencies s, wall s, responses or None on error)."""
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = [0.0] * len(bodies)
    out: list[dict | None] = [None] * len(bodies)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        async def one(i: int, body: dict):
            async with sem:
                t = time.perf_counter()
                try:
                    r = await client.post(path, json=body)
                    out[i] = r.json() if r.status_code == 200 else None
                except (httpx.HTTPError, ValueError):
                    out[i] = None
                lat[i] = time.perf_counter() - t

        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))
        wall = time.perf_counter() - t0
    return lat, wall, out


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))
