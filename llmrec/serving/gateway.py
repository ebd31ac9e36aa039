"""The llmrec gateway: an OpenAI-compatible server in front of vLLM's own, that personalizes per user.

vLLM does the serving (batching, KV cache, LoRA, tensor parallelism); the gateway only rewrites
requests: it checks the API key and the fields it reads, applies the state stored for the request's
``user`` (adapter routing, text profile, soft prefix as ``prompt_embeds``), forwards to vLLM, and streams
the answer back. It adds ``/v1/recommendations`` (grounded to a catalog) and confined adapter loading.
It never blocks: every upstream call is async, CPU work (tokenizing, embedding) runs in a thread,
and a client that goes away has its upstream request closed, which makes vLLM abort the generation.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmrec.recommend.next_item import NextItemTemplate
from llmrec.serving.api_errors import ApiError, bad_field, error_response, expect, parse_json_object
from llmrec.serving.catalog import Catalog
from llmrec.serving.chat_convert import ChatStreamConverter, chat_response, completion_body, message_text
from llmrec.serving.personalize import Plan, ProfileTemplate, prompt_kind, validate_generation, with_profile_messages
from llmrec.serving.prompt_embeds import EmbedsError
from llmrec.serving.recommendations import RecTemplate
from llmrec.serving.user_state import UserState, UserStore

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class GatewayConfig:
    upstream: str  # vLLM's base URL, e.g. http://127.0.0.1:8001 (no /v1)
    base_model: str  # the served name of the backbone
    model_path: Path | None = None  # backbone folder: tokenizer + input embeddings for prefixes
    upstream_api_key: str | None = None
    api_key: str | None = None
    user_store: UserStore | None = None
    adapter_dir: Path | None = None
    catalogs: dict[str, Catalog] = field(default_factory=dict)
    max_body_bytes: int = 256 << 20  # prompt embeddings are large: 1k tokens x 4k hidden in fp32 is 16 MiB
    upstream_connect_timeout: float = 10.0


class ClientGone(Exception):
    pass


async def _wait_for_disconnect(request: Request) -> None:
    # Once the body is read, the next ASGI receive() returns only when the client disconnects.
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class Gateway:
    def __init__(self, config: GatewayConfig):
        self.config = config
        self.client: httpx.AsyncClient | None = None
        self.profile_template = ProfileTemplate.load()
        # Recommendation prompt templates: read once here, not from disk on every request.
        self.next_item_template = NextItemTemplate.load()
        self.rec_template = RecTemplate.load()
        self._embedder = None
        self._embedder_lock = asyncio.Lock()
        self._models: dict[str, dict] | None = None
        self._adapter_lock = asyncio.Lock()
        self.requests: dict[tuple[str, str], int] = {}  # (endpoint, personalization) -> count
        self.in_flight = 0  # generation requests open upstream right now
        self.max_in_flight = 0

    # ---------------------------------------------------------------- plumbing
    def _upstream_headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.config.upstream_api_key:
            h["Authorization"] = f"Bearer {self.config.upstream_api_key}"
        return h

    async def start(self) -> None:
        # No pool limit: the gateway must never queue requests that vLLM could batch.
        self.client = httpx.AsyncClient(
            base_url=self.config.upstream, headers=self._upstream_headers(),
            timeout=httpx.Timeout(None, connect=self.config.upstream_connect_timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512))
        if self.config.model_path is not None and self.config.user_store is not None:
            # Load the tokenizer and embedding table now so the first prefixed request is not slow.
            asyncio.get_running_loop().create_task(self._get_embedder_quietly())

    async def stop(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    async def _get_embedder_quietly(self):
        with suppress(Exception):
            await self.embedder()

    async def embedder(self):
        if self._embedder is None:
            if self.config.model_path is None:
                raise ApiError(400, "this gateway has no backbone folder, so it cannot build prompt embeddings "
                               "(start it with --model PATH)")
            async with self._embedder_lock:
                if self._embedder is None:
                    from llmrec.serving.prompt_embeds import PromptEmbedder

                    def load():
                        import torch

                        torch.set_num_threads(1)  # the gateway shares the machine with vLLM's workers
                        return PromptEmbedder.load(self.config.model_path)

                    self._embedder = await run_in_threadpool(load)
        return self._embedder

    def check_auth(self, request: Request) -> None:
        key = self.config.api_key
        if not key:
            return
        got = request.headers.get("authorization", "")
        token = got[7:].strip() if got[:7].lower() == "bearer " else ""
        if not token or not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'")

    async def read_body(self, request: Request) -> tuple[bytes, dict]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.config.max_body_bytes:
            raise ApiError(413, f"request body of {int(declared):,} bytes is larger than the limit "
                           f"{self.config.max_body_bytes:,}")
        raw = await request.body()
        if len(raw) > self.config.max_body_bytes:
            raise ApiError(413, f"request body is larger than the limit {self.config.max_body_bytes:,} bytes")
        return raw, parse_json_object(raw)

    async def models(self, refresh: bool = False) -> dict[str, dict]:
        if self._models is None or refresh:
            r = await self._upstream("GET", "/v1/models")
            if r.status_code != 200:
                raise ApiError(502, f"upstream /v1/models answered {r.status_code}")
            self._models = {m["id"]: m for m in r.json().get("data", [])}
        return self._models

    async def max_model_len(self) -> int | None:
        entry = (await self.models()).get(self.config.base_model) or {}
        return entry.get("max_model_len")

    async def _upstream(self, method: str, path: str, **kw) -> httpx.Response:
        try:
            return await self.client.request(method, path, **kw)
        except httpx.TransportError as e:
            raise ApiError(503, f"the vLLM server at {self.config.upstream} is unavailable: "
                           f"{type(e).__name__}") from None

    def _enter_flight(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    async def _tracked(self, coro):
        self._enter_flight()
        try:
            return await coro
        finally:
            self.in_flight -= 1

    async def post_cancellable(self, request: Request, path: str, content: bytes) -> httpx.Response:
        """POST upstream; if the client disconnects first, close the upstream request (vLLM then aborts).

        Cancelled through an anyio cancel scope, not ``Task.cancel()``: httpcore closes a half-answered
        connection under a cancellation shield, which only anyio's scopes honour; a plain task cancel
        could leave a pooled keep-alive connection open and vLLM generating for nobody.
        """
        result: dict = {}
        async with anyio.create_task_group() as tg:
            async def call():
                try:
                    result["response"] = await self._tracked(self._upstream("POST", path, content=content))
                except ApiError as e:  # re-raised below as itself, not wrapped in an exception group
                    result["error"] = e
                tg.cancel_scope.cancel()

            async def watch():
                await _wait_for_disconnect(request)
                tg.cancel_scope.cancel()

            tg.start_soon(call)
            tg.start_soon(watch)
        if "error" in result:
            raise result["error"]
        if "response" in result:
            return result["response"]
        raise ClientGone

    async def stream(self, path: str, content: bytes, headers: dict, convert: ChatStreamConverter | None,
                     error_field: str) -> Response:
        req = self.client.build_request("POST", path, content=content)
        self._enter_flight()  # open upstream from the moment it is sent, headers or not
        try:
            resp = await self.client.send(req, stream=True)
        except httpx.TransportError as e:
            self.in_flight -= 1
            raise ApiError(503, f"the vLLM server at {self.config.upstream} is unavailable: "
                           f"{type(e).__name__}") from None
        except BaseException:
            self.in_flight -= 1
            raise
        if resp.status_code != 200:
            self.in_flight -= 1
            body = await resp.aread()
            await resp.aclose()
            return upstream_error(resp.status_code, body, error_field, headers)

        async def relay():
            async for chunk in resp.aiter_raw():
                yield convert.feed(chunk) if convert else chunk

        async def close_upstream():
            await resp.aclose()
            self.in_flight -= 1

        return _RelayResponse(relay(), close_upstream, media_type="text/event-stream", headers=headers)

    # ---------------------------------------------------------------- personalization
    def lookup(self, user: str | None, personalize: bool) -> tuple[UserState | None, str]:
        if user is None:
            return None, "anonymous"
        if not personalize:
            return None, "opted-out"
        state = self.config.user_store.get(user) if self.config.user_store is not None else None
        return state, "known" if state is not None else "unknown"

    async def route_adapter(self, state: UserState, body: dict, plan: Plan) -> None:
        """A user with an adapter gets it when they ask for the base model (an explicit adapter wins)."""
        if not state.adapter or body.get("model") != self.config.base_model:
            return
        models = await self.models()
        if state.adapter not in models and self.config.adapter_dir is not None:
            async with self._adapter_lock:
                models = await self.models(refresh=True)
                path = self.config.adapter_dir / state.adapter
                if state.adapter not in models and ADAPTER_NAME.match(state.adapter) and \
                        (path / "adapter_config.json").is_file():
                    r = await self._upstream("POST", "/v1/load_lora_adapter",
                                             json={"lora_name": state.adapter, "lora_path": str(path.resolve())})
                    if r.status_code == 200:
                        models = await self.models(refresh=True)
        if state.adapter in models:
            body["model"] = plan.model = state.adapter
            plan.applied.append("adapter")
        else:
            plan.notes.append("adapter-unavailable")

    async def profile_token_ids(self, profile: str) -> list[int]:
        emb = await self.embedder()
        text = self.profile_template.completion_prefix.format(profile=profile)
        return emb.tokenizer(text, add_special_tokens=False)["input_ids"]

    async def apply_profile(self, body: dict, profile: str, chat: bool) -> None:
        if chat:
            body["messages"] = with_profile_messages(body["messages"], profile, self.profile_template)
            return
        prefix = self.profile_template.completion_prefix.format(profile=profile)
        prompt = body.get("prompt")
        if prompt is None:
            return  # embeddings only: handled when the prefix embeddings are built
        kind = prompt_kind(prompt)
        if kind == "text":
            body["prompt"] = prefix + prompt
        elif kind == "texts":
            body["prompt"] = [prefix + p for p in prompt]
        else:
            ids = await self.profile_token_ids(profile)
            body["prompt"] = ids + prompt if kind == "ids" else [ids + p for p in prompt]

    async def prefix_embeds(self, body: dict, state: UserState, chat: bool, profile_pending: bool) -> dict:
        """The completion request carrying ``[prefix; prompt]`` embeddings in place of the prompt."""
        emb = await self.embedder()
        if state.prefix.ndim != 2 or state.prefix.shape[1] != emb.hidden_size:
            raise ApiError(500, f"the stored prefix of this user has shape {tuple(state.prefix.shape)}, but the "
                           f"model's hidden size is {emb.hidden_size}; re-export it for this backbone")
        limit = await self.max_model_len()
        max_new = body.get("max_completion_tokens", body.get("max_tokens")) or 0

        def build() -> tuple[dict, str | list[str], int]:
            import torch

            from llmrec.serving.prompt_embeds import decode_embeds, encode_embeds

            if chat:
                comp = completion_body(body)
                messages = [{**m, "content": message_text(m.get("content"), f"messages[{i}].content")}
                            for i, m in enumerate(body["messages"])]
                text = emb.chat_prompt(messages, **(body.get("chat_template_kwargs") or {}))
                bodies = [emb.with_prefix(state.prefix, ids=emb.token_ids(text, chat=True))]
            else:
                comp = {k: v for k, v in body.items() if k not in ("prompt", "prompt_embeds")}
                prompt = body.get("prompt")
                if prompt is None:
                    raw = body["prompt_embeds"]
                    raws = [raw] if isinstance(raw, str) else raw
                    head = emb.embed_ids(emb.tokenizer(self.profile_template.completion_prefix.format(
                        profile=state.profile), add_special_tokens=False)["input_ids"]) if profile_pending else None
                    bodies = []
                    for i, r in enumerate(raws):
                        client = decode_embeds(r, emb.hidden_size, "prompt_embeds" if isinstance(raw, str)
                                               else f"prompt_embeds[{i}]")
                        bodies.append(emb.with_prefix(state.prefix, embeds=client if head is None
                                                      else torch.cat([head, client])))
                else:
                    kind = prompt_kind(prompt)
                    if kind == "text":
                        id_lists = [emb.token_ids(prompt, chat=False)]
                    elif kind == "texts":
                        id_lists = [emb.token_ids(p, chat=False) for p in prompt]
                    else:
                        id_lists = [prompt] if kind == "ids" else prompt
                    bodies = [emb.with_prefix(state.prefix, ids=ids) for ids in id_lists]
            longest = max(int(b.shape[0]) for b in bodies)
            encoded = [encode_embeds(b) for b in bodies]
            return comp, encoded[0] if len(encoded) == 1 else encoded, longest

        comp, encoded, longest = await run_in_threadpool(build)
        if limit and longest + max_new > limit:
            field_name = "messages" if chat else ("prompt" if body.get("prompt") is not None else "prompt_embeds")
            raise bad_field(field_name, f"is too long: {longest} positions (the user's {state.prefix.shape[0]} "
                            f"prefix vectors included) + {max_new} new tokens > the model's maximum context "
                            f"length {limit}")
        comp["prompt_embeds"] = encoded
        return comp

    # ---------------------------------------------------------------- endpoints
    async def generation(self, request: Request, chat: bool) -> Response:
        self.check_auth(request)
        raw, body = await self.read_body(request)
        validate_generation(body, chat)
        personalize = body.pop("personalize", None)
        modified = personalize is not None
        state, who = self.lookup(body.get("user"), personalize is not False)
        if not body.get("model"):
            body["model"], modified = self.config.base_model, True
        plan = Plan(who, body["model"])
        path = "/v1/chat/completions" if chat else "/v1/completions"
        convert = None
        if state is not None:
            before = body["model"]
            await self.route_adapter(state, body, plan)
            modified |= body["model"] != before
            profile_pending = False
            if state.profile:
                if not chat and body.get("prompt") is None:
                    profile_pending = True
                else:
                    await self.apply_profile(body, state.profile, chat)
                plan.applied.append("profile")
                modified = True
            if state.prefix is not None:
                body = await self.prefix_embeds(body, state, chat, profile_pending)
                plan.applied.append("prefix")
                path, modified = "/v1/completions", True
                if chat:
                    convert = ChatStreamConverter()
            elif profile_pending:  # client embeddings, profile but no prefix: the profile tokens go in front
                body = await self.prefix_embeds(body, UserState(state.user_id, state.profile, _empty_prefix(
                    (await self.embedder()).hidden_size)), chat, True)
        content = json.dumps(body).encode() if modified else raw
        headers = plan.headers()
        self._count("chat" if chat else "completions", plan)
        error_field = "messages" if chat else ("prompt" if body.get("prompt") is not None else "prompt_embeds")
        if body.get("stream"):
            return await self.stream(path, content, headers, convert, error_field)
        try:
            resp = await self.post_cancellable(request, path, content)
        except ClientGone:
            return Response(status_code=499)
        if resp.status_code != 200:
            return upstream_error(resp.status_code, resp.content, error_field, headers)
        if convert is not None:
            return JSONResponse(chat_response(resp.json()), headers=headers)
        return Response(resp.content, media_type="application/json", headers=headers)

    async def completions(self, request: Request) -> Response:
        return await self.generation(request, chat=False)

    async def chat_completions(self, request: Request) -> Response:
        return await self.generation(request, chat=True)

    async def list_models(self, request: Request) -> Response:
        self.check_auth(request)
        r = await self._upstream("GET", "/v1/models")
        return Response(r.content, status_code=r.status_code, media_type="application/json")

    def _count(self, endpoint: str, plan: Plan) -> None:
        key = (endpoint, ",".join(plan.applied) or "none")
        self.requests[key] = self.requests.get(key, 0) + 1

    async def metrics(self, request: Request) -> Response:
        """Prometheus text format, for the same scrapers that read vLLM's own /metrics."""
        lines = ["# HELP llmrec_gateway_requests_total Generation requests forwarded, by endpoint and personalization.",
                 "# TYPE llmrec_gateway_requests_total counter"]
        lines += [f'llmrec_gateway_requests_total{{endpoint="{e}",personalization="{p}"}} {n}'
                  for (e, p), n in sorted(self.requests.items())]
        lines += ["# HELP llmrec_gateway_in_flight Requests open to the vLLM server now.",
                  "# TYPE llmrec_gateway_in_flight gauge", f"llmrec_gateway_in_flight {self.in_flight}",
                  "# HELP llmrec_gateway_in_flight_max Most requests open to the vLLM server at once so far.",
                  "# TYPE llmrec_gateway_in_flight_max gauge", f"llmrec_gateway_in_flight_max {self.max_in_flight}"]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        try:
            r = await self.client.get("/health", timeout=5)
            if r.status_code == 200:
                models = await self.models(refresh=True)
                return JSONResponse({"status": "ready", "models": sorted(models),
                                     "max_model_len": await self.max_model_len()})
        except (httpx.HTTPError, ApiError, ValueError):
            pass
        return JSONResponse({"status": "not ready", "upstream": self.config.upstream}, status_code=503)

    async def recommendations(self, request: Request) -> Response:
        from llmrec.serving.recommendations import (
            candidate_token_prompts,
            parse_request,
            rec_messages,
            scores_from_prompt_logprobs,
        )

        self.check_auth(request)
        _, body = await self.read_body(request)
        rec = parse_request(body, self.config.catalogs)
        state, who = self.lookup(rec.user, rec.personalize)
        model = rec.model or self.config.base_model
        plan = Plan(who, model)
        req_body = {"model": model}
        if state is not None:
            await self.route_adapter(state, req_body, plan)
        catalog = rec.catalog
        history = rec.history
        if history is None:
            history = (state.history if state is not None and state.history else None) or \
                (catalog.histories.get(rec.user, []) if catalog is not None and rec.user else [])
            history = [h for h in history if catalog is not None and h in catalog.index]
        titles = [catalog.title(h) for h in history] if catalog is not None else []
        candidates = rec.candidates
        if not candidates:
            query = " ".join([rec.query, *titles[-8:]])
            pool = catalog.candidate_pool(query, set(history), rec.pool)
            candidates = [(i, catalog.title(i)) for i in pool]
        if rec.k > len(candidates):
            raise bad_field("k", f"only {len(candidates)} candidates are left after removing the user's history, "
                            f"fewer than k={rec.k}")
        emb = await self.embedder()
        messages = rec_messages(titles, rec.query, self.next_item_template, self.rec_template)
        if state is not None and state.profile:
            messages = with_profile_messages(messages, state.profile, self.profile_template)
            plan.applied.append("profile")
        if state is not None and state.prefix is not None:
            plan.notes.append("prefix-not-used-for-scoring")

        def build():
            text = emb.chat_prompt(messages)
            return candidate_token_prompts(emb.tokenizer, text, [t for _, t in candidates])

        prompts, prompt_len = await run_in_threadpool(build)
        self._count("recommendations", plan)
        payload = {"model": req_body["model"], "prompt": prompts, "max_tokens": 1, "temperature": 0,
                   "prompt_logprobs": 0}
        try:
            resp = await self.post_cancellable(request, "/v1/completions", json.dumps(payload).encode())
        except ClientGone:
            return Response(status_code=499)
        if resp.status_code != 200:
            return upstream_error(resp.status_code, resp.content, "candidates", plan.headers())
        scores = scores_from_prompt_logprobs(resp.json(), prompts, prompt_len)
        order = sorted(range(len(candidates)), key=lambda i: (-scores[i], i))[:rec.k]
        items = [{"rank": r + 1, "item_id": candidates[i][0], "title": candidates[i][1], "score": float(scores[i])}
                 for r, i in enumerate(order)]
        out = {"object": "recommendation.list", "user": rec.user, "model": plan.model,
               "catalog": catalog.name if catalog is not None else None, "k": rec.k,
               "candidates_scored": len(candidates), "history_length": len(history),
               "personalization": plan.applied, "items": items}
        return JSONResponse(out, headers=plan.headers())

    # -- adapters: vLLM's runtime LoRA endpoints, with every path confined to the adapter directory
    def _adapter_dir(self) -> Path:
        if self.config.adapter_dir is None:
            raise ApiError(403, "runtime adapter loading is disabled; start the gateway with --adapter-dir DIR")
        return self.config.adapter_dir.resolve()

    async def list_adapters(self, request: Request) -> Response:
        self.check_auth(request)
        models = await self.models(refresh=True)
        loaded = [{"name": n, "path": m.get("root"), "loaded": True} for n, m in models.items() if m.get("parent")]
        available = []
        if self.config.adapter_dir is not None and self.config.adapter_dir.is_dir():
            names = {a["name"] for a in loaded}
            available = [{"name": p.parent.name, "path": str(p.parent), "loaded": False}
                         for p in sorted(self.config.adapter_dir.glob("*/adapter_config.json"))
                         if p.parent.name not in names]
        return JSONResponse({"object": "list", "base_model": self.config.base_model, "data": loaded + available})

    async def load_adapter(self, request: Request) -> Response:
        self.check_auth(request)
        root = self._adapter_dir()
        _, body = await self.read_body(request)
        name = expect(body, "name", (str,), "a string", required=True)
        rel = expect(body, "path", (str,), "a string") or name
        if not ADAPTER_NAME.match(name):
            raise bad_field("name", "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
        if name == self.config.base_model:
            raise bad_field("name", "is the base model's name")
        # resolve() follows symlinks and '..', so an adapter folder that links outside is refused too.
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise bad_field("path", f"must be inside the adapter directory {root}", 403)
        if not (path / "adapter_config.json").is_file():
            raise bad_field("path", f"'{rel}' is not a PEFT adapter folder in the adapter directory", 404)
        async with self._adapter_lock:
            r = await self._upstream("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": str(path)})
            await self.models(refresh=True)
        if r.status_code != 200:
            return upstream_error(r.status_code, r.content, "name", {})
        return JSONResponse({"name": name, "path": str(path), "loaded": True})

    async def unload_adapter(self, request: Request) -> Response:
        self.check_auth(request)
        self._adapter_dir()
        name = request.path_params["name"]
        if name == self.config.base_model:
            raise bad_field("name", "the base model cannot be unloaded")
        async with self._adapter_lock:
            r = await self._upstream("POST", "/v1/unload_lora_adapter", json={"lora_name": name})
            await self.models(refresh=True)
        if r.status_code != 200:
            return upstream_error(r.status_code, r.content, "name", {})
        return JSONResponse({"name": name, "loaded": False})


