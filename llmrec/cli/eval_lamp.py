"""``llmrec eval lamp``: score LaMP predictions (drop-in for the official eval_task.py) or make them live."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from llmrec.cli.common import add_command
from llmrec.errors import LlmrecError

DESCRIPTION = """\
Score LaMP / LongLaMP predictions, offline, with the official semantics and result keys
(accuracy/f1 for LaMP_1-2, MAE/RMSE for LaMP_3, rouge-1/rouge-L for LaMP_4-7 and LongLaMP).

Offline (same flags as LaMP's eval/eval_task.py; writes the same result JSON):
  llmrec eval lamp --golds_json dev_outputs.json --preds_json preds.json \\
      --task_name LaMP_3 --output_file results.json

Live (prompts a model behind any OpenAI-compatible endpoint, e.g. `llmrec serve` / vLLM):
  llmrec eval lamp --endpoint http://127.0.0.1:8000/v1 --model NAME \\
      --questions dev_questions.json --golds_json dev_outputs.json --task_name LaMP_3 \\
      --output_file report.json --preds_out preds.json --retriever bm25 --k 1

The live report records model, endpoint, template (name + sha256), retriever and k, decoding,
inputs' sha256, failures and timings. Templates: prompts/lamp/<task>.yaml. See docs/lamp_eval.md.
"""


def register(sub) -> None:
    p = add_command(
        sub,
        "lamp",
        help="score LaMP predictions offline (official semantics) or from a live model",
        description=DESCRIPTION,
    )
    g = p.add_argument_group("scoring (both modes)")
    g.add_argument(
        "--golds_json",
        "--golds-json",
        dest="golds_json",
        required=True,
        help="gold outputs: {'task': ..., 'golds': [{'id', 'output'}]} (optional 'labels')",
    )
    g.add_argument(
        "--task_name",
        "--task-name",
        dest="task_name",
        required=True,
        help="LaMP_1 .. LaMP_7, LaMP_2N, LongLaMP_2 .. LongLaMP_4, or a custom task whose golds carry 'labels'",
    )
    g.add_argument(
        "--output_file",
        "--output-file",
        dest="output_file",
        required=True,
        help="where to write the results JSON (offline: the official keys only; live: the full report)",
    )
    g.add_argument(
        "--preds_json", "--preds-json", dest="preds_json", help="offline: predictions in the outputs format to score"
    )
    live = p.add_argument_group("live model (instead of --preds_json)")
    live.add_argument("--endpoint", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    live.add_argument("--model", help="served model name (see GET /v1/models)")
    live.add_argument("--questions", help="questions JSON: [{'id', 'input', 'profile': [...]}]")
    live.add_argument("--preds_out", "--preds-out", dest="preds_out", help="also write the predictions here")
    live.add_argument("--retriever", default="bm25", help="profile retriever: bm25, dense, none (default: bm25)")
    live.add_argument("--k", type=int, default=1, help="profile items per prompt (default: 1)")
    live.add_argument("--template", help="prompt template YAML (default: prompts/lamp/<task>.yaml)")
    live.add_argument(
        "--api",
        choices=["chat", "completions"],
        default="chat",
        help="chat: /v1/chat/completions (model's chat template; default); completions: raw prompt",
    )
    live.add_argument(
        "--send_user",
        "--send-user",
        dest="send_user",
        action="store_true",
        help="send each question's user_id as OpenAI's 'user' field: the llmrec gateway then applies that "
        "user's stored personalization (TAP-PER prefix, profile, adapter); combine with --retriever none",
    )
    live.add_argument("--concurrency", type=int, default=8, help="requests in flight (default: 8)")
    live.add_argument(
        "--max-tokens",
        "--max_tokens",
        dest="max_tokens",
        type=int,
        default=0,
        help="new tokens per answer (default: the template's max_tokens)",
    )
    live.add_argument("--temperature", type=float, default=0.0, help="default 0 (greedy)")
    live.add_argument("--top-p", "--top_p", dest="top_p", type=float, default=1.0, help="default 1.0")
    live.add_argument("--seed", type=int, default=0, help="sampling seed sent with every request (default: 0)")
    live.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries per request on connection errors, timeouts, 429, 5xx (exponential backoff)",
    )
    live.add_argument("--timeout", type=float, default=120.0, help="seconds per request attempt (default: 120)")
    live.add_argument("--limit", type=int, help="only the first N questions (golds restricted to them)")
    live.add_argument(
        "--api-key",
        "--api_key",
        dest="api_key",
        default=None,
        help="API key (default: $OPENAI_API_KEY, else 'EMPTY'); never written to the report",
    )
    live.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.set_defaults(func=run)


def _write_json(path: str, obj) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    if args.endpoint:
        return _run_live(args)
    if not args.preds_json:
        raise LlmrecError(
            "give --preds_json (score predictions) or --endpoint with --model and --questions (generate them)"
        )
    from llmrec.data.lamp_format import read_outputs
    from llmrec.eval.lamp_metrics import count_unparseable, evaluate_files

    results = evaluate_files(args.golds_json, args.preds_json, args.task_name)
    _write_json(args.output_file, results)
    golds, preds = read_outputs(args.golds_json), read_outputs(args.preds_json)
    bad = count_unparseable(args.task_name, preds.outputs, golds.outputs, golds.labels or preds.labels or None)
    if bad:
        print(
            f"note: {bad} of {len(golds.outputs)} predictions are not a valid answer for {args.task_name} "
            "(scored as wrong / worst rating)",
            file=sys.stderr,
        )
    print(json.dumps(results))
    return 0


def _run_live(args: argparse.Namespace) -> int:
    import os

    from llmrec.data.lamp_format import write_outputs
    from llmrec.eval.lamp_predict import ClientOptions, Decoding, run_live

    missing = [f"--{n}" for n in ("model", "questions") if not getattr(args, n)]
    if missing:
        raise LlmrecError(f"--endpoint needs {' and '.join(missing)}")
    if args.preds_json:
        raise LlmrecError("give either --preds_json (score existing predictions) or --endpoint (generate them)")
    if args.concurrency < 1 or args.retries < 0 or (args.limit is not None and args.limit < 1):
        raise LlmrecError("--concurrency and --limit must be >= 1, --retries >= 0")
    result = run_live(
        endpoint=args.endpoint,
        model=args.model,
        questions_path=args.questions,
        golds_path=args.golds_json,
        task=args.task_name,
        retriever=args.retriever,
        k=args.k,
        template_path=args.template,
        decoding=Decoding(
            api=args.api, max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
        ),
        client=ClientOptions(concurrency=args.concurrency, retries=args.retries, timeout_s=args.timeout),
        api_key=args.api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        limit=args.limit,
        progress=args.progress,
        send_user=args.send_user,
    )
    report = result.report
    report["command"] = " ".join(["llmrec", "eval", "lamp", *_argv_for_report(args)])
    if args.preds_out:
        write_outputs(args.preds_out, args.task_name, result.predictions)
        report["predictions"] = str(args.preds_out)
    _write_json(args.output_file, report)
    if report["n_failures"]:
        print(
            f"warning: {report['n_failures']} of {report['n_questions']} requests failed after retries "
            f"(scored as empty answers); first: {report['failures'][0]['error']}",
            file=sys.stderr,
        )
    print(
        json.dumps(
            {"task": report["task"], **report["scores"], "n": report["n_questions"], "failures": report["n_failures"]}
        )
    )
    return 0


def _argv_for_report(args: argparse.Namespace) -> list[str]:
    """The options that define the run, as flags (the API key is left out)."""
    skip = {"func", "command", "eval_command", "debug", "api_key", "progress", "extra", "passthrough"}
    out = []
    for k, v in vars(args).items():
        if k in skip or v is None or v is False or (k == "max_tokens" and not v):
            continue
        out += [f"--{k}", str(v)]
    return out
