"""The ``tapper`` recipe: ``llmrec train tapper --config configs/tapper_mi.yaml [--field value ...]``.

Flags are llmrec's :class:`~llmrec.training.tapper.TapperConfig`, transformers' ``TrainingArguments`` and
TRL's ``ModelConfig`` (``use_peft`` adds a shared LoRA that trains with the encoder), parsed by TRL's
``TrlParser`` from the YAML config and the command line. The backbone stays frozen; transformers'
``Trainer`` trains the prefix encoder through a wrapper module (:class:`~llmrec.training.tapper.TapperModel`).

Writes to ``output_dir``: ``tapper_encoder.json`` + ``tapper_encoder.safetensors`` (``adapter/`` with a
shared LoRA), ``metrics.jsonl`` / ``metrics.png``, ``eval.json`` (dev answer loss with the
query-conditioned prefix, the stored prefix, another user's prefix, and no prefix at all), ``footprint.json``;
with ``export_store``, every user's stored prefix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from llmrec.errors import LlmrecError

# Width of the packaged MiniLM's embeddings (the footprint report needs it without loading the model).
MINILM_DIM = 384


def parse(argv: list[str], prog: str):
    from transformers import TrainingArguments
    from trl import ModelConfig, TrlParser

    from llmrec.training.tapper import TapperConfig

    parser = TrlParser((TapperConfig, TrainingArguments, ModelConfig), prog=prog)
    return parser.parse_args_and_config(argv)


def main(argv: list[str], prog: str = "llmrec train tapper") -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, train_args, model_args = parse(argv, prog)
    from llmrec.backbone import resolve_backbone

    model_path = resolve_backbone(model_args.model_name_or_path or args.backbone)
    if args.footprint:
        print(footprint_report(model_path, args, model_args).table())
        return 0
    out = train_tapper(model_path, args, train_args, model_args)
    print(f"saved to {out} (metrics: {out / 'metrics.jsonl'}, curve: {out / 'metrics.png'}, eval: {out / 'eval.json'})")
    print(footprint_report(model_path, args, model_args, out).table())
    return 0


def _lora_targets(model_args) -> tuple[str, ...]:
    from llmrec.training.tapper import LORA_MODULES

    targets = model_args.lora_target_modules or list(LORA_MODULES)
    return tuple([targets] if isinstance(targets, str) else targets)


def footprint_report(model_path, args, model_args, run_dir: str | Path | None = None):
    """The footprint of ``args.footprint_users`` users (reads only the backbone's config.json).

    Encoder parameters are counted from a freshly built encoder of the configured shape (the same count
    as a trained one); a shared LoRA (``use_peft``) is counted once with the formula of ``lora_params``.
    With ``run_dir`` the report is also written to ``run_dir/footprint.json``.
    """
    from transformers import AutoConfig

    from llmrec.training.tapper import PrefixEncoder, count_params, footprint, lora_params

    config = AutoConfig.from_pretrained(model_path)
    in_dim = MINILM_DIM if args.embedder is None else _embedder_dim(args.embedder)
    with torch.device("meta"):
        enc = PrefixEncoder(**args.encoder_kwargs(config.hidden_size, in_dim, 1.0))
    shared_lora = lora_params(config, model_args.lora_r, _lora_targets(model_args)) if model_args.use_peft else 0
    fp = footprint(config, args.prefix_len, args.footprint_lora_rank or model_args.lora_r, args.footprint_users,
                   encoder_params=count_params(enc), shared_lora_params=shared_lora)
    if run_dir is not None:
        Path(run_dir, "footprint.json").write_text(json.dumps(fp.as_dict(), indent=2) + "\n")
    return fp


def _embedder_dim(path: str) -> int:
    from llmrec.training.tapper_data import TextEmbeddings

    return TextEmbeddings(path).dim


def _trainer_class():
    from llmrec.training.side_module_trainer import side_module_trainer
    from llmrec.training.tapper import ENCODER_WEIGHTS, save_encoder

    def recency_decay(model) -> dict:  # how strongly the user-state slots favour recent items, mean over heads
        return {"recency_decay": round(float(model.encoder.user_attn.decay().detach().mean()), 5)}

    return side_module_trainer("encoder", save_encoder, ENCODER_WEIGHTS, recency_decay)


def train_tapper(model_path, args, train_args, model_args=None, callbacks: list | None = None) -> Path:
    """Trains the prefix encoder on ``args.lamp_dirs``; saves it, scores dev, exports prefixes if asked.

    Returns ``output_dir``. ``callbacks`` are extra ``TrainerCallback`` objects (they see the wrapper model).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

    from llmrec.training.metrics_log import JsonlMetricsCallback
    from llmrec.training.tapper import PrefixEncoder, TapperModel, freeze, mean_embedding_norm
    from llmrec.training.tapper_data import TapperCollator, TapperDataset, TextEmbeddings, lamp_tapper_examples

    out = Path(train_args.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # Loaded here from the local folder, so nothing resolves a hub id.
    backbone = freeze(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32))
    peft_config = None
    if model_args is not None and model_args.use_peft:
        from trl import get_peft_config

        peft_config = get_peft_config(model_args)
    if peft_config is not None:
        from peft import get_peft_model

        backbone = get_peft_model(backbone, peft_config)
    embeddings = TextEmbeddings(args.embedder)
    opts = {"max_history": args.max_history, "max_input_words": args.max_input_words,
            "system_prompt": args.system_prompt}
    examples = [ex for d in args.lamp_dirs
                for ex in lamp_tapper_examples(d, "train", tokenizer, limit=args.max_train_examples, **opts)]
    dataset = TapperDataset(examples, embeddings)
    set_seed(train_args.seed)
    encoder = PrefixEncoder(**args.encoder_kwargs(backbone.config.hidden_size, embeddings.dim,
                                                  mean_embedding_norm(backbone)))
    model = TapperModel(backbone, encoder, args.query_dropout)
    train_args.remove_unused_columns = False  # the wrapper's inputs are not a PreTrainedModel's
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    collator = TapperCollator(embeddings, pad)
    extra = {"backbone": str(model_path), "embedder": str(embeddings.encoder.model_path),
             "lamp_dirs": [str(d) for d in args.lamp_dirs], "tasks": sorted({ex.task for ex in examples}),
             "train_examples": len(examples), "query_dropout": args.query_dropout, **opts}
    trainer = _trainer_class()(model=model, args=train_args, train_dataset=dataset, data_collator=collator,
                               callbacks=[JsonlMetricsCallback(out / "metrics.jsonl"), *(callbacks or [])],
                               module_extra=extra)
    from transformers.trainer_utils import get_last_checkpoint

    trainer.train(resume_from_checkpoint=get_last_checkpoint(str(out)) if out.is_dir() else None)
    trainer.save_model(str(out))
    model.eval()
    report = {}
    if args.max_eval_examples:
        for d in args.lamp_dirs:
            if Path(d, "dev_questions.json").is_file():
                dev = lamp_tapper_examples(d, "dev", tokenizer, limit=args.max_eval_examples, **opts)
                report[str(d)] = answer_loss(model, TapperDataset(dev, embeddings), collator,
                                             train_args.per_device_train_batch_size)
        Path(out, "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.export_store:
        if peft_config is not None and not args.export_adapter:
            print("note: the prefixes were trained with a shared LoRA; serve it (llmrec serve --lora NAME="
                  f"{out / 'adapter'}) and set --export_adapter NAME so users are routed to it")
        n = export_prefixes(encoder, args.lamp_dirs[0], args.export_store, embeddings, args.max_history,
                            meta={"tapper_run": str(out.resolve())}, adapter=args.export_adapter)
        print(f"wrote the prefixes of {n} users to {args.export_store}")
    return out


MODES = ("query", "stored", "other_user", "no_prefix")


@torch.no_grad()
def answer_loss(model, dataset, collator, batch_size: int = 8) -> dict:
    """Mean answer-token loss (nats) over ``dataset`` in four modes.

    ``query``: the query-conditioned prefix; ``stored``: the query-free prefix the store holds;
    ``other_user``: the stored prefix built from the *next* question's history (another user's, same
    distribution: what the prefix is worth without this user's information); ``no_prefix``: the plain
    backbone on the same tokens.
    """
    rows = [dataset[i] for i in range(len(dataset))]
    swapped = [{**r, "history": rows[(i + 1) % len(rows)]["history"], "ages": rows[(i + 1) % len(rows)]["ages"]}
               for i, r in enumerate(rows)]
    sums = dict.fromkeys(MODES, 0.0)
    tokens = 0
    model.eval()
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start:start + batch_size])
        n = int((batch["labels"][:, 1:] != -100).sum())
        b = batch["input_ids"].shape[0]
        for mode in MODES:
            if mode == "no_prefix":
                loss = model.backbone(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                      labels=batch["labels"]).loss
            else:
                inputs = collator(swapped[start:start + batch_size]) if mode == "other_user" else batch
                loss = model(**inputs, null_query=torch.full((b,), mode != "query"))["loss"]
            sums[mode] += float(loss) * n
        tokens += n
    return {"examples": len(rows), "answer_tokens": tokens, **{m: round(sums[m] / max(tokens, 1), 5) for m in MODES}}


