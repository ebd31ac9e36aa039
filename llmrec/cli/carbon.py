"""``llmrec carbon ...``: catalog products, PCF estimation and its cross-validation, carbon-aware re-ranking."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import MISSING, fields
from pathlib import Path

from llmrec.cli.common import add_command

ESTIMATE_DESCRIPTION = """\
Estimate the carbon footprint (kg CO2e) of products from a reference set of products with known PCF.

For each item the k most similar reference products are retrieved (MiniLM sentence embeddings, FAISS)
and become the few-shot examples of a chat prompt (prompts/carbon/estimate.yaml) sent to an
OpenAI-compatible endpoint (default: `llmrec serve` on port 8000). The answer is parsed as JSON
(value, unit, rationale), converted to kg CO2e and checked for plausibility. When the endpoint is down,
times out, or answers garbage or an implausible value, the similarity-weighted geometric mean of the
neighbours' PCFs is used instead; each output row says which path produced it ("llm", "nn",
"nn_fallback:<reason>"). --mode nn skips the LLM.

Reference: The Carbon Catalogue CSV, its DataCamp copy, Boavizta's CSV (recognised from the header)
or any CSV with name/description/category/PCF columns (--columns to map them). Items: CSV or JSON
lines with name (and optionally description, category). Settings: configs/carbon_estimate.yaml; any
field can be given as a flag and overrides the file.

example:
  llmrec serve --model smollm2-135m-instruct --port 8000 &
  llmrec carbon estimate --reference ../shared/data/carbon/carbon_catalogue/carbon_catalogue_product_level.csv \\
      --items my_products.csv --endpoint http://127.0.0.1:8000/v1 --model smollm2-135m-instruct --out pcf.jsonl
"""

EVAL_DESCRIPTION = """\
Grouped cross-validation of the PCF estimators on a reference set: scikit-learn GroupKFold by company
(no company in both train and test). Reports median absolute log10 error, share within a factor of 2
and MAPE for a global-median baseline, a category-median baseline and the nearest-neighbour estimator
on every product; with --endpoint also for the LLM few-shot estimator (on the products it answered)
and the hybrid (LLM with NN fallback), with parse-failure and fallback rates. --llm_sample N limits
the LLM to N random products per fold (a CPU-served LLM is slow). Writes report.json, predictions.csv,
cv_table.md and cv.png to --out. See docs/carbon.md.

example:
  llmrec carbon eval --reference ../shared/data/carbon/carbon_catalogue/carbon_catalogue_product_level.csv \\
      --folds 5 --out runs/carbon_cv
  llmrec carbon eval --reference ... --endpoint http://127.0.0.1:8011/v1 --model smollm2-135m-instruct \\
      --llm_sample 40 --out runs/carbon_cv_llm
"""

ITEMS_DESCRIPTION = """\
Turn any data set llmrec loads into the products file of `llmrec carbon estimate --items`. An item
with a title is named by it (description: brand, category: its most specific category). An item
without one (e.g. the 2014 Amazon 5-cores, which have no metadata) is described by its reviews: up to
4 distinct review summaries as the name, the opening sentences of its 3 longest reviews as the
description. Each line records its "source" ("title" or "reviews").

example:
  llmrec carbon items ../shared/data/amazon/musical_instruments_5core_2014 --out runs/carbon_mi/items.jsonl
  llmrec carbon estimate --reference ../shared/data/carbon/carbon_catalogue/carbon_catalogue_product_level.csv \\
      --items runs/carbon_mi/items.jsonl --mode nn --out runs/carbon_mi/pcf_nn.jsonl
