"""The ``rgcd`` recipe: ``llmrec train rgcd --config configs/rgcd_beauty.yaml``.

Stages (``stages``, comma-separated, run in this order):

1. ``distill``: reasoning-aware distillation. Each item with a valid teacher reasoning in ``teacher_cache``
   (written by ``llmrec rgcd teach``) becomes a chat example: the student prompt of the item
   (``prompts/rgcd/teacher.yaml``: ``student``) -> the teacher's JSON. TRL's ``SFTTrainer`` with PEFT LoRA trains
   the student (``backbone``) on it; the adapter goes to ``output_dir``.
2. ``represent``: item vectors from the encoder (``student``: the backbone plus the adapter of ``output_dir``
   or ``student_adapter``; ``minilm``), then the transferable/residual head trained on the behavioural
   pairs of the training users; head in ``output_dir/head``, embeddings, popularity counts (training users)
   and FAISS indexes in ``output_dir/export`` (ready for ``llmrec rgcd retrieve``; ``popularity_weight`` is
   its default weight of the popularity prior).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmrec.errors import LlmrecError

STAGES = ("distill", "represent")


@dataclass
class RgcdArguments:
    """llmrec's section of the ``rgcd`` recipe: domains, teacher cache, stages, encoder."""

    data: str | None = field(default=None, metadata={"help": "data set (any loader format) holding both domains, "
                                                             "or the source domain when target_data is given"})
    item_meta: str | None = field(default=None, metadata={"help": "item metadata file (Amazon Beauty: .item)"})
    target_data: str | None = field(default=None, metadata={"help": "second data set = the target domain (users "
                                                                    "matched by id); unset: split data by category"})
    target_item_meta: str | None = field(default=None, metadata={"help": "item metadata of target_data"})
    source: str = field(default="Bath & Body", metadata={"help": "source domain (a category name at category_level)"})
    target: str = field(default="Fragrance", metadata={"help": "target domain"})
    category_level: int = field(default=1, metadata={"help": "category depth that names the domain (0 = root)"})
    image_dir: str | None = field(default=None, metadata={"help": "folder of item images named <item_id>.jpg/.png"})
    image_encoder: str | None = field(default=None, metadata={"help": "transformers vision model folder (CLIP/SigLIP)"})
    test_frac: float = field(default=0.2, metadata={"help": "share of shared users held out for evaluation"})
    split_seed: int = field(default=0, metadata={"help": "seed of the user split and pair sampling"})
    max_pairs_per_user: int = field(default=50, metadata={"help": "cap on a training user's (source, target) pairs"})
    teacher_cache: str | None = field(default=None, metadata={"help": "teacher reasoning cache (llmrec rgcd teach)"})
    teacher_template: str | None = field(default=None, metadata={"help": "prompt YAML (default prompts/rgcd/)"})
    stages: str = field(default="distill,represent", metadata={"help": "comma-separated: distill, represent"})
    backbone: str = field(default="smollm2-135m-instruct", metadata={"help": "the student's base model"})
    student_adapter: str | None = field(default=None, metadata={
        "help": "adapter of an earlier distill run for the represent stage (default: output_dir after distill)"})
    encoder: str = field(default="student", metadata={"help": "item encoder of the represent stage: student, minilm"})
    encoder_max_length: int = field(default=128, metadata={"help": "tokens of an item prompt the student reads"})
    student_pooling: str = field(default="mean", metadata={
        "help": "student vector: mean (over the prompt tokens) or last (the last token's state)"})
    student_layer: int = field(default=-1, metadata={
        "help": "hidden-states index the student vector pools (0 = embeddings, -1 = the last layer)"})
    popularity_weight: float = field(default=0.0, metadata={
        "help": "default weight of the popularity prior in the export's retrieval score (0: plain cosine)"})
    encode_batch_size: int = field(default=16, metadata={"help": "items per encoder batch"})
    max_distill_items: int | None = field(default=None, metadata={"help": "cap on distillation examples"})

    def __post_init__(self):
        stages = [s.strip() for s in self.stages.split(",") if s.strip()]
        bad = [s for s in stages if s not in STAGES]
        if bad or not stages:
            raise LlmrecError(f"stages must be a comma-separated subset of {list(STAGES)}, got '{self.stages}'")
        if self.encoder not in ("student", "minilm"):
            raise LlmrecError(f"encoder must be student or minilm, got '{self.encoder}'")
        from llmrec.rgcd.encoders import check_pooling

        check_pooling(self.student_pooling, self.student_layer)


def parse(argv: list[str], prog: str):
    from trl import ModelConfig, SFTConfig, TrlParser

    from llmrec.rgcd.config import HeadConfig

    parser = TrlParser((RgcdArguments, HeadConfig, SFTConfig, ModelConfig), prog=prog)
    return parser.parse_args_and_config(argv)


