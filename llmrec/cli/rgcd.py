"""``llmrec rgcd ...``: RGCD-Rep cross-domain item representations (teacher reasoning, export, retrieval, eval)."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import MISSING, fields
from pathlib import Path

from llmrec.cli.common import add_command

DOMAINS_HELP = """\
Domains: --data PATH (any loader format) split by the item category at --category_level (Amazon Beauty:
--data ../shared/data/amazon/openp5_beauty --item_meta ../shared/data/amazon/recbole_amazon_beauty/Amazon_Beauty.item
--source "Bath & Body" --target Fragrance), or --data and --target_data as two data sets whose users are
matched by id. Shared users are split by user (--test_frac, --split_seed) into training users (their
co-interacted cross-domain pairs train the head) and evaluation users."""

TEACH_DESCRIPTION = f"""\
Teacher reasoning: for every item of the two domains, an OpenAI-compatible endpoint (default `llmrec serve`
on port 8000) writes a JSON document of a fixed schema (item_understanding, user_needs,
transferable_attributes, domain_specific_attributes), enforced with structured outputs (--structured
json_schema) and validated with pydantic. Answers are appended to --cache as they arrive; a rerun (after an
interruption, or with more items) requests only items without a record, so no item is paid for twice.
Failed requests are recorded with their reason and retried only with --retry_failed.

{DOMAINS_HELP}

example:
  llmrec serve --model smollm2-135m-instruct --port 8000 &
  llmrec rgcd teach --data ../shared/data/amazon/openp5_beauty \\
      --item_meta ../shared/data/amazon/recbole_amazon_beauty/Amazon_Beauty.item \\
      --source "Bath & Body" --target Fragrance --cache runs/rgcd_teacher.jsonl --max_items 300
"""

EXPORT_DESCRIPTION = """\
Offline export: encode every item of the two domains (the student with its adapter, or MiniLM), apply a
trained head (--head, from `llmrec train rgcd`: OUTPUT_DIR/head) and write items.jsonl, transferable.npy,
residual.npy, popularity.npy (training users per item) and one FAISS index per domain to --out. Without
--head the encoder's vectors are exported. --popularity_weight is the default weight of the popularity
prior that `llmrec rgcd retrieve` adds to the cosine (0: plain cosine).

example:
  llmrec rgcd export --data ... --item_meta ... --source "Bath & Body" --target Fragrance \\
      --encoder student --backbone smollm2-135m-instruct --adapter runs/rgcd_beauty --head runs/rgcd_beauty/head \\
      --out runs/rgcd_beauty/export
"""

RETRIEVE_DESCRIPTION = """\
Target-domain candidates for a source-domain history: the mean of the history's transferable vectors
searched in the target domain's FAISS index of an export folder, scored by cosine + W * popularity (W:
--popularity_weight, default the export's; popularity: log(1 + training users), standardised within the
domain). Prints one JSON line per candidate.

example:
  llmrec rgcd retrieve --export runs/rgcd_beauty/export --target Fragrance --history B0009RF8GW,B000GHWSG6 --k 10
"""

EVAL_DESCRIPTION = f"""\
Cross-domain retrieval: for each evaluation user, the source-domain history ranks the whole target
catalogue; Recall@K and NDCG@K against the user's target-domain items. Methods (comma-separated):
ENCODER (vectors as they are), ENCODER+nosplit (head trained with the contrastive loss only),
ENCODER+full (transferable/residual split, all losses), popularity; any encoder method with +pop
(minilm+nosplit+pop) adds W * popularity to the cosine, W from --popularity_weight or, without it, the best
of --popularity_grid on a dev split of the TRAINING users (--dev_frac; evaluation users never choose it).
Encoders: minilm (text-only sentence-transformers), student (--backbone plus --adapter, pooled by
--student_pooling at --student_layer). Encoder outputs are cached in --out.

{DOMAINS_HELP}

example:
  llmrec rgcd eval --data ... --item_meta ... --source "Bath & Body" --target Fragrance \\
      --methods popularity,minilm,student,student+nosplit,student+full --adapter runs/rgcd_beauty \\
      --out runs/rgcd_eval