"""


def run_items(args: argparse.Namespace) -> int:
    from llmrec.carbon.items import catalog_items
    from llmrec.cli.data_load import load_data
    from llmrec.jsonl import write_jsonl

    _, data = load_data(args)
    records = catalog_items(data, default_category=args.category)
    write_jsonl(records, args.out)
    by_source = Counter(r["source"] for r in records)
    left_out = len(data.items) - len(records)
    print(f"{data.name}: {len(records):,} of {len(data.items):,} items written ({by_source.get('title', 0):,} by "
          f"title, {by_source.get('reviews', 0):,} by reviews; {left_out:,} with neither left out) to {args.out}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "carbon", help="product carbon footprints: estimate PCFs (LLM few-shot + NN), evaluate, carbon-aware re-ranking",
                    description="Product-carbon-footprint (PCF) estimation for carbon-aware recommendation.")
    csub = p.add_subparsers(dest="carbon_command", metavar="CARBON_COMMAND", required=True)

    from llmrec.cli.data_load import add_load_args

    i = add_command(csub, "items", help="write a data set's items as products to estimate (title or reviews)",
                    description=ITEMS_DESCRIPTION)
    add_load_args(i)
    i.add_argument("--out", required=True, help="output .jsonl (id, name, description, category, source)")
    i.add_argument("--category", default=None,
                   help="category for items without one (default: the data set's name, e.g. 'Musical Instruments')")
    i.set_defaults(func=run_items)

    e = add_command(csub, "estimate", help="estimate the PCF of products (LLM few-shot with NN fallback)",
                    description=ESTIMATE_DESCRIPTION)
    _reference_args(e)
    e.add_argument("--items", required=True, help="products to estimate: CSV or .jsonl (name, description, category)")
    e.add_argument("--item_columns", "--item-columns", dest="item_columns", default=None,
                   help="column map of the items CSV, e.g. name=Title,category=Type (default: detected)")
    e.add_argument("--out", required=True, help="output: .jsonl (full records incl. neighbours) or .csv (flat)")
    _config_args(e)
    e.set_defaults(func=run_estimate)

    v = add_command(csub, "eval", help="grouped cross-validation (by company) of NN, LLM few-shot and hybrid",
                    description=EVAL_DESCRIPTION)
    _reference_args(v)
    v.add_argument("--folds", type=int, default=5, help="GroupKFold splits (default: %(default)s)")
    v.add_argument("--out", required=True, help="output folder (report.json, predictions.csv, cv_table.md, cv.png)")
    v.add_argument("--llm_sample", "--llm-sample", dest="llm_sample", type=int, default=None,
                   help="LLM on this many random test products per fold (default: all)")
    v.add_argument("--llm_folds", "--llm-folds", dest="llm_folds", default=None,
                   help="LLM only on these folds, comma-separated 0-based (default: all)")
    v.add_argument("--seed", type=int, default=0, help="seed of the LLM subsample (default: %(default)s)")
    _config_args(v, endpoint_enables_llm=True)
    v.set_defaults(func=run_eval)

    r = add_command(csub, "rerank", help="carbon-aware re-ranking of a CF model's top-k (relevance vs estimated PCF)",
                    description=RERANK_DESCRIPTION)
    r.add_argument("--cf", required=True, help="a CF run folder written by `llmrec cf train`")
    r.add_argument("--pcf", required=True, help="item PCFs: `llmrec carbon estimate` output (.jsonl/.csv)")
    r.add_argument("--lambda", dest="lam", type=float, default=0.3,
                   help="carbon weight in [0, 1]: 0 = the model's order, 1 = lowest carbon first (default: %(default)s)")
    r.add_argument("--k", type=int, default=10, help="list length (default: %(default)s)")
    r.add_argument("--scores", default=None, metavar="RUN",
                   help="re-rank these scores instead of the CF model's: a ranking run (TREC run or JSON "
                        "{user: {item: score}}) over the --cf run's users and items, e.g. an LLM ranker's")
    r.add_argument("--users", default=None,
                   help="comma-separated user ids (default: every user; with --scores, every user it scores)")
    r.add_argument("--out", required=True, help="output .jsonl (one line per user) or .csv (user, rank, item)")
    r.set_defaults(func=run_rerank)

    f = add_command(csub, "frontier", help="lambda sweep: NDCG/Recall@10 vs carbon of the top-10, Pareto frontier",
                    description=FRONTIER_DESCRIPTION)
    f.add_argument("--cf", required=True, action="append", help="a CF run folder (repeat for several)")
    f.add_argument("--scores", action="append", default=[], metavar="RUN",
                   help="also sweep this ranking run (TREC run or JSON {user: {item: score}}, e.g. an LLM ranker's) "
                        "over the split of the one --cf run (repeat for several)")
    f.add_argument("--pcf", required=True, help="item PCFs: `llmrec carbon estimate` output (.jsonl/.csv)")
    f.add_argument("--out", required=True, help="output folder (<run>.csv, <run>.png, <run>.json, summary.md)")
    f.add_argument("--points", type=int, default=50, help="lambdas evenly spaced in [0, 1] (default: %(default)s)")
    f.add_argument("--k", type=int, default=10, help="list length and metric cutoff (default: %(default)s)")
    f.set_defaults(func=run_frontier)


def _reference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reference", required=True, help="reference CSV with a PCF per product")
    p.add_argument("--columns", default=None,
                   help="column map of the reference CSV, e.g. 'name=Product,pcf=PCF,category=Sector,"
                        "company=Maker,unit=Unit' (default: detected from the header)")


def _config_args(p: argparse.ArgumentParser, endpoint_enables_llm: bool = False) -> None:
    """One flag per ``CarbonConfig`` field (default None: the YAML file or the dataclass default applies)."""
    from llmrec.carbon.config import CarbonConfig

    g = p.add_argument_group("estimator settings (override --config)")
    g.add_argument("--config", default=None, help="YAML of estimator settings (e.g. configs/carbon_estimate.yaml)")
    for f in fields(CarbonConfig):
        default = None if f.default is MISSING else f.default
        helptext = f"{f.metadata.get('help', '')} (default: {default})"
        if f.name == "endpoint" and endpoint_enables_llm:
            helptext = "OpenAI-compatible base URL; given, the LLM and hybrid rows are evaluated too"
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        if f.type in ("bool", bool):
            g.add_argument(*names, dest=f.name, action="store_true", default=None, help=helptext)
            continue
        kind = {"int": int, "float": float, "float | None": float, "int | None": int}.get(str(f.type), str)
        g.add_argument(*names, dest=f.name, type=kind, default=None, help=helptext)


def _config(args):
    from llmrec.carbon.config import CarbonConfig, load_config

    return load_config(args.config, **{f.name: getattr(args, f.name) for f in fields(CarbonConfig)})


def _load_reference(args):
    from llmrec.carbon.reference import ColumnMap, load_reference

    return load_reference(args.reference, ColumnMap.parse(args.columns) if args.columns else None)


def run_estimate(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import pandas as pd

    from llmrec.carbon.estimate import CarbonEstimator
    from llmrec.carbon.reference import ColumnMap, load_items

    config = _config(args)
    reference = _load_reference(args)
    items = load_items(args.items, ColumnMap.parse(args.item_columns) if args.item_columns else None)
    est = CarbonEstimator(reference, config)
    print(f"reference: {len(reference)} products ({reference.layout}); items: {len(items)}; mode {config.mode}"
          + (f"; endpoint {config.endpoint} model {config.model}" if config.mode == "hybrid" else ""), flush=True)
    results = est.estimate_many(items)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for item, r in zip(items.records(), results):
        rows.append({"id": item["id"], "name": item["name"], "category": item["category"], **r.to_dict()})
    if out.suffix.lower() == ".csv":
        flat = [{k: v for k, v in row.items() if k != "neighbours"} | {
            "neighbours": "; ".join(f"{n['name']} ({n['pcf_kg']:g} kg, sim {n['similarity']:.2f})"
                                    for n in row["neighbours"])} for row in rows]
        pd.DataFrame(flat).to_csv(out, index=False)
    else:
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    paths = Counter(r.path for r in results)
    print("paths: " + ", ".join(f"{k} {v}" for k, v in sorted(paths.items())))
    print(f"wrote {len(rows)} estimates to {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from llmrec.carbon.cv import cross_validate, format_table, plot_cv
    from llmrec.errors import LlmrecError

    config = _config(args)
    reference = _load_reference(args)
    llm_folds = None
    if args.llm_folds:
        try:
            llm_folds = [int(x) for x in args.llm_folds.split(",") if x.strip()]
        except ValueError:
            raise LlmrecError(f"--llm_folds expects comma-separated fold numbers, got '{args.llm_folds}'") from None
        if any(not 0 <= f < args.folds for f in llm_folds):
            raise LlmrecError(f"--llm_folds: folds are numbered 0..{args.folds - 1}")
    use_llm = args.endpoint is not None
    print(f"reference: {len(reference)} products ({reference.layout}), {args.folds} folds by company"
          + (f"; LLM {config.model} at {config.endpoint}" if use_llm else "; NN and baselines only"), flush=True)
    res = cross_validate(reference, config, args.folds, use_llm=use_llm, llm_sample=args.llm_sample,
                         llm_folds=llm_folds, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = format_table(res.table)
    print(table)
    if res.llm:
        info = res.llm
        print(f"LLM: {info['n_products']} products, parse failures {info['parse_failure_rate']:.1%} of answers, "
              f"fell back {info['fallback_share']:.1%}; paths {info['paths']}")
        for key in ("llm_vs_nn", "hybrid_vs_nn"):
            b = info.get(key)
            if b:
                print(f"{key}: median |log10 err| difference {b['diff']:+.3f} (95% bootstrap CI {b['ci95'][0]:+.3f} "
                      f"to {b['ci95'][1]:+.3f}; better on {b['a_better_share']:.0%}, worse on {b['b_better_share']:.0%} "
                      f"of {b['n']} products)")
    print(f"seconds: {res.seconds}")
    report = {"reference": str(args.reference), "n_products": len(reference), **res.to_dict()}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    res.predictions.to_csv(out / "predictions.csv", index=False)
    (out / "cv_table.md").write_text(table + "\n", encoding="utf-8")
    plot_cv(res.predictions, out / "cv.png")
    print(f"wrote {out}/report.json, predictions.csv, cv_table.md, cv.png")
    return 0


RERANK_DESCRIPTION = """\
Re-rank a CF model's recommendations by relevance and estimated carbon footprint:
score = (1 - lambda) * relevance - lambda * carbon, where relevance is the model's score min-max
normalised per user over unseen items and carbon is log10 PCF min-max normalised over the catalog
(items without an estimate get the catalog median). Seen items (train + valid) are never recommended.

