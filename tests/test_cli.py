"""Every CLI command has --help; bad input gives one clear line, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llmrec.cli.main import build_parser, main


def _all_command_paths(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _all_command_paths(sub, prefix + (name,))


COMMANDS = list(_all_command_paths(build_parser()))


def test_top_level_commands_present():
    top = {c[0] for c in COMMANDS}
    assert {"data", "eval", "backbone", "train", "serve", "demo"} <= top


@pytest.mark.parametrize("path", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_help_of_every_command(path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: llmrec " + " ".join(path))


def test_console_script_help_is_fast_and_clean():
    r = subprocess.run([sys.executable, "-m", "llmrec.cli.main", "--help"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "demo" in r.stdout
    # --help must not import the heavy stack
    code = ("import sys; from llmrec.cli.main import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'vllm', 'transformers', 'datasets') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr


def test_output_into_a_pipe_closed_early_ends_quietly(tmp_path):
    # `llmrec eval rerec-compare ... | head -1`: the reader is gone before llmrec writes; before the fix this
    # ended in a BrokenPipeError traceback and status 1.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        r = subprocess.run([sys.executable, "-m", "llmrec.cli.main", "backbone", "list", "--cache",
                            str(tmp_path)], stdout=write_end,
                           stderr=subprocess.PIPE, text=True, check=False)
    finally:
        os.close(write_end)
    assert (r.returncode, r.stderr) == (141, "")
