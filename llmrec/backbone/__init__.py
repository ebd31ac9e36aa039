"""Backbones: the catalog of pretrained ones (``llmrec backbone get``), local HF folders, and tiny test models.

``resolve_backbone(name_or_path)`` is how every command turns its ``--model`` argument into a local folder.
Importing this package loads only the standard library; torch and transformers load when a function runs.
"""

from llmrec.backbone.catalog import CATALOG, BackboneSpec, backbone_names, get_spec, resolve_backbone, tokenizer_folder
from llmrec.backbone.gguf_convert import get_backbone
from llmrec.backbone.merge import load_merged, merge_adapter

__all__ = ["CATALOG", "BackboneSpec", "backbone_names", "get_backbone", "get_spec", "load_merged", "merge_adapter",
           "resolve_backbone", "tokenizer_folder"]
