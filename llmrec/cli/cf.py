"""``llmrec cf train|eval|recommend``: collaborative-filtering base models (BPR-MF, NeuMF, LightGCN)."""

from __future__ import annotations

import argparse

from llmrec.cli.common import add_command


def _train(args: argparse.Namespace) -> int:
    from llmrec.cf.recipe import main

    return main(args.extra, prog="llmrec cf train")


def _eval(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from llmrec.cf import load_cf
    from llmrec.cf.config import CFConfig
    from llmrec.cf.evaluate import baselines, evaluate_saved
    from llmrec.cf.train import load_data, results_table

    rec = load_cf(args.model_dir)
    cfg = CFConfig(**rec.config)
    if args.data:
        cfg = replace(cfg, data=args.data, data_format=args.format, item_meta=args.item_meta)
    cf = load_data(cfg)
    metrics = {"model": rec.model_name, "metrics": rec.metrics["metrics"], **evaluate_saved(rec, cf),
               **baselines(cf)}
    print(f"{rec.model_name} from {rec.path} on {cf.name} ({cf.n_users:,} users, {cf.n_items:,} items), "
          "recomputed from the saved model:")
    print(results_table(metrics))
    saved = rec.metrics.get("test", {})
    diff = max((abs(saved[k] - metrics["test"][k]) for k in saved), default=0.0)
    print(f"largest difference from the test metrics saved at training time: {diff:.2e}")
    return 0


def _recommend(args: argparse.Namespace) -> int:
    from llmrec.cf import load_cf

    rec = load_cf(args.model_dir)
    for user in args.user:
        items = rec.topk(user, k=args.k, exclude_seen=not args.include_seen)
        print(f"user {user} ({len(rec.seen_rows(user))} items in history"
              f"{', included' if args.include_seen else ', excluded'}):")
        for rank, (item, score) in enumerate(items, 1):
            print(f"  {rank:>3}. {item}\t{score:.4f}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "cf", help="collaborative-filtering base models: BPR-MF, NeuMF, LightGCN",
                    description="Train, evaluate and query collaborative-filtering models on any data set llmrec "
                    "loads (leave-one-out split, full-ranking NDCG@10 / HR@10 / MRR against popularity).\n\n"
                    "example:\n  llmrec cf train --config configs/cf_lightgcn.yaml "
                    "--data ../shared/data/movielens/recbole_ml-100k --out runs/cf_lightgcn\n"
                    "  llmrec cf recommend runs/cf_lightgcn --user 196")
    csub = p.add_subparsers(dest="cf_command", metavar="CF_COMMAND", required=True)
    # --help of 'train' comes from its TrlParser, which lists every CFConfig field.
    t = csub.add_parser("train", help="train a model from a YAML config and flags (see configs/cf_*.yaml)",
                        add_help=False)
    t.set_defaults(func=_train, passthrough=True)

    e = add_command(csub, "eval", help="re-evaluate a trained model folder on its data (valid and test)",
                    description="Recompute the valid and test metrics of a model folder written by 'llmrec cf "
                    "train', from its saved embeddings (or network), on the data and split named in its "
                    "config.yaml (or --data), with the popularity and random baselines.\n\n"
                    "example: llmrec cf eval runs/cf_lightgcn")
    e.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by 'llmrec cf train --out'")
    e.add_argument("--data", help="data set to use instead of the one in config.yaml (same users and items)")
    e.add_argument("--format", default="auto", help="format of --data (default: detect)")
    e.add_argument("--item-meta", metavar="FILE", help="item metadata for --data")
    e.set_defaults(func=_eval)

    r = add_command(csub, "recommend", help="print a user's top-k items from a trained model folder",
                    description="Top-k items for one or more users from a trained model, the user's train and "
                    "valid items excluded unless --include-seen.\n\n"
                    "example: llmrec cf recommend runs/cf_lightgcn --user 196 --user 186 --k 5")
    r.add_argument("model_dir", metavar="MODEL_DIR", help="folder written by 'llmrec cf train --out'")
    r.add_argument("--user", action="append", required=True, help="user id (repeatable)")
    r.add_argument("--k", type=int, default=10, help="list length (default 10)")
    r.add_argument("--include-seen", action="store_true", help="keep the user's history items in the list")
    r.set_defaults(func=_recommend)
