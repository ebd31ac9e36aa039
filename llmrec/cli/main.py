"""``llmrec``: one command, a subcommand per job (like TRL's ``trl`` dispatcher).

Each subcommand lives in ``llmrec/cli/<name>.py`` with ``register(subparsers)``; heavy imports
(torch, vllm) happen inside the handlers so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from llmrec import __version__
from llmrec.errors import LlmrecError

SUBCOMMANDS = ["data", "backbone", "train", "eval", "serve", "users", "demo", "carbon", "cf", "rgcd", "sailrec"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmrec",
        description="LLM-based recommendation and personalization: build data, get a backbone, "
        "fine-tune, serve and evaluate.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'llmrec COMMAND --help' for the options of each command. "
        "Set LLMREC_DEBUG=1 (or pass --debug) to see full tracebacks.",
    )
    parser.add_argument("--version", action="version", version=f"llmrec {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"llmrec.cli.{name}").register(sub)
    return parser


def _one_line(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return " ".join(msg.split())


def main(argv: list[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            # A pipe's reader that left early (`llmrec ... | head -1`) makes this flush fail here, where it is
            # handled, rather than in the interpreter's last flush, which prints a traceback-like message.
            sys.stdout.flush()
    except BrokenPipeError:
        # Quiet, as Unix tools end on SIGPIPE; stdout goes to devnull so nothing tries to write to the pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # the status a shell shows for a process ended by SIGPIPE (13)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    # Commands that forward flags to another parser (TRL's for recipes, vLLM's for serve) set
    # ``passthrough``; for every other command an unknown flag is an error, as usual.
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.extra = rest
    debug = args.debug or os.environ.get("LLMREC_DEBUG") == "1"
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("llmrec: interrupted", file=sys.stderr)
        return 130
    except (LlmrecError, FileNotFoundError, IsADirectoryError, PermissionError, json.JSONDecodeError) as e:
        if debug:
            raise
        print(f"llmrec {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