class _RelayResponse(StreamingResponse):
    """A stream that always closes its source, even when the client vanished mid-stream.

    With ASGI 2.4 servers Starlette learns of a disconnect only when a write fails, and then leaves the
    generator to the garbage collector; closing it here closes the upstream request at once (vLLM then
    aborts the generation). Shielded: Starlette cancels the response when the client leaves, and an
    unshielded close would be cancelled too, leaving vLLM generating for nobody.
    """

    def __init__(self, content, on_close, **kw) -> None:
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()
                await self._on_close()


def _empty_prefix(hidden: int):
    import numpy as np

    return np.zeros((0, hidden), dtype=np.float32)


def upstream_error(status: int, content: bytes, field_name: str, headers: dict) -> Response:
    """vLLM's error, with its ``input_tokens`` parameter renamed to the request field the client sent."""
    try:
        err = json.loads(content)["error"]
        message, param = err.get("message", ""), err.get("param")
    except (ValueError, KeyError, TypeError):
        message, param = content.decode(errors="replace")[:500], None
    if param in ("input_tokens", None) and ("context length" in message or "input tokens" in message):
        param = field_name
        message = f"'{field_name}': {message}"
    return error_response(status if 400 <= status < 600 else 502, message, param, headers)


def create_app(config: GatewayConfig) -> Starlette:
    gw = Gateway(config)

    def guarded(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except ApiError as e:
                return e.response()
            except EmbedsError as e:
                return error_response(400, str(e), e.param)
            except ClientDisconnect:
                return Response(status_code=499)  # gone before its request was complete: nothing to answer

        return endpoint

    @asynccontextmanager
    async def lifespan(app):
        await gw.start()
        try:
            yield
        finally:
            await gw.stop()

    routes = [
        Route("/health", guarded(gw.health), methods=["GET"]),
        Route("/ready", guarded(gw.ready), methods=["GET"]),
        Route("/metrics", guarded(gw.metrics), methods=["GET"]),
        Route("/v1/models", guarded(gw.list_models), methods=["GET"]),
        Route("/v1/completions", guarded(gw.completions), methods=["POST"]),
        Route("/v1/chat/completions", guarded(gw.chat_completions), methods=["POST"]),
        Route("/v1/recommendations", guarded(gw.recommendations), methods=["POST"]),
        Route("/v1/adapters", guarded(gw.list_adapters), methods=["GET"]),
        Route("/v1/adapters", guarded(gw.load_adapter), methods=["POST"]),
        Route("/v1/adapters/{name}", guarded(gw.unload_adapter), methods=["DELETE"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.gateway = gw
    return app
