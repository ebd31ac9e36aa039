"""``llmrec eval ...``: LaMP harness (offline, drop-in for the official script) and ranking metrics."""

from __future__ import annotations

import importlib

from llmrec.cli.common import add_command

_MODULES = ["llmrec.cli.eval_lamp", "llmrec.cli.eval_ranking", "llmrec.cli.eval_rerec", "llmrec.cli.eval_rerec_compare",
            "llmrec.cli.eval_bump"]


def register(sub) -> None:
    p = add_command(sub, "eval", help="score predictions: LaMP tasks (offline official semantics) and ranking runs")
    esub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND", required=True)
    for m in _MODULES:
        importlib.import_module(m).register(esub)
