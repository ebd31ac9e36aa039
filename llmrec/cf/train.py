"""The training loop shared by the three CF models: negative sampling, Adam, validation, early stopping.

A plain loop rather than a Trainer: one epoch is a few hundred tiny steps and validation is a
full-catalog ranking, which neither HF's Trainer nor Lightning would add anything to.
"""

from __future__ import annotations

import copy
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from llmrec.cf.config import METRICS, MODELS, STOP_METRIC, VALID_METRICS, CFConfig
from llmrec.cf.interactions import CFData, build_cf_data
from llmrec.data.schema import RecData
from llmrec.errors import LlmrecError


@dataclass
class CFResult:
    """A trained model (best validation state restored), its data and everything measured."""

    model: Any  # torch.nn.Module with the llmrec.cf model interface (loss, embeddings, dot_product)
    data: CFData
    config: CFConfig
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    out: Path | None = None


def model_class(name: str):
    """The class registered in ``MODELS`` under ``name`` (imports torch and PyG)."""
    if name not in MODELS:
        raise LlmrecError(f"unknown CF model '{name}'; valid models: {', '.join(MODELS)}")
    module, attr = MODELS[name].split(":")
    return getattr(importlib.import_module(module), attr)


def build_model(cfg: CFConfig, cf: CFData):
    return model_class(cfg.model)(cf.n_users, cf.n_items, cfg, train_pairs=(cf.train_users, cf.train_items))


def resolve_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise LlmrecError(f"device '{name}' asked for, but torch sees no CUDA device")
    return torch.device(name)


def load_data(cfg: CFConfig) -> CFData:
    """Loads ``cfg.data`` with the data layer and splits it leave-one-out."""
    from llmrec.data.loading import load_recdata

    if not cfg.data:
        raise LlmrecError("no data given: pass --data PATH (any format 'llmrec data info' reads)")
    opts = {"item_meta": cfg.item_meta} if cfg.item_meta else {}
    data = load_recdata(cfg.data, format=cfg.data_format, **opts)
    return build_cf_data(data, min_interactions=cfg.min_interactions, max_users=cfg.max_users)


def _train_user_items(cf: CFData):
    from llmrec.cf.evaluate import csr_user_items

    return csr_user_items(cf.train_matrix())


def train_cf(cfg: CFConfig, data: RecData | CFData | None = None, out: str | Path | None = None) -> CFResult:
    """Trains ``cfg.model``, validating every ``eval_every`` epochs; returns the best state on valid, tested.

    ``data``: a ``RecData`` (split here), an already built ``CFData``, or None to load ``cfg.data``.
    ``out``: where to save the artifacts (``llmrec.cf.artifacts``); None saves nothing.
    """
    import torch
    from tqdm.auto import tqdm

    from llmrec.cf.evaluate import baselines, evaluate_model
    from llmrec.eval.ranking import sample_negatives

    start = time.time()
    torch.set_num_threads(cfg.threads)
    if data is None:
        cf = load_data(cfg)
    elif isinstance(data, RecData):
        cf = build_cf_data(data, min_interactions=cfg.min_interactions, max_users=cfg.max_users)
    else:
        cf = data
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, cf).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_ui = _train_user_items(cf)
    base = baselines(cf)
    rng = np.random.default_rng(cfg.seed)
    valid_users = None
    if cfg.valid_sample and cfg.valid_sample < cf.n_users:
        valid_users = np.sort(np.random.default_rng([cfg.seed, 1]).choice(cf.n_users, cfg.valid_sample, replace=False))

    history: list[dict[str, Any]] = []
    best_score, best_epoch, best_state, since_best, stopped_early = -1.0, 0, None, 0, False
    train_seconds = eval_seconds = 0.0
    bar = tqdm(range(1, cfg.epochs + 1), desc=f"{cfg.model} on {cf.name}", unit="epoch", disable=not cfg.progress)
    for epoch in bar:
        t = time.time()
        model.train()
        users, pos, _, neg = sample_negatives(train_ui, cf.n_items, n_negatives=cfg.num_negatives,
                                              seed=cfg.seed * 100_000 + epoch)
        order = rng.permutation(len(users))
        users_t, pos_t, neg_t = (torch.from_numpy(x[order]).to(device) for x in (users, pos, neg))
        total, steps = 0.0, 0
        for a in range(0, len(order), cfg.batch_size):
            sl = slice(a, a + cfg.batch_size)
            loss = model.loss(users_t[sl], pos_t[sl], neg_t[sl])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        rec: dict[str, Any] = {"epoch": epoch, "loss": total / max(1, steps), "seconds": time.time() - t}
        train_seconds += rec["seconds"]
        if not np.isfinite(rec["loss"]):
            raise LlmrecError(f"{cfg.model}: training loss became {rec['loss']} at epoch {epoch}; lower --lr")
        if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
            t = time.time()
            rec["valid"] = evaluate_model(model, cf, "valid", metrics=VALID_METRICS, users=valid_users)
            eval_seconds += time.time() - t
            score = rec["valid"][STOP_METRIC]
            if score > best_score:
                best_score, best_epoch, since_best = score, epoch, 0
                best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            else:
                since_best += 1
            bar.set_postfix(loss=f"{rec['loss']:.4f}", **{f"valid_{STOP_METRIC}": f"{score:.4f}"},
                            best=f"{best_score:.4f}@{best_epoch}")
        else:
            bar.set_postfix(loss=f"{rec['loss']:.4f}")
        history.append(rec)
        if cfg.patience and since_best >= cfg.patience:
            stopped_early = True
            break
    bar.close()
    model.load_state_dict(best_state)
    t = time.time()
    valid = evaluate_model(model, cf, "valid")
    test = evaluate_model(model, cf, "test")
    eval_seconds += time.time() - t
    metrics = {
        "model": cfg.model, "data": cfg.data or cf.name, "metrics": METRICS.split(","),
        "validation_metrics": VALID_METRICS.split(","), "early_stopping_on": f"valid {STOP_METRIC}",
        "valid": valid, "test": test, **base,
        "best_epoch": best_epoch, "epochs_run": len(history), "stopped_early": stopped_early,
        "wall_seconds": round(time.time() - start, 2), "train_seconds": round(train_seconds, 2),
        "eval_seconds": round(eval_seconds, 2), "device": str(device), "threads": cfg.threads,
        "data_stats": cf.stats, "history": history,
    }
    result = CFResult(model=model, data=cf, config=cfg, metrics=metrics, history=history)
    if out is not None:
        from llmrec.cf.artifacts import save_cf

        result.out = save_cf(out, result)
    return result


def results_table(metrics: dict[str, Any]) -> str:
    """The model, popularity and random rows, valid and test columns, as aligned text."""
    names = metrics["metrics"]
    rows = [(metrics["model"], metrics)] + [(b, metrics[b]) for b in ("popularity", "random") if b in metrics]
    head = ["", *[f"valid {n}" for n in names], *[f"test {n}" for n in names]]
    body = [[name, *[f"{m[p][n]:.4f}" for p in ("valid", "test") for n in names]] for name, m in rows]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(head), *map(fmt, body)])
