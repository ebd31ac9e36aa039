"""Collaborative-filtering base models (BPR-MF, NeuMF, LightGCN): embeddings and scores for SAILRec, ReRec and carbon re-ranking.

Train with ``llmrec cf train`` (or ``llmrec.cf.train.train_cf``); read a trained model back with
``load_cf(dir)`` for ``score``, ``topk``, ``item_similarity``. See docs/cf.md.
"""

from llmrec.cf.artifacts import CFRecommender, load_cf

__all__ = ["CFRecommender", "load_cf"]
