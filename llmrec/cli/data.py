"""``llmrec data ...``: load, inspect, synthesize, split, download and turn data into LaMP tasks."""

from __future__ import annotations

import importlib

from llmrec.cli.common import add_command

# Each module registers its own ``data`` subcommands.
_MODULES = ["llmrec.cli.data_load", "llmrec.cli.data_lamp", "llmrec.cli.data_get", "llmrec.cli.data_bump"]


def register(sub) -> None:
    p = add_command(sub, "data", help="load, inspect, synthesize, split and download data sets; build LaMP tasks")
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    for m in _MODULES:
        importlib.import_module(m).register(dsub)
