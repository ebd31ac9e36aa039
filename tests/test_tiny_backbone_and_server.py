"""The tiny test backbone and the real vLLM server that every server test uses."""

from __future__ import annotations

import json

import pytest

from llmrec.errors import LlmrecError
from llmrec.serving.vllm_server import VLLMServer, batch_engine_env, default_engine_args


def test_tiny_backbone_loads_and_splits_digits(tiny_backbone):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    model = AutoModelForCausalLM.from_pretrained(tiny_backbone)
    assert model.config.hidden_size // model.config.num_attention_heads == 64
    ids = tok("great guitar strings", return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    meta = json.loads((tiny_backbone / "llmrec_backbone.json").read_text())
    assert meta["parameters"] == sum(p.numel() for p in model.parameters())


def test_engine_args_user_flags_win():
    srv = VLLMServer("/nonexistent", port=1234, extra_args=["--dtype", "float32"])
    cmd = srv.command()
    assert cmd.count("--dtype") == 1 and cmd[cmd.index("--dtype") + 1] == "float32"
    assert ("--enforce-eager", None) in default_engine_args(on_gpu=False)
    assert all(flag != "--enforce-eager" for flag, _ in default_engine_args(on_gpu=True))


def test_batch_engine_env_gives_vllm_every_core_of_a_small_cpu(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("VLLM_CPU_NUM_OF_RESERVED_CPU", raising=False)
    assert batch_engine_env(on_gpu=False, cores=2) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "OMP_NUM_THREADS": "2"}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's setting wins
    assert batch_engine_env(on_gpu=False, cores=2) == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert batch_engine_env(on_gpu=False, cores=32) == {}  # vLLM's own default: one core for the front end
    assert batch_engine_env(on_gpu=True, cores=2) == {}


def test_missing_model_path_is_a_clear_error():
    with pytest.raises(LlmrecError, match="does not exist"):
        VLLMServer("/nonexistent/model").start()


def test_real_vllm_server_answers_openai_client(tiny_vllm_server):
    from openai import OpenAI

    client = OpenAI(base_url=tiny_vllm_server.base_url, api_key="unused")
    assert [m.id for m in client.models.list().data] == ["tiny", "tinylora"]  # the fixture serves an adapter too
    a = client.completions.create(model="tiny", prompt="great strings", max_tokens=6, temperature=0, seed=0)
    b = client.completions.create(model="tiny", prompt="great strings", max_tokens=6, temperature=0, seed=0)
    assert a.usage.completion_tokens == 6
    assert a.choices[0].text == b.choices[0].text  # greedy decoding is deterministic
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, temperature=0)
    assert chat.usage.completion_tokens == 4
