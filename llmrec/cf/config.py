"""``CFConfig``: every knob of ``llmrec cf train``, one dataclass mapped from the YAML (configs/cf_*.yaml).

Parsed by TRL's ``TrlParser`` (``--config x.yaml`` plus flag overrides such as ``--epochs 5``), like the
other recipes. Importing this module is cheap (no torch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llmrec.errors import LlmrecError

# model name -> "module:class"; imported only when a model is built (torch, PyG).
MODELS = {
    "bprmf": "llmrec.cf.bpr:BPRMF",
    "neumf": "llmrec.cf.neumf:NeuMF",
    "lightgcn": "llmrec.cf.lightgcn:LightGCNRec",
}
NEUMF_LOSSES = ("bce", "bpr")
# Reported at the end, over the whole ranked catalog (MRR is exact). Ranking the whole catalog costs
# three full sorts per user (35 s per pass on Beauty's 22K users x 12K items), so the validation
# during training ranks only the top 10 (1.7 s): its first metric drives early stopping.
METRICS = "ndcg@10,hr@10,mrr"
VALID_METRICS = "ndcg@10,hr@10,mrr@10"
STOP_METRIC = VALID_METRICS.split(",")[0]


def _help(text: str) -> dict[str, Any]:
    return {"help": text}


@dataclass
class CFConfig:
    """Collaborative-filtering training: data, model, optimisation, evaluation, output."""

    # data
    data: str | None = field(default=None, metadata=_help(
        "data set in any format llmrec loads (file or folder; see 'llmrec data info')"))
    data_format: str = field(default="auto", metadata=_help("loader format name, or 'auto' to detect it"))
    item_meta: str | None = field(default=None, metadata=_help(
        "item metadata to join (e.g. Amazon_Beauty.item for OpenP5 Beauty sequences)"))
    min_interactions: int = field(default=3, metadata=_help(
        "leave-one-out drops users with fewer interactions (>= 3: train, valid, test)"))
    max_users: int = field(default=0, metadata=_help(
        "keep only the first N users by id (a quick slice for tries and tests); 0 = all"))
    # model
    model: str = field(default="lightgcn", metadata=_help(f"one of: {', '.join(MODELS)}"))
    dim: int = field(default=64, metadata=_help(
        "embedding size (NeuMF: the GMF tower's; its MLP tower's is mlp_layers[0] / 2)"))
    num_layers: int = field(default=3, metadata=_help("LightGCN propagation layers"))
    mlp_layers: list[int] = field(default_factory=lambda: [64, 32, 16], metadata=_help(
        "NeuMF MLP tower sizes, input (the concatenated user+item MLP embeddings) first"))
    neumf_loss: str = field(default="bce", metadata=_help(
        "NeuMF objective: 'bce' (He et al. 2017, num_negatives sampled zeros per positive) or 'bpr'"))
    # optimisation
    epochs: int = field(default=100, metadata=_help("maximum training epochs (one pass over train interactions)"))
    batch_size: int = field(default=2048, metadata=_help("positive interactions per step"))
    lr: float = field(default=1e-3, metadata=_help("Adam learning rate"))
    l2_reg: float = field(default=1e-4, metadata=_help(
        "L2 on the embeddings used in each batch, divided by the batch size (PyG's BPRLoss lambda_reg)"))
    weight_decay: float = field(default=0.0, metadata=_help("Adam weight decay on all parameters"))
    num_negatives: int = field(default=1, metadata=_help(
        "uniform negatives per positive, none of them a train item of the user"))
    seed: int = field(default=0, metadata=_help("seed for initialisation, negative sampling and shuffling"))
    threads: int = field(default=2, metadata=_help("torch CPU threads"))
    device: str = field(default="cpu", metadata=_help("'cpu', 'cuda' or 'auto'"))
    # evaluation
    eval_every: int = field(default=1, metadata=_help("validate every N epochs"))
    patience: int = field(default=5, metadata=_help(
        f"stop after this many validations without a better valid {STOP_METRIC}; 0 = never stop early"))
    valid_sample: int = field(default=0, metadata=_help(
        "validate during training on this many users drawn once at random (0 = all); the final valid "
        "and test metrics always use every user. For models whose full ranking is slow (NeuMF on big sets)"))
    # output
    out: str = field(default="runs/cf", metadata=_help("output folder for embeddings, model, metrics, curve"))
    progress: bool = field(default=True, metadata=_help("tqdm bars per epoch"))

    def __post_init__(self):
        if self.model not in MODELS:
            raise LlmrecError(f"unknown CF model '{self.model}'; valid models: {', '.join(MODELS)}")
        if self.neumf_loss not in NEUMF_LOSSES:
            raise LlmrecError(f"unknown neumf_loss '{self.neumf_loss}'; valid: {', '.join(NEUMF_LOSSES)}")
        positive = {"dim": self.dim, "epochs": self.epochs, "batch_size": self.batch_size,
                    "num_negatives": self.num_negatives, "eval_every": self.eval_every, "threads": self.threads}
        for name, value in positive.items():
            if value < 1:
                raise LlmrecError(f"{name} must be >= 1, got {value}")
        if self.min_interactions < 3:
            raise LlmrecError(f"min_interactions must be >= 3 (train, valid, test), got {self.min_interactions}")
        if min(self.num_layers, self.patience, self.max_users, self.valid_sample) < 0:
            raise LlmrecError("num_layers, patience, max_users and valid_sample must be >= 0")
        if self.lr <= 0 or self.l2_reg < 0 or self.weight_decay < 0:
            raise LlmrecError(f"need lr > 0, l2_reg >= 0, weight_decay >= 0; got {self.lr}, {self.l2_reg}, "
                              f"{self.weight_decay}")
        if len(self.mlp_layers) < 2 or any(n < 1 for n in self.mlp_layers) or self.mlp_layers[0] % 2:
            raise LlmrecError(f"mlp_layers must be at least two positive sizes, the first even, got {self.mlp_layers}")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise LlmrecError(f"device must be cpu, cuda[:N] or auto, got '{self.device}'")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
