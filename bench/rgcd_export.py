"""Benchmark: items per second of the RGCD-Rep offline embedding export, batched vs one item at a time.

    flock /tmp/llmrec-heavy.lock .venv/bin/python bench/rgcd_export.py [--backbone smollm2-135m-instruct]
        [--adapter RUN_DIR] [--head RUN_DIR/head] [--items 128] [--batch_size 32] [--encoder student|minilm]

The export computation is the whole path of `llmrec rgcd export`: the student prompt of each item through the
encoder (the causal LM's mean-pooled hidden states, or MiniLM) and the transferable/residual head. Items are
real Amazon Beauty products (Bath & Body and Fragrance, from ../shared/data) in id order. Both ways run in the
same process on the same items, batched first; prints items/s of each, the ratio and the largest difference
between the two sets of vectors (padding must not change them). Without --head a freshly initialised head
(seed 0) is used: its cost is the same as a trained one's. Not a test: run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="smollm2-135m-instruct")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--head", default=None)
    ap.add_argument("--encoder", default="student", choices=["student", "minilm"])
    ap.add_argument("--items", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=32)
    ap.add_argument("--max_length", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()

    import torch

    from llmrec.paths import shared_data_dir
    from llmrec.rgcd.config import HeadConfig
    from llmrec.rgcd.decompose import RGCDHead
    from llmrec.rgcd.domains import load_cross_domain
    from llmrec.rgcd.encoders import make_encoder
    from llmrec.rgcd.export import time_export
    from llmrec.rgcd.teacher import TeacherTemplate

    if args.threads:
        torch.set_num_threads(args.threads)
    d = shared_data_dir()
    if d is None:
        raise SystemExit("needs ../shared/data (Amazon Beauty)")
    cd = load_cross_domain(d / "amazon/openp5_beauty", "Bath & Body", "Fragrance",
                           item_meta=d / "amazon/recbole_amazon_beauty/Amazon_Beauty.item")
    ids = sorted(cd.items)[: args.items]
    template = TeacherTemplate.load()
    texts = [template.student_prompt(cd.items[i]) if args.encoder == "student" else cd.items[i].text for i in ids]
    enc = make_encoder(args.encoder, args.backbone, args.adapter, args.max_length)
    if args.head:
        head = RGCDHead.load(args.head)
    else:
        torch.manual_seed(0)
        head = RGCDHead(enc.dim, HeadConfig()).eval()
    enc.encode(texts[:2], batch_size=2)  # warm-up (first-call allocations)
    r = time_export(texts, enc, head, batch_size=args.batch_size)
    r.update({"encoder": args.encoder, "backbone": args.backbone, "adapter": args.adapter,
              "torch_threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine()})
    print(json.dumps(r, indent=2))
    print(f"batched (batch {args.batch_size}): {r['batch_items_per_s']:.1f} items/s; one at a time: "
          f"{r['single_items_per_s']:.1f} items/s; ratio {r['speedup']:.2f}x on {r['items']} items "
          f"(max |diff| {r['max_abs_diff']:.2e})")


if __name__ == "__main__":
    main()