example:
  llmrec carbon rerank --cf runs/cf_lightgcn_beauty --pcf runs/carbon_rerank/beauty_pcf_nn.jsonl \\
      --lambda 0.3 --k 10 --out runs/carbon_rerank/top10_l0.3.jsonl
"""

FRONTIER_DESCRIPTION = """\
Sweep lambda over [0, 1] (--points values); for each, NDCG@k and Recall@k of every user's test item
(the CF run's split, seen items masked) against the mean and total estimated PCF of the top-k.
Writes per run <name>.csv (one row per lambda, Pareto flag), <name>.png (NDCG vs mean carbon with
the frontier) and <name>.json (carbon reduction available at 1/5/10% NDCG loss vs lambda = 0).

example:
  llmrec carbon frontier --cf runs/cf_bprmf_beauty --cf runs/cf_lightgcn_beauty \\
      --pcf runs/carbon_rerank/beauty_pcf_nn.jsonl --out runs/carbon_frontier --points 50
"""


def run_rerank(args: argparse.Namespace) -> int:
    import numpy as np

    from llmrec.carbon.rerank import carbon_penalty, load_run_scores, read_pcf, rerank_cf
    from llmrec.cf import load_cf
    from llmrec.errors import LlmrecError

    cf = load_cf(args.cf)
    _, pcf = read_pcf(args.pcf, cf.item_ids)
    missing = int(np.isnan(pcf).sum())
    if missing == len(pcf):
        raise LlmrecError(f"{args.pcf}: none of its ids is an item of {args.cf}")
    users = cf.user_index([u.strip() for u in args.users.split(",")]) if args.users else None
    if args.scores:
        cf = load_run_scores(args.scores, cf)
        users = cf.scored_users if users is None else users
    rows, top = rerank_cf(cf, carbon_penalty(pcf), args.lam, args.k, users)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    recs = [{"user_id": cf.user_ids[u], "items": [cf.item_ids[i] for i in t if i >= 0],
             "pcf_kg": [None if np.isnan(pcf[i]) else float(pcf[i]) for i in t if i >= 0]} for u, t in zip(rows, top)]
    if out.suffix.lower() == ".csv":
        import pandas as pd

        pd.DataFrame([{"user_id": r["user_id"], "rank": n + 1, "item_id": i, "pcf_kg": p} for r in recs
                      for n, (i, p) in enumerate(zip(r["items"], r["pcf_kg"]))]).to_csv(out, index=False)
    else:
        with open(out, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in recs)
    print(f"{len(recs)} users, lambda {args.lam}, k {args.k}; {missing} of {len(pcf)} items without a PCF "
          f"(median used); wrote {out}")
    return 0


def run_frontier(args: argparse.Namespace) -> int:
    import numpy as np

    from llmrec.carbon.frontier import run_frontier as frontier
    from llmrec.carbon.frontier import run_name
    from llmrec.carbon.rerank import read_pcf
    from llmrec.cf import load_cf
    from llmrec.errors import LlmrecError

    if args.scores and len(args.cf) != 1:
        raise LlmrecError("--scores needs exactly one --cf: the run whose users, items and split the scores are over")
    out = Path(args.out)
    lines = [f"| run | loss budget | lambda | ndcg@{args.k} | mean PCF kg | carbon reduction |", "|---|---|---|---|---|---|"]
    for cf_dir, scores in [(c, None) for c in args.cf] + [(args.cf[0], s) for s in args.scores]:
        _, pcf = read_pcf(args.pcf, load_cf(cf_dir).item_ids)
        if np.isnan(pcf).all():
            raise LlmrecError(f"{args.pcf}: none of its ids is an item of {cf_dir}")
        table, red = frontier(cf_dir, pcf, out, points=args.points, k=args.k, scores=scores)
        base = table.iloc[0]
        name = run_name(cf_dir, scores)
        print(f"{name} ({int(base['n_users'])} users): lambda 0 ndcg@{args.k} {base[f'ndcg@{args.k}']:.4f}, mean PCF "
              f"{base['mean_pcf_kg']:.3g} kg; Pareto points {int(table['pareto'].sum())} of {len(table)}")
        for loss, r in red.items():
            print(f"  <= {loss} NDCG loss: lambda {r['lambda']:.3f}, ndcg {r[f'ndcg@{args.k}']:.4f}, mean PCF "
                  f"{r['mean_pcf_kg']:.3g} kg, carbon -{r['carbon_reduction']:.1%}")
            lines.append(f"| {name} | {loss} | {r['lambda']:.3f} | {r[f'ndcg@{args.k}']:.4f} | "
                         f"{r['mean_pcf_kg']:.3g} | {r['carbon_reduction']:.1%} |")
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")
    return 0