def distill_examples(cd, cache_path: str | Path, template=None, max_items: int | None = None) -> list[dict]:
    """Chat examples (student prompt -> teacher JSON) for the items of ``cd`` with valid reasoning."""
    from llmrec.rgcd.teacher import TeacherCache, TeacherTemplate
    from llmrec.training.sft import to_chat_example

    template = template or TeacherTemplate.load()
    reasoning = TeacherCache(cache_path).reasoning_by_item()
    examples = [to_chat_example(template.student_prompt(cd.items[i]), reasoning[i].text())
                for i in sorted(cd.items) if i in reasoning]
    return examples[:max_items] if max_items else examples


def main(argv: list[str], prog: str = "llmrec train rgcd") -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args, head_config, sft_config, model_args = parse(argv, prog)
    if args.data is None:
        raise LlmrecError("give data (and item_meta / target_data as needed)")
    from llmrec.rgcd.domains import load_cross_domain

    stages = [s.strip() for s in args.stages.split(",")]
    cd = load_cross_domain(args.data, args.source, args.target, item_meta=args.item_meta,
                           target_data=args.target_data, target_item_meta=args.target_item_meta,
                           level=args.category_level, image_dir=args.image_dir, test_frac=args.test_frac,
                           seed=args.split_seed, max_pairs_per_user=args.max_pairs_per_user)
    print(cd.summary())
    out = Path(sft_config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    info: dict = {"recipe": "rgcd", "stages": stages, "args": asdict(args), "head": asdict(head_config),
                  "domains": cd.summary()}
    adapter = args.student_adapter
    if "distill" in stages:
        adapter = str(run_distill(cd, args, sft_config, model_args, info))
    if "represent" in stages:
        run_represent(cd, args, head_config, adapter, out, info)
    (out / "llmrec_train.json").write_text(json.dumps(info, indent=2, default=str))
    print(f"saved to {out}")
    return 0


def run_distill(cd, args, sft_config, model_args, info: dict) -> Path:
    from trl import get_peft_config

    from llmrec.backbone import resolve_backbone
    from llmrec.rgcd.teacher import TeacherTemplate
    from llmrec.training.sft import train_sft

    if not args.teacher_cache or not Path(args.teacher_cache).is_file():
        raise LlmrecError(f"distill needs teacher_cache (a file written by `llmrec rgcd teach`), got "
                          f"{args.teacher_cache!r}")
    examples = distill_examples(cd, args.teacher_cache, TeacherTemplate.load(args.teacher_template),
                                args.max_distill_items)
    if not examples:
        raise LlmrecError(f"{args.teacher_cache}: no valid reasoning for any item of {cd.source} / {cd.target}")
    model_path = resolve_backbone(model_args.model_name_or_path or args.backbone)
    info["distill"] = {"examples": len(examples), "backbone": str(model_path)}
    print(f"distill: {len(examples)} items with teacher reasoning")
    return train_sft(model_path, examples, sft_config, get_peft_config(model_args))


def run_represent(cd, args, head_config, adapter, out: Path, info: dict) -> None:
    import numpy as np

    from llmrec.eval.rgcd_eval import item_counts, item_table, pair_rows
    from llmrec.rgcd.decompose import train_head
    from llmrec.rgcd.encoders import ImageEncoder, make_encoder
    from llmrec.rgcd.export import encode_items, write_export
    from llmrec.rgcd.teacher import TeacherTemplate

    template = TeacherTemplate.load(args.teacher_template)
    ids, doms = item_table(cd)
    enc = make_encoder(args.encoder, args.backbone, adapter if args.encoder == "student" else None,
                       args.encoder_max_length, args.student_pooling, args.student_layer)
    texts = [template.student_prompt(cd.items[i]) if args.encoder == "student" else cd.items[i].text for i in ids]
    image_enc = ImageEncoder(args.image_encoder) if args.image_encoder else None
    feats = encode_items(texts, enc, [cd.items[i].image for i in ids], image_enc, args.encode_batch_size)
    domain_idx = np.array([0 if d == cd.source else 1 for d in doms])
    head, history = train_head(feats.text, pair_rows(cd, ids), domain_idx, head_config, feats.image,
                               feats.has_image, log_every=max(1, head_config.head_epochs // 5))
    head.save(out / "head")
    zt, zr = head.embed(feats.text, feats.image, feats.has_image)
    write_export(out / "export", ids, doms, zt, zr, [cd.items[i].title for i in ids],
                 info={"encoder": args.encoder, "backbone": args.backbone, "adapter": adapter,
                       "student_pooling": args.student_pooling, "student_layer": args.student_layer,
                       "source": cd.source, "target": cd.target},
                 counts=item_counts(cd, ids), popularity_weight=args.popularity_weight)
    with open(out / "head" / "history.jsonl", "w") as f:
        f.writelines(json.dumps(rec) + "\n" for rec in history)
    info["represent"] = {"encoder": args.encoder, "adapter": adapter, "pairs": len(cd.pairs),
                         "final": history[-1] if history else None}
