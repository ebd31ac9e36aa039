"""The ``sailrec`` recipe: ``llmrec train sailrec --config configs/sailrec_ml100k.yaml [--field value ...]``.

Flags are llmrec's :class:`~llmrec.training.sailrec.SailRecConfig`, transformers' ``TrainingArguments`` and
TRL's ``ModelConfig`` (``use_peft`` adds a shared LoRA that trains with the projector), parsed by TRL's
``TrlParser``. The backbone stays frozen; transformers' ``Trainer`` trains the soft-token projector through a
wrapper module (:class:`~llmrec.training.sailrec.SailRecModel`).

Writes to ``output_dir``: ``sailrec_projector.json`` + ``sailrec_projector.safetensors`` (the projector and the
settings needed to rebuild the prompts: backbone, CF folder, steering schedule, codebook), ``adapter/`` with a
shared LoRA, ``metrics.jsonl``, and ``eval.json``: NDCG@10 / HR@10 / HR@1 / MRR of the held-out test item among
``1 + n_negatives`` candidates for SAILRec (steered), SAILRec without steering (the same soft tokens as stock
vLLM serves them), the text-only LLM recommender (same prompt, no soft tokens) and the CF model alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch


def parse(argv: list[str], prog: str):
    from transformers import TrainingArguments
    from trl import ModelConfig, TrlParser

    from llmrec.training.sailrec import SailRecConfig

    parser = TrlParser((SailRecConfig, TrainingArguments, ModelConfig), prog=prog)
    return parser.parse_args_and_config(argv)


def main(argv: list[str], prog: str = "llmrec train sailrec") -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, train_args, model_args = parse(argv, prog)
    from llmrec.backbone import resolve_backbone

    model_path = resolve_backbone(model_args.model_name_or_path or args.backbone)
    out, report = train_sailrec(model_path, args, train_args, model_args)
    print(f"saved to {out} (metrics: {out / 'metrics.jsonl'}, eval: {out / 'eval.json'})")
    if report.get("results"):
        print(results_table(report))
    return 0


def results_table(report: dict) -> str:
    rows = report["results"]
    names = list(next(iter(rows.values())))
    lines = [f"{'':22s}" + "".join(f"{n:>10s}" for n in names)]
    lines += [f"{k:22s}" + "".join(f"{v[n]:10.4f}" for n in names) for k, v in rows.items()]
    for pair, c in report.get("paired_ndcg@10", {}).items():
        lines.append(f"{pair}: NDCG@10 {c['mean_diff']:+.4f} (95% CI {c['ci95'][0]:+.4f} .. {c['ci95'][1]:+.4f}, "
                     f"Wilcoxon p {c['wilcoxon_p']:.3f}; {c['wins']} users better, {c['losses']} worse)")
    return f"{report['cases']} users, 1 + {report['n_negatives']} candidates each\n" + "\n".join(lines)


def _trainer_class():
    from llmrec.sailrec.projector import PROJECTOR_WEIGHTS, save_projector
    from llmrec.training.side_module_trainer import side_module_trainer

    def loss_parts(model) -> dict:  # the last batch's loss parts (LM, item and user alignment)
        return {k: round(v, 5) for k, v in model.last.items()}

    return side_module_trainer("projector", save_projector, PROJECTOR_WEIGHTS, loss_parts)


def build_model(model_path, args, tokenizer, data, model_args=None):
    """The wrapper model (frozen backbone with steering, fresh projector, CF tables, text, codebook profiles)."""
    from transformers import AutoModelForCausalLM

    from llmrec.sailrec.codebook import residual_codebook, user_profiles
    from llmrec.sailrec.projector import SoftTokenProjector
    from llmrec.training.sailrec import SailRecModel, cf_histories, item_text_embeddings
    from llmrec.training.tapper import freeze, mean_embedding_norm

    backbone = freeze(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32))
    if model_args is not None and model_args.use_peft:
        from peft import get_peft_model
        from trl import get_peft_config

        backbone = get_peft_model(backbone, get_peft_config(model_args))
    cf = data.cf
    text = item_text_embeddings(args, backbone, tokenizer, cf, data.titles)
    book = residual_codebook(text.numpy(), args.codebook_codes, args.codebook_levels, seed=0)
    profiles = torch.from_numpy(user_profiles(book.codes, cf_histories(cf), args.codebook_codes))
    hidden = backbone.config.hidden_size
    proj = SoftTokenProjector(cf.user_emb.shape[1], cf.item_emb.shape[1], hidden, text.shape[1],
                              args.codebook_levels, args.codebook_codes, args.projector_width,
                              mean_embedding_norm(backbone))
    on = args.align
    from llmrec.sailrec.steering import num_layers

    model = SailRecModel(backbone, proj, torch.from_numpy(cf.user_emb), torch.from_numpy(cf.item_emb), text, profiles,
                         args.schedule(num_layers(backbone)), args.item_align_weight if on else 0.0,
                         args.user_align_weight if on else 0.0)
    return model


def train_sailrec(model_path, args, train_args, model_args=None, callbacks: list | None = None):
    """Trains the projector, saves it, ranks the evaluation users; returns ``(output_dir, eval report)``."""
    from transformers import AutoTokenizer, set_seed

    from llmrec.sailrec.layout import SailRecTemplate
    from llmrec.training.metrics_log import JsonlMetricsCallback
    from llmrec.training.sailrec import SailRecCollator, SailRecDataset, load_data, train_rows

    out = Path(train_args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    template = SailRecTemplate.load(args.template)
    data = load_data(args)
    set_seed(train_args.seed)
    model = build_model(model_path, args, tokenizer, data, model_args)
    rows = train_rows(data, tokenizer, template, args.max_train_users)
    train_args.remove_unused_columns = False  # the wrapper's inputs are not a PreTrainedModel's
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    extra = {"backbone": str(model_path), "cf_dir": str(Path(args.cf_dir).resolve()), "data": args.data,
             "template": args.template, "schedule": model.bias.tolist(), "steer": args.steer, "align": args.align,
             "text_embedder": args.text_embedder, "codebook": [args.codebook_levels, args.codebook_codes],
             "train_examples": len(rows), "n_negatives": args.n_negatives, "eval_seed": args.eval_seed}
    trainer = _trainer_class()(model=model, args=train_args, train_dataset=SailRecDataset(rows),
                               data_collator=SailRecCollator(pad),
                               callbacks=[JsonlMetricsCallback(out / "metrics.jsonl"), *(callbacks or [])],
                               module_extra=extra)
    from transformers.trainer_utils import get_last_checkpoint

    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(out)) if out.is_dir() else None)
    trainer.save_model(str(out))
    report = evaluate(model, data, tokenizer, template, args)
    Path(out, "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    return out, report


def evaluate(model, data, tokenizer, template, args, progress: bool = True) -> dict:
    """Ranking metrics of the evaluation users' test items for SAILRec, its unsteered serving, text only, CF.

    Also each system's per-user rank of the target (``ranks``, in ``user_ids`` order) and paired per-user NDCG@10
    comparisons of SAILRec against every other system (``paired_ndcg@10``: mean difference, 95% bootstrap
    interval, Wilcoxon p, wins / losses / ties): the sampling error of the evaluation users themselves.
    """
    from llmrec.eval.llm_ranking import ndcg_at_k_of_ranks, paired_comparison, target_ranks
    from llmrec.training.sailrec import cf_scores, rank, score_cases

    report = {"cases": len(data.cases), "n_negatives": args.n_negatives, "schedule": model.bias.tolist(),
              "results": {}}
    if not data.cases:
        return report
    scores = {"sailrec": score_cases(model, data, tokenizer, template, progress=progress)}
    if any(model.bias.tolist()):
        scores["sailrec_unsteered"] = score_cases(model, data, tokenizer, template, steer=False, progress=progress)
    if args.eval_text_only:
        scores["text_only"] = score_cases(model, data, tokenizer, template, cf_tokens=False, progress=progress)
    scores["cf"] = cf_scores(data)
    report["results"] = {name: rank(s, data) for name, s in scores.items()}
    cands, targets = [c.candidates for c in data.cases], [c.target for c in data.cases]
    ranks = {name: target_ranks(s, cands, targets) for name, s in scores.items()}
    report["user_ids"] = [c.user_id for c in data.cases]
    report["ranks"] = {name: r.tolist() for name, r in ranks.items()}
    own = ndcg_at_k_of_ranks(ranks["sailrec"])
    report["paired_ndcg@10"] = {f"sailrec - {name}": paired_comparison(own, ndcg_at_k_of_ranks(r))
                                for name, r in ranks.items() if name != "sailrec"}
    return report


def load_run(run_dir, max_eval_users: int = 8):
    """A trained run rebuilt for inference: ``(model, data, tokenizer, template, meta)``.

    The alignment targets are not rebuilt (they only matter for training): the model's alignment weights are 0.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.sailrec.layout import SailRecTemplate
    from llmrec.sailrec.projector import load_projector
    from llmrec.training.sailrec import SailRecConfig, SailRecModel, load_data
    from llmrec.training.tapper import freeze

    proj, meta = load_projector(run_dir)
    # Runs saved before n_negatives / eval_seed were recorded used the defaults.
    same = {k: meta[k] for k in ("n_negatives", "eval_seed") if k in meta}
    cfg = SailRecConfig(backbone=meta["backbone"], cf_dir=meta["cf_dir"], data=meta.get("data"),
                        template=meta.get("template"), max_eval_users=max_eval_users, **same)
    data = load_data(cfg)
    tokenizer = AutoTokenizer.from_pretrained(meta["backbone"])
    backbone = freeze(AutoModelForCausalLM.from_pretrained(meta["backbone"], dtype=torch.float32))
    if Path(run_dir, "adapter").is_dir():
        from peft import PeftModel

        backbone = PeftModel.from_pretrained(backbone, str(Path(run_dir, "adapter")))
    cf = data.cf
    model = SailRecModel(backbone, proj, torch.from_numpy(cf.user_emb), torch.from_numpy(cf.item_emb),
                         torch.zeros(1, 1), torch.zeros(1, 1, 1), meta["schedule"], 0.0, 0.0)
    model.eval()
    return model, data, tokenizer, SailRecTemplate.load(cfg.template), meta