@torch.no_grad()
def export_prefixes(encoder, lamp_dir, store, embeddings, max_history: int, meta: dict | None = None,
                    adapter: str | None = None, batch_size: int = 64) -> int:
    """Writes every user's stored prefix (float32 ``[K, hidden]``) to ``store``; returns how many users.

    The stored prefix is the query-free one (null query) over the user's profile at their latest question
    in ``lamp_dir`` (all splits), ages measured at that question's time (see ``llmrec.training.tapper``).
    ``adapter`` (the served name of a shared LoRA the prefixes were trained with) routes the users to it.
    """
    from llmrec.eval.lamp_predict import LampTemplate
    from llmrec.serving.user_state import open_user_store
    from llmrec.training.tapper_data import history_of, latest_questions

    questions = latest_questions(lamp_dir)
    templates: dict[str, LampTemplate] = {}
    rows = []
    for q in questions:
        template = templates.setdefault(q["task"], LampTemplate.for_task(q["task"]))
        rows.append((q["user_id"], *history_of(q, template, max_history)))
    embeddings.add([t for _, hist, _ in rows for t in hist])
    st = open_user_store(store)
    encoder.eval()
    device = next(encoder.parameters()).device
    meta = {"written_by": "llmrec train tapper", "prefix": "tapper-stored (null query)", **(meta or {})}
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        n = max(len(h) for _, h, _ in chunk)
        history = torch.zeros(len(chunk), n, embeddings.matrix.shape[1])
        ages = torch.zeros(len(chunk), n)
        mask = torch.zeros(len(chunk), n, dtype=torch.bool)
        for i, (_, hist, age) in enumerate(chunk):
            if hist:
                history[i, :len(hist)] = embeddings.matrix[torch.tensor([embeddings.index[t] for t in hist])]
                ages[i, :len(hist)] = torch.tensor(age)
                mask[i, :len(hist)] = True
        prefixes = encoder(history.to(device), ages.to(device), mask.to(device), query=None).float().cpu().numpy()
        for (user, _, _), prefix in zip(chunk, prefixes):
            st.update(str(user), prefix=prefix, adapter=adapter, meta=meta)
    if not rows:
        raise LlmrecError(f"{lamp_dir}: no users to export")
    return len(rows)
