"""``llmrec cf train --config configs/cf_lightgcn.yaml [--field value ...]``: parse, train, save, print.

``parse`` and ``main`` have the signatures of llmrec's training recipes (``llmrec.cli.train.RECIPES``).
"""

from __future__ import annotations

from llmrec.cf.config import CFConfig
from llmrec.errors import LlmrecError


def parse(argv: list[str], prog: str = "llmrec cf train") -> CFConfig:
    """``CFConfig`` from ``--config YAML`` (optional) and flags, which override the YAML (TRL's ``TrlParser``)."""
    from trl import TrlParser

    parser = TrlParser((CFConfig,), prog=prog, description="Train a collaborative-filtering model (BPR-MF, NeuMF "
                       "or LightGCN) on any data set llmrec loads; leave-one-out split, full-ranking NDCG@10 / "
                       "HR@10 / MRR against popularity.\n\nexample: llmrec cf train --config "
                       "configs/cf_lightgcn.yaml --data ../shared/data/movielens/recbole_ml-100k --epochs 5")
    try:
        (cfg,) = parser.parse_args_and_config(argv)
    except ValueError as e:  # TrlParser's message for YAML keys that are not fields
        raise LlmrecError(str(e)) from None
    return cfg


def main(argv: list[str], prog: str = "llmrec cf train") -> int:
    from llmrec.cf.train import results_table, train_cf

    cfg = parse(argv, prog)
    result = train_cf(cfg, out=cfg.out)
    m, s = result.metrics, result.data.stats
    print(f"data: {result.data.name}: {s['users']:,} users, {s['items']:,} items, {s['train_interactions']:,} train "
          f"interactions (leave-one-out; {s['valid_item_already_in_train']} valid / "
          f"{s['test_item_already_in_history']} test items already in the user's history)")
    print(f"{cfg.model}: {m['epochs_run']} epochs ({'stopped early, ' if m['stopped_early'] else ''}best "
          f"{m['best_epoch']}), {m['wall_seconds']:.1f} s wall ({m['train_seconds']:.1f} s training, "
          f"{m['eval_seconds']:.1f} s evaluation)")
    print(results_table(m))
    print(f"saved to {result.out} (embeddings, model.pt, metrics.json, curve.png); "
          f"in Python: llmrec.cf.load_cf('{result.out}')")
    return 0