def attention_report(run_dir, users: int = 8, out_png: str | Path | None = None) -> dict:
    """Per-layer attention mass on the CF tokens without and with the run's steering, over ``users`` prompts.

    Writes ``out_png`` (default ``RUN_DIR/attention.png``) and the numbers next to it as JSON; returns them.
    """
    from llmrec.sailrec.steering import cf_attention_mass
    from llmrec.training.sailrec import case_layout

    model, data, tokenizer, template, _ = load_run(run_dir, users)
    before, after = [], []
    for case in data.cases:
        lay = case_layout(data, case, tokenizer, template)
        t = lambda v: torch.tensor([v], dtype=torch.long)
        su, si = t(lay.slot_user), t(lay.slot_item)
        with torch.no_grad():
            x = model.embed(t(lay.ids), su, si)
        cf = (su >= 0) | (si >= 0)
        mask = torch.ones_like(su)
        before.append(cf_attention_mass(model.backbone, x, cf, mask, None))
        after.append(cf_attention_mass(model.backbone, x, cf, mask, model.bias))
    report = {"run": str(run_dir), "users": len(data.cases), "schedule": model.bias.tolist(),
              "cf_tokens_per_prompt": float(np.mean([len(case_layout(data, c, tokenizer, template).cf_positions)
                                                     for c in data.cases])) if data.cases else 0.0,
              "mass_unsteered": torch.stack(before).mean(0).tolist() if before else [],
              "mass_steered": torch.stack(after).mean(0).tolist() if after else []}
    png = Path(out_png) if out_png else Path(run_dir, "attention.png")
    plot_attention(report, png)
    png.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    report["png"] = str(png)
    return report


def plot_attention(report: dict, png: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = np.arange(len(report["mass_unsteered"]))
    fig, ax1 = plt.subplots(figsize=(8, 3.8))
    ax1.plot(layers, report["mass_unsteered"], marker="o", ms=3, label="before steering (stock vLLM)")
    ax1.plot(layers, report["mass_steered"], marker="s", ms=3, label="after steering")
    ax1.set(xlabel="layer", ylabel="attention mass on CF tokens",
            title=f"SAILRec: attention on CF tokens per layer ({report['users']} prompts)")
    ax1.grid(alpha=0.3)
    ax2 = ax1.twinx()
    ax2.bar(layers, report["schedule"], alpha=0.15, color="gray", label="bias (logits)")
    ax2.set_ylabel("steering bias (logits)")
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax1.legend(h1 + h2, l1 + l2, fontsize=8, loc="upper left")
    fig.tight_layout()
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return Path(png)
