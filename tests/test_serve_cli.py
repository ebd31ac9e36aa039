"""`llmrec serve` starts the real vLLM server and the gateway in front of it; clients reach base and adapter."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from llmrec.errors import LlmrecError
from llmrec.serving.vllm_server import free_port, lora_args


def test_lora_args_validation(tmp_path):
    with pytest.raises(LlmrecError, match="NAME=PATH"):
        lora_args(["justaname"], 8)
    with pytest.raises(LlmrecError, match="not a PEFT adapter folder"):
        lora_args([f"a={tmp_path}"], 8)
    (tmp_path / "adapter_config.json").write_text("{}")
    assert lora_args([f"a={tmp_path}"], 8) == ["--enable-lora", "--max-lora-rank", "8", "--lora-modules",
                                               f"a={tmp_path}"]


def test_inner_api_key_starting_with_dash_reaches_vllm_intact():
    # vLLM's own argument parser, as the server process will run it: a random key may begin with "-".
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    from llmrec.cli.serve import vllm_api_key_args

    parsed = make_arg_parser(FlexibleArgumentParser()).parse_args(["--model", "m", *vllm_api_key_args("-k_1")])
    assert parsed.api_key == ["-k_1"]


def test_serve_unknown_model_is_one_line_error(capsys):
    from llmrec.cli.main import main

    assert main(["serve", "--model", "/no/such/model"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llmrec serve: error:") and "\n" not in err


def test_serve_flag_conflicts_are_one_line_errors(tiny_backbone, tmp_path, capsys):
    from llmrec.cli.main import main

    assert main(["serve", "--model", str(tiny_backbone), "--no-gateway", "--user-state", str(tmp_path)]) == 2
    assert "--no-gateway cannot be combined" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_backbone), "--catalog", "nameonly"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(["serve", "--model", str(tiny_backbone), "--adapter-dir", str(tmp_path / "no")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_serve_gateway_with_key_user_state_and_lora(tiny_backbone, tmp_path):
    from openai import OpenAI
    from trl import SFTConfig

    from llmrec.cli.main import main
    from llmrec.training.sft import default_lora_config, to_chat_example, train_sft

    examples = [to_chat_example(f"rate review {i}: great strings", "5") for i in range(8)]
    cfg = SFTConfig(output_dir=str(tmp_path / "adapter"), max_steps=2, per_device_train_batch_size=4,
                    learning_rate=1e-2, save_strategy="no", report_to=[], use_cpu=True, bf16=False, max_length=64,
                    disable_tqdm=True)
    adapter = train_sft(tiny_backbone, examples, cfg, default_lora_config(r=8))
    store = tmp_path / "users.sqlite"
    assert main(["users", "set", "--store", str(store), "--user", "u1", "--profile", "likes bass strings"]) == 0

    port = free_port()
    cmd = [sys.executable, "-m", "llmrec.cli.main", "serve", "--model", str(tiny_backbone), "--port", str(port),
           "--served-model-name", "tiny", "--lora", f"mine={adapter}", "--api-key", "k1",
           "--user-state", str(store),
           "--max-model-len", "512"]  # an engine flag passed through to vLLM
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"})
    try:
        deadline = time.monotonic() + 600
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                pass
            if ready:
                break
            time.sleep(2)
        assert ready, proc.stdout.read() if proc.poll() is not None else "not ready in time"
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k1")
        models = {m.id for m in client.models.list().data}
        assert models == {"tiny", "mine"}
        for name in ("tiny", "mine"):
            r = client.completions.create(model=name, prompt="great strings", max_tokens=4, temperature=0)
            assert r.usage.completion_tokens == 4 and r.model == name
        raw = client.completions.with_raw_response.create(model="tiny", prompt="great strings", max_tokens=4,
                                                          user="u1")
        assert raw.headers["x-llmrec-personalization"] == "profile"
        vllm_pids = [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        assert vllm_pids  # the API server and its engine processes
    finally:
        # `kill PID`, as a process manager stops a service: only llmrec's process gets the signal, and vLLM
        # (its own session) must go with it.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_running(p) for p in vllm_pids):
        time.sleep(0.5)
    alive = [p for p in vllm_pids if _running(p)]
    for p in alive:  # do not leave them behind for the next tests either
        os.kill(p, signal.SIGKILL)
    assert not alive, f"vLLM processes outlived 'llmrec serve': {alive}"
    assert proc.returncode == 128 + signal.SIGTERM  # unwound (exit status of a SIGTERM stop), not killed outright
