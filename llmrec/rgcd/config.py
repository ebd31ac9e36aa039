"""Settings of the RGCD-Rep head (torch-free, so CLI parsers can list them without importing torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmrec.errors import LlmrecError


@dataclass
class HeadConfig:
    """The decomposition head and its training."""

    head_dim: int = field(default=64, metadata={"help": "size of each part (transferable, residual)"})
    head_hidden: int = field(default=256, metadata={"help": "trunk width"})
    head_dropout: float = field(default=0.1, metadata={"help": "trunk dropout"})
    head_split: bool = field(default=True, metadata={
        "help": "decompose into transferable + residual (false: one projection, InfoNCE only: the ablation)"})
    head_standardize: bool = field(default=False, metadata={
        "help": "z-score each input dimension over the items before the head (LLM hidden states share a large "
                "common component that LayerNorm keeps, so all items look alike to the head)"})
    head_temperature: float = field(default=0.1, metadata={"help": "InfoNCE temperature"})
    lambda_orth: float = field(default=0.1, metadata={"help": "weight of the orthogonality term"})
    lambda_domain: float = field(default=0.1, metadata={"help": "weight of the residual's domain cross-entropy"})
    lambda_rec: float = field(default=0.1, metadata={"help": "weight of the reconstruction term"})
    head_epochs: int = field(default=10, metadata={"help": "passes over the training pairs"})
    head_batch_size: int = field(default=256, metadata={"help": "pairs per step (in-batch negatives)"})
    head_lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate"})
    head_weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay"})
    head_seed: int = field(default=0, metadata={"help": "seed of initialisation and batch order"})

    def __post_init__(self):
        if self.head_dim < 1 or self.head_hidden < 1 or self.head_batch_size < 2 or self.head_epochs < 0:
            raise LlmrecError("dim, hidden >= 1, batch_size >= 2 and epochs >= 0 are required")
        if self.head_temperature <= 0:
            raise LlmrecError(f"temperature must be > 0, got {self.head_temperature}")
