"""Start the gateway: in front of a vLLM server llmrec launches, or of one already running elsewhere."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from llmrec.errors import LlmrecError
from llmrec.serving.gateway import GatewayConfig, create_app


def discover_base_model(upstream: str, api_key: str | None = None, timeout: float = 10.0) -> tuple[str, list[str]]:
    """(base model name, all served names) from vLLM's /v1/models; the base is the entry without a parent."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        r = httpx.get(f"{upstream.rstrip('/')}/v1/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as e:
        raise LlmrecError(f"cannot reach the vLLM server at {upstream}: {type(e).__name__}") from None
    if r.status_code == 401:
        raise LlmrecError(f"the vLLM server at {upstream} wants an API key (--upstream-api-key)")
    if r.status_code != 200:
        raise LlmrecError(f"{upstream}/v1/models answered {r.status_code}")
    data = r.json().get("data", [])
    bases = [m["id"] for m in data if not m.get("parent")]
    if not bases:
        raise LlmrecError(f"{upstream} serves no base model")
    return bases[0], [m["id"] for m in data]


def load_catalogs(specs: dict[str, Path]) -> dict:
    from llmrec.serving.catalog import load_catalog

    return {name: load_catalog(name, path) for name, path in specs.items()}


@dataclass
class GatewayThread:
    """``with GatewayThread(config) as gw: OpenAI(base_url=gw.base_url)``: the gateway on a background
    thread of this process (tests, notebooks). ``llmrec serve`` runs the same app in the foreground."""

    config: GatewayConfig
    host: str = "127.0.0.1"
    port: int | None = None
    startup_timeout: float = 60.0
    _server: object = field(default=None, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def __enter__(self) -> GatewayThread:  # noqa: PYI034
        import uvicorn

        from llmrec.serving.vllm_server import free_port

        self.port = self.port or free_port()
        self.app = create_app(self.config)
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning",
                                                     access_log=False, timeout_keep_alive=30))
        self._thread = threading.Thread(target=self._server.run, daemon=True, name="llmrec-gateway")
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise LlmrecError(f"the gateway did not start on {self.url}")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
