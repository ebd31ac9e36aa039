"""``llmrec demo``: the whole loop on the embedded default, on 2 CPU cores, in minutes.

Data -> LaMP-format tasks + a leave-one-out recommendation split -> the pretrained backbone ->
a short SFT with LoRA -> the untuned and the tuned model evaluated side by side (LaMP tasks through
vLLM's OpenAI-compatible server, which serves the base model and the adapter at once; next-item
ranking by candidate likelihood) -> a results table and a JSON report.

This module is the application layer (like the CLI): it may import training and eval.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmrec.errors import LlmrecError

LAMP_TASKS = {"rating": "LaMP_3", "title": "LaMP_4"}


@dataclass
class DemoConfig:
    backbone: str = field(default="smollm2-135m-instruct", metadata={"help": "backbone name or local HF folder"})
    data: str | None = field(default=None, metadata={"help": "real data (any loader format); default: synthetic"})
    format: str = field(default="auto", metadata={"help": "loader format of --data"})
    out: str = field(default="runs/demo", metadata={"help": "output folder (report, adapter, curves)"})
    users: int = field(default=200, metadata={"help": "synthetic users"})
    items: int = field(default=300, metadata={"help": "synthetic items"})
    seed: int = field(default=0, metadata={"help": "seed of data, sampling and training"})
    train_per_task: int = field(default=64, metadata={"help": "SFT examples per task"})
    eval_n: int = field(default=32, metadata={"help": "evaluation questions per LaMP task / users for ranking"})
    max_steps: int = field(default=16, metadata={"help": "SFT optimizer steps"})
    batch_size: int = field(default=8, metadata={"help": "SFT batch size"})
    learning_rate: float = field(default=2e-3, metadata={"help": "SFT learning rate (LoRA)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_layers: int = field(default=10, metadata={"help": "adapt only the top N transformer layers (CPU speed)"})
    k: int = field(default=1, metadata={"help": "profile items retrieved (BM25) into each LaMP prompt"})
    negatives: int = field(default=19, metadata={"help": "sampled negatives per ranking case"})

    def __post_init__(self):
        for name in ("users", "items", "train_per_task", "eval_n", "max_steps", "batch_size", "lora_r", "lora_layers"):
            if getattr(self, name) < 1:
                raise LlmrecError(f"--{name.replace('_', '-')} must be >= 1")


class _Steps:
    """Numbered step lines with elapsed times, so a user sees where the minutes go."""

    def __init__(self, total: int):
        self.total, self.n, self.t0, self.times = total, 0, time.perf_counter(), {}
        self._name, self._t = None, None

    def start(self, name: str) -> None:
        self.end()
        self.n += 1
        self._name, self._t = name, time.perf_counter()
        print(f"[{self.n}/{self.total}] {name} ...", flush=True)

    def end(self) -> None:
        if self._name is not None:
            dt = time.perf_counter() - self._t
            self.times[self._name] = round(dt, 1)
            print(f"      done in {dt:.1f}s", flush=True)
            self._name = None


def _load_data(cfg: DemoConfig):
    if cfg.data:
        from llmrec.data.loading import load_recdata

        return load_recdata(cfg.data, cfg.format)
    from llmrec.data.synthetic import make_synthetic

    return make_synthetic(n_users=cfg.users, n_items=cfg.items, seed=cfg.seed)


def _popularity_scores(train, cases):
    from collections import Counter

    import numpy as np

    counts = Counter(train.interactions["item_id"])
    return [np.array([counts.get(c, 0) for c in case.candidates], dtype=float) for case in cases]


def _rank_eval(model_path: Path, adapter: Path, cases, titles: dict[str, str],
               progress: bool = True) -> dict[str, dict[str, float]]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.backbone import tokenizer_folder
    from llmrec.eval.llm_ranking import candidate_scores, rank_cases
    from llmrec.recommend.next_item import NextItemTemplate

    tok = AutoTokenizer.from_pretrained(tokenizer_folder(model_path, adapter))
    template = NextItemTemplate.load()
    prompts = [template.messages(c.history) for c in cases]
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter))
    cands = [[titles.get(i) or i for i in c.candidates] for c in cases]
    targets = [titles.get(c.target) or c.target for c in cases]
    with model.disable_adapter():
        s_base = candidate_scores(model, tok, prompts, cands, progress=progress)
    s_tuned = candidate_scores(model, tok, prompts, cands, progress=progress)
    return {"untuned": rank_cases(s_base, cands, targets), "tuned": rank_cases(s_tuned, cands, targets)}


def run_demo(cfg: DemoConfig) -> dict:
    """Runs the demo; returns the report (also written to ``<out>/report.json``)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = _Steps(6)
    report: dict = {"config": asdict(cfg)}

    steps.start("building data: LaMP-format tasks and a leave-one-out recommendation split")
    from llmrec.data.build_lamp import BuildLampConfig, build_lamp, write_lamp
    from llmrec.data.splits import leave_one_out
    from llmrec.recommend.next_item import make_cases, sft_examples

    data = _load_data(cfg)
    print(f"      {data.summary()}")
    report["data"] = {"name": data.name, "users": len(data.users), "items": len(data.items),
                      "interactions": len(data.interactions), "filtered": dict(data.filtered.counts)}
    lamp_dirs = {}
    for task in LAMP_TASKS:
        build = build_lamp(data, BuildLampConfig(task=task, split="user", seed=cfg.seed, valid_frac=0.25,
                                                 test_frac=0.0, max_profile=20))
        lamp_dirs[task] = out / "lamp" / task
        write_lamp(build, lamp_dirs[task])
    split = leave_one_out(data)
    cases = make_cases([split.train, split.valid], split.test, n_negatives=cfg.negatives, seed=cfg.seed,
                       max_users=cfg.eval_n)
    titles = dict(zip(data.items["item_id"], data.items["title"]))

    steps.start(f"getting the backbone {cfg.backbone}")
    from llmrec.backbone import backbone_names, get_backbone, resolve_backbone

    # A catalog name is fetched/verified; anything else must be a local folder. A failing get
    # (e.g. a corrupted cache) reports its own error instead of falling back to the path lookup.
    if cfg.backbone in backbone_names():
        model_path = get_backbone(cfg.backbone)
    else:
        model_path = resolve_backbone(cfg.backbone)
    report["backbone"] = {"name": cfg.backbone, "path": str(model_path)}

    steps.start(f"fine-tuning with LoRA (r={cfg.lora_r}, {cfg.max_steps} steps)")
    from trl import SFTConfig

    from llmrec.training.sft import default_lora_config, train_sft
    from llmrec.training.sft_data import lamp_sft_examples

    rng = random.Random(cfg.seed)
    examples = []
    for task in LAMP_TASKS:
        ex = lamp_sft_examples(lamp_dirs[task], "train", retriever="bm25", k=cfg.k)
        examples += rng.sample(ex, min(cfg.train_per_task, len(ex)))
    rec_ex = sft_examples(split.train)
    examples += rng.sample(rec_ex, min(cfg.train_per_task, len(rec_ex)))
    rng.shuffle(examples)
    adapter = out / "adapter"
    if adapter.exists():
        import shutil

        shutil.rmtree(adapter)  # a demo run starts fresh; resuming belongs to 'llmrec train'
    sft_cfg = SFTConfig(output_dir=str(adapter), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size,
                        learning_rate=cfg.learning_rate, lr_scheduler_type="cosine", warmup_steps=2,
                        logging_steps=2, save_strategy="no", report_to=[], use_cpu=True, bf16=False,
                        max_length=512, seed=cfg.seed)
    n_layers = json.loads((Path(model_path) / "config.json").read_text())["num_hidden_layers"]
    lora = default_lora_config(r=cfg.lora_r, alpha=2 * cfg.lora_r, top_layers=min(cfg.lora_layers, n_layers),
                               num_layers=n_layers)
    train_sft(model_path, examples, sft_cfg, lora)
    from llmrec.training.metrics_log import read_metrics

    losses = [r["loss"] for r in read_metrics(adapter / "metrics.jsonl") if "loss" in r]
    report["training"] = {"examples": len(examples), "steps": cfg.max_steps, "first_loss": losses[0],
                          "last_loss": losses[-1], "curve": str(adapter / "metrics.png")}

    steps.start("evaluating LaMP tasks through vLLM (untuned backbone and tuned adapter on one server)")
    from llmrec.eval.lamp_predict import Decoding, run_live
    from llmrec.serving.vllm_server import VLLMServer, lora_args

    report["lamp"] = {}
    with VLLMServer(model_path, served_model_name="base",
                    extra_args=lora_args([f"tuned={adapter}"], cfg.lora_r)) as server:
        for task, lamp_task in LAMP_TASKS.items():
            d = lamp_dirs[task]
            report["lamp"][lamp_task] = {}
            for label, name in (("untuned", "base"), ("tuned", "tuned")):
                res = run_live(endpoint=server.base_url, model=name, questions_path=d / "dev_questions.json",
                               golds_path=d / "dev_outputs.json", task=lamp_task, retriever="bm25", k=cfg.k,
                               decoding=Decoding(max_tokens=0, seed=cfg.seed), limit=cfg.eval_n, progress=True)
                report["lamp"][lamp_task][label] = res.report["scores"]
                (out / f"lamp_{lamp_task}_{label}_report.json").write_text(json.dumps(res.report, indent=2))

    steps.start("evaluating next-item ranking (held-out item vs sampled negatives)")
    import numpy as np

    from llmrec.eval.llm_ranking import rank_cases

    ranking = _rank_eval(model_path, adapter, cases, titles)
    pop = _popularity_scores(split.train, cases)
    ranking["popularity"] = rank_cases(pop, [c.candidates for c in cases], [c.target for c in cases])
    rnd = np.random.default_rng(cfg.seed)
    ranking["random"] = rank_cases([rnd.random(len(c.candidates)) for c in cases],
                                   [c.candidates for c in cases], [c.target for c in cases])
    report["ranking"] = {"cases": len(cases), "candidates": cfg.negatives + 1, "metrics": ranking}

    steps.start("writing the report")
    steps.end()
    report["timing_s"] = {**steps.times, "total": round(time.perf_counter() - steps.t0, 1)}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print()
    print(results_table(report))
    print(f"\nreport: {out / 'report.json'}   training curve: {report['training']['curve']}")
    return report


