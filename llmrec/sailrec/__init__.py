"""SAILRec: collaborative-filtering soft tokens in an LLM recommender's prompt.

- :mod:`llmrec.sailrec.steering`: hierarchical attention steering (a per-layer additive bias on the attention
  logits of CF-token key positions) registered through transformers' ``AttentionInterface``.
- :mod:`llmrec.sailrec.codebook`: k-means / residual-quantization codebooks over item text embeddings and the
  users' code histograms (the user-side semantic profile).
- :mod:`llmrec.sailrec.projector`: the projector from CF embeddings to soft tokens and the dual-side alignment
  losses.
- :mod:`llmrec.sailrec.layout`: where the soft tokens go in the chat prompt (shared by training and serving).

The recipe is ``llmrec train sailrec`` (``llmrec.training.sailrec_recipe``); see docs/sailrec.md.
"""
