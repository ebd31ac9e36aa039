"""``llmrec data info`` and ``llmrec data convert``: load any supported format, summarise it, save it."""

from __future__ import annotations

import argparse
import json

from llmrec.cli.common import add_command
from llmrec.errors import LlmrecError

_FORMATS_HELP = ("auto (default), llmrec, movielens-100k, movielens-1m, movielens-latest, recbole, sequences, "
                 "amazon, or a dotted path to your own load(path, **opts) function")


def add_load_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="a data file or folder")
    p.add_argument("--format", default="auto", help=f"input format: {_FORMATS_HELP}")
    p.add_argument("--item-meta", metavar="FILE",
                   help="item metadata to join: a RecBole .item file or Amazon meta_* JSON lines "
                   "(sequences, amazon)")
    p.add_argument("--require-item-metadata", action="store_true",
                   help="drop (and count) interactions whose item has no metadata row")
    p.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                   help="any other loader option, e.g. --opt keep_duplicates=true --opt encoding=latin-1 "
                   "(repeatable; VALUE is read as JSON when it parses, else as text)")


def load_opts(args: argparse.Namespace) -> dict:
    opts: dict = {}
    for kv in args.opt:
        key, sep, value = kv.partition("=")
        if not sep or not key.strip():
            raise LlmrecError(f"--opt expects KEY=VALUE, got {kv!r}")
        try:
            opts[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            opts[key.strip()] = value
    if args.item_meta:
        opts["item_meta"] = args.item_meta
    if args.require_item_metadata:
        opts["require_item_metadata"] = True
    return opts


def load_data(args: argparse.Namespace):
    from llmrec.data.loading import detect_format, load_recdata

    fmt = detect_format(args.path) if args.format == "auto" else args.format
    return fmt, load_recdata(args.path, format=fmt, **load_opts(args))


def describe(data, fmt: str) -> list[str]:
    """The summary lines ``llmrec data info`` prints."""
    import datetime as dt
    from collections import Counter

    import pyarrow.compute as pc

    inter = data.interactions.with_format("arrow")[:]
    n_users, n_items, n = len(data.users), len(data.items), len(inter)
    titled = sum(1 for t in data.items.with_format("arrow")["title"].to_pylist() if t)
    lines = [f"name: {data.name} (format {fmt})", f"users: {n_users:,}",
             f"items: {n_items:,} ({titled:,} with a title)", f"interactions: {n:,}"]
    if n:
        per_user = sorted(Counter(inter.column("user_id").to_pylist()).values())
        active = len(per_user)
        lines[-1] += (f" ({n / active:.1f} per active user; min {per_user[0]}, median {per_user[active // 2]}, "
                      f"max {per_user[-1]}); density {n / max(1, active * n_items):.4%}")
        lo, hi = (v.as_py() for v in pc.min_max(inter.column("timestamp")).values())
        if fmt == "sequences":
            lines.append(f"order: positions {lo}..{hi} within each user's sequence (the format has no time)")
        else:
            day = lambda t: dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%Y-%m-%d")
            lines.append(f"time range: {day(lo)} .. {day(hi)} (Unix {lo}..{hi})")
        ratings = Counter(inter.column("rating").to_pylist())
        missing = ratings.pop(None, 0)
        if ratings:
            dist = ", ".join(f"{r:g}: {c:,} ({c / n:.1%})" for r, c in sorted(ratings.items()))
            lines.append(f"ratings: {dist}" + (f"; {missing:,} without rating" if missing else ""))
        else:
            lines.append("ratings: none (implicit feedback)")
    total = data.filtered.total
    lines.append(f"filtered: {data.filtered} (total {total:,})" if total else "filtered: nothing")
    return lines


def _info(args: argparse.Namespace) -> int:
    fmt, data = load_data(args)
    print(f"data: {args.path}")
    print("\n".join(describe(data, fmt)))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from llmrec.data.loading import MANIFEST, save_recdata

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise LlmrecError(f"{out} exists and is not empty; pass --overwrite or choose another --out")
    fmt, data = load_data(args)
    save_recdata(data, out, source=str(Path(args.path).resolve()), format=fmt)
    print("\n".join(describe(data, fmt)))
    print(f"saved: {out}/{{users,items,interactions}}.parquet + {MANIFEST}")
    print(f"read it back with: llmrec data info {out}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "info", help="load a data set and print its summary",
                    description="Load a recommendation data set (format detected from PATH unless --format) and "
                    "print users, items, interactions, time range, rating distribution and what was filtered.\n\n"
                    "example:\n  llmrec data info /data/ml-100k\n"
                    "  llmrec data info openp5_beauty --item-meta Amazon_Beauty.item")
    add_load_args(p)
    p.set_defaults(func=_info)

    p = add_command(sub, "convert", help="load a data set and save it in llmrec's format (parquet + recdata.json)",
                    description="Load a recommendation data set and save its users, items and interactions as "
                    "parquet files with a recdata.json manifest; 'llmrec data info DIR' and load_recdata(DIR) "
                    "read it back (format 'llmrec').\n\nexample:\n  llmrec data convert /data/ml-100k --out ml100k")
    add_load_args(p)
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty --out folder")
    p.set_defaults(func=_convert)