def _better(untuned: float, tuned: float, lower_is_better: bool) -> str:
    if abs(tuned - untuned) < 1e-12:
        return "tie"
    return "tuned" if (tuned < untuned) == lower_is_better else "untuned"


def results_table(report: dict) -> str:
    """A plain-text table: metric rows, untuned vs tuned (and baselines for ranking)."""
    rows = [("task", "metric", "untuned", "tuned", "better")]
    lower_better = {"MAE", "RMSE"}
    for task, res in report["lamp"].items():
        for metric in res["untuned"]:
            u, t = res["untuned"][metric], res["tuned"][metric]
            rows.append((task, metric, f"{u:.4f}", f"{t:.4f}", _better(u, t, metric in lower_better)))
    rk = report["ranking"]["metrics"]
    for metric in rk["untuned"]:
        u, t = rk["untuned"][metric], rk["tuned"][metric]
        rows.append(("next-item", metric, f"{u:.4f}", f"{t:.4f}", _better(u, t, False)))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    base = ", ".join(f"{name}: " + ", ".join(f"{m}={v:.3f}" for m, v in rk[name].items())
                     for name in ("popularity", "random"))
    n = report["ranking"]
    lines.append(f"\nnext-item: {n['cases']} users, {n['candidates']} candidates each; baselines: {base}")
    return "\n".join(lines)