"""


def register(sub) -> None:
    p = add_command(sub, "rgcd", help="RGCD-Rep: reasoning-guided cross-domain item representations",
                    description="RGCD-Rep: a teacher LLM reasons about items, a small student learns it, item "
                    "vectors split into a transferable part and a domain residual; exported for retrieval. "
                    "Training: `llmrec train rgcd --config configs/rgcd_beauty.yaml`. See docs/rgcd.md.")
    rsub = p.add_subparsers(dest="rgcd_command", metavar="RGCD_COMMAND", required=True)

    t = add_command(rsub, "teach", help="teacher reasoning per item (structured JSON, cached, resumable)",
                    description=TEACH_DESCRIPTION)
    _domain_args(t)
    t.add_argument("--cache", required=True, help="JSON-lines cache of the teacher's answers (created if absent)")
    t.add_argument("--max_items", "--max-items", dest="max_items", type=int, default=None,
                   help="only this many items, a random sample (--sample_seed) over both domains")
    t.add_argument("--sample_seed", "--sample-seed", dest="sample_seed", type=int, default=0,
                   help="seed of the --max_items sample (default: %(default)s)")
    _dataclass_args(t, "llmrec.rgcd.teacher", "TeacherConfig", "teacher settings")
    t.set_defaults(func=run_teach)

    e = add_command(rsub, "export", help="item embeddings + FAISS index per domain for offline retrieval",
                    description=EXPORT_DESCRIPTION)
    _domain_args(e)
    _encoder_args(e)
    e.add_argument("--head", default=None, help="trained head folder (OUTPUT_DIR/head of `llmrec train rgcd`)")
    e.add_argument("--popularity_weight", "--popularity-weight", dest="popularity_weight", type=float, default=0.0,
                   help="default weight of the popularity prior at retrieval (default: %(default)s)")
    e.add_argument("--out", required=True, help="export folder")
    e.set_defaults(func=run_export)

    r = add_command(rsub, "retrieve", help="target-domain candidates for a source-domain history",
                    description=RETRIEVE_DESCRIPTION)
    r.add_argument("--export", required=True, help="export folder (llmrec rgcd export / train rgcd)")
    r.add_argument("--target", required=True, help="target domain name")
    r.add_argument("--history", required=True, help="comma-separated source-domain item ids")
    r.add_argument("--k", type=int, default=10, help="candidates (default: %(default)s)")
    r.add_argument("--popularity_weight", "--popularity-weight", dest="popularity_weight", type=float, default=None,
                   help="weight of the popularity prior added to the cosine (default: the export's)")
    r.set_defaults(func=run_retrieve)

    v = add_command(rsub, "eval", help="cross-domain Recall@K / NDCG@K: MiniLM vs student vs no-split vs full",
                    description=EVAL_DESCRIPTION)
    _domain_args(v)
    _encoder_args(v, with_kind=False)
    v.add_argument("--methods", default="popularity,minilm,minilm+nosplit,minilm+full",
                   help="comma-separated methods (default: %(default)s)")
    v.add_argument("--ks", default="10,20", help="cutoffs (default: %(default)s)")
    v.add_argument("--popularity_weight", "--popularity-weight", dest="popularity_weight", type=float, default=None,
                   help="W of the +pop methods (default: chosen from --popularity_grid on the dev split)")
    v.add_argument("--popularity_grid", "--popularity-grid", dest="popularity_grid",
                   default="0,0.02,0.05,0.1,0.2,0.3,0.5,1", help="weights tried on the dev split (default: %(default)s)")
    v.add_argument("--dev_frac", "--dev-frac", dest="dev_frac", type=float, default=0.2,
                   help="share of the training users that forms the dev split (default: %(default)s)")
    v.add_argument("--out", required=True, help="output folder (report.json, table.md, cached encoder outputs)")
    _dataclass_args(v, "llmrec.rgcd.config", "HeadConfig", "head settings")
    v.set_defaults(func=run_eval)


def _domain_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("domains")
    g.add_argument("--data", required=True, help="data set with both domains (or the source domain)")
    g.add_argument("--item_meta", "--item-meta", dest="item_meta", default=None, help="item metadata file")
    g.add_argument("--target_data", "--target-data", dest="target_data", default=None,
                   help="second data set = target domain (users matched by id)")
    g.add_argument("--target_item_meta", "--target-item-meta", dest="target_item_meta", default=None,
                   help="item metadata of --target_data")
    g.add_argument("--source", required=True, help="source domain (category name, or a label with --target_data)")
    g.add_argument("--target", required=True, help="target domain")
    g.add_argument("--category_level", "--category-level", dest="category_level", type=int, default=1,
                   help="category depth naming the domain (default: %(default)s)")
    g.add_argument("--image_dir", "--image-dir", dest="image_dir", default=None,
                   help="folder of item images <item_id>.jpg/.png (optional per item)")
    g.add_argument("--test_frac", "--test-frac", dest="test_frac", type=float, default=0.2,
                   help="share of shared users held out (default: %(default)s)")
    g.add_argument("--split_seed", "--split-seed", dest="split_seed", type=int, default=0,
                   help="seed of the user split (default: %(default)s)")
    g.add_argument("--max_pairs_per_user", "--max-pairs-per-user", dest="max_pairs_per_user", type=int, default=50,
                   help="cap on a training user's cross-domain pairs (default: %(default)s)")


def _encoder_args(p: argparse.ArgumentParser, with_kind: bool = True) -> None:
    g = p.add_argument_group("encoder")
    if with_kind:
        g.add_argument("--encoder", default="student", choices=["student", "minilm"],
                       help="item encoder (default: %(default)s)")
    g.add_argument("--backbone", default="smollm2-135m-instruct", help="the student's base model (default: %(default)s)")
    g.add_argument("--adapter", default=None, help="the student's LoRA adapter (a distill run's output_dir)")
    g.add_argument("--image_encoder", "--image-encoder", dest="image_encoder", default=None,
                   help="transformers vision model folder for items with an image")
    g.add_argument("--max_length", "--max-length", dest="max_length", type=int, default=128,
                   help="tokens of an item prompt the student reads (default: %(default)s)")
    g.add_argument("--student_pooling", "--student-pooling", dest="student_pooling", default="mean",
                   choices=["mean", "last"], help="student vector: mean over the prompt tokens or the last "
                   "token's state (default: %(default)s)")
    g.add_argument("--student_layer", "--student-layer", dest="student_layer", type=int, default=-1,
                   help="hidden-states index pooled (0 = embeddings, -1 = last layer; SmolLM2-135M has 30 "
                   "layers) (default: %(default)s)")
    g.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int, default=16,
                   help="items per encoder batch (default: %(default)s)")


def _dataclass_args(p: argparse.ArgumentParser, module: str, name: str, title: str) -> None:
    """One flag per field of a config dataclass (default None: the dataclass default applies)."""
    import importlib

    cls = getattr(importlib.import_module(module), name)
    g = p.add_argument_group(title)
    for f in fields(cls):
        default = None if f.default is MISSING else f.default
        helptext = f"{f.metadata.get('help', '')} (default: {default})"
        if str(f.type) in ("bool",) or f.type is bool:
            g.add_argument(f"--{f.name}", dest=f.name, type=_bool, default=None, metavar="true|false", help=helptext)
            continue
        kind = {"int": int, "float": float, "int | None": int, "float | None": float}.get(str(f.type), str)
        g.add_argument(f"--{f.name}", dest=f.name, type=kind, default=None, help=helptext)


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _from_args(cls, args):
    return cls(**{f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name) is not None})


def _cross_domain(args):
    from llmrec.rgcd.domains import load_cross_domain

    cd = load_cross_domain(args.data, args.source, args.target, item_meta=args.item_meta,
                           target_data=args.target_data, target_item_meta=args.target_item_meta,
                           level=args.category_level, image_dir=args.image_dir, test_frac=args.test_frac,
                           seed=args.split_seed, max_pairs_per_user=args.max_pairs_per_user)
    print(cd.summary())
    return cd


def run_teach(args: argparse.Namespace) -> int:
    import random

    from llmrec.rgcd.teacher import Teacher, TeacherConfig

    cd = _cross_domain(args)
    items = [cd.items[i] for i in sorted(cd.items)]
    if args.max_items is not None and args.max_items < len(items):
        items = sorted(random.Random(args.sample_seed).sample(items, args.max_items), key=lambda it: it.item_id)
    teacher = Teacher(_from_args(TeacherConfig, args), args.cache)
    other = {cd.source: cd.target, cd.target: cd.source}
    done = [0]

    def progress(rec):
        done[0] += 1
        if done[0] % 25 == 0:
            print(f"  {done[0]} answered", flush=True)

    report = teacher.teach(items, lambda it: other[it.domain], on_record=progress)
    print(report)
    return 0


def run_export(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmrec.eval.rgcd_eval import item_counts, item_table
    from llmrec.rgcd.decompose import RGCDHead
    from llmrec.rgcd.encoders import ImageEncoder, make_encoder
    from llmrec.rgcd.export import embed_items, write_export
    from llmrec.rgcd.teacher import TeacherTemplate

    cd = _cross_domain(args)
    ids, doms = item_table(cd)
    template = TeacherTemplate.load()
    texts = [template.student_prompt(cd.items[i]) if args.encoder == "student" else cd.items[i].text for i in ids]
    enc = make_encoder(args.encoder, args.backbone, args.adapter, args.max_length, args.student_pooling,
                       args.student_layer)
    head = RGCDHead.load(args.head) if args.head else None
    image_enc = ImageEncoder(args.image_encoder) if args.image_encoder else None
    zt, zr = embed_items(texts, enc, head, [cd.items[i].image for i in ids], image_enc, args.batch_size)
    out = write_export(args.out, ids, doms, zt, zr, [cd.items[i].title for i in ids],
                       info={"encoder": args.encoder, "backbone": args.backbone, "adapter": args.adapter,
                             "student_pooling": args.student_pooling, "student_layer": args.student_layer,
                             "head": args.head, "source": cd.source, "target": cd.target},
                       counts=item_counts(cd, ids), popularity_weight=args.popularity_weight)
    print(f"exported {len(ids)} items to {out}")
    return 0


def run_retrieve(args: argparse.Namespace) -> int:
    from llmrec.rgcd.export import CrossDomainRetriever

    retriever = CrossDomainRetriever.load(args.export, args.popularity_weight)
    history = [h.strip() for h in args.history.split(",") if h.strip()]
    for rank, (iid, score) in enumerate(retriever.retrieve(history, args.target, args.k), 1):
        print(json.dumps({"rank": rank, "item_id": iid, "score": round(score, 5)}))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np

    from llmrec.errors import LlmrecError
    from llmrec.eval.rgcd_eval import evaluate_methods, item_table, markdown_table, parse_method
    from llmrec.rgcd.config import HeadConfig
    from llmrec.rgcd.encoders import ImageEncoder, make_encoder
    from llmrec.rgcd.export import encode_items
    from llmrec.rgcd.teacher import TeacherTemplate

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    ks = [int(k) for k in args.ks.split(",")]
    grid = [float(w) for w in args.popularity_grid.split(",") if w.strip()]
    cd = _cross_domain(args)
    ids, _ = item_table(cd)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    template = TeacherTemplate.load()
    image_enc = ImageEncoder(args.image_encoder) if args.image_encoder else None
    features = {}
    for encoder in dict.fromkeys(parse_method(m)[0] for m in methods if m != "popularity"):
        if encoder not in ("student", "minilm"):
            raise LlmrecError(f"unknown encoder '{encoder}' in --methods (student, minilm)")
        tag = f"{encoder}_{Path(args.adapter).name if encoder == 'student' and args.adapter else 'base'}"
        if encoder == "student":  # another pooling is another encoder: its cache must not be reused
            tag += f"_{args.student_pooling}_L{args.student_layer}"
        cache = out / f"features_{tag}.npz"
        if cache.is_file() and list(np.load(cache, allow_pickle=False)["ids"]) == ids:
            from llmrec.rgcd.export import ItemFeatures

            z = np.load(cache)
            features[encoder] = ItemFeatures(z["text"], z.get("image"), z.get("has_image"))
            print(f"{encoder}: encoder outputs from {cache}")
            continue
        enc = make_encoder(encoder, args.backbone, args.adapter, args.max_length, args.student_pooling,
                           args.student_layer)
        texts = [template.student_prompt(cd.items[i]) if encoder == "student" else cd.items[i].text for i in ids]
        f = encode_items(texts, enc, [cd.items[i].image for i in ids], image_enc, args.batch_size)
        extra = {} if f.image is None else {"image": f.image, "has_image": f.has_image}
        np.savez(cache, ids=np.array(ids), text=f.text, **extra)
        features[encoder] = f
    rows = evaluate_methods(cd, features, methods, _from_args(HeadConfig, args), ks,
                            popularity_weight=args.popularity_weight, popularity_grid=grid, dev_frac=args.dev_frac)
    report = {"domains": cd.summary(), "source": cd.source, "target": cd.target, "test_users": len(cd.test_users),
              "backbone": args.backbone, "adapter": args.adapter, "student_pooling": args.student_pooling,
              "student_layer": args.student_layer, "ks": ks, "rows": rows}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(rows, ks)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return 0
