"""RGCD-Rep: reasoning-guided cross-domain item representations, learned by distillation.

- ``domains``: two domains with shared users (Amazon Beauty sub-domains by category, or any two data sets),
  split by user into training pairs and held-out evaluation users.
- ``teacher``: a teacher LLM behind any OpenAI-compatible endpoint writes a fixed-schema JSON reasoning per
  item (structured outputs), cached on disk and resumable.
- ``encoders``: item vectors from the distilled student (a causal LM, mean-pooled hidden states), from MiniLM,
  and from a transformers vision encoder for items with an image.
- ``decompose``: the transferable / domain-residual head and its losses (contrastive over co-interacted
  cross-domain pairs, orthogonality, domain, reconstruction).
- ``export``: item embeddings to files plus FAISS indexes, and retrieval of target-domain candidates from a
  source-domain history.

Importing this package loads only the standard library; torch, transformers and faiss load when used.
"""
