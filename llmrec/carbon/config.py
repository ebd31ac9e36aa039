"""Settings of the PCF estimator: one dataclass, read from ``configs/carbon_estimate.yaml`` and CLI flags."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from llmrec.errors import DataError, LlmrecError

MODES = ("hybrid", "nn")


@dataclass
class CarbonConfig:
    """How ``llmrec carbon estimate`` / ``eval`` estimate a PCF (flat YAML keyed by these field names)."""

    mode: str = field(default="hybrid", metadata={"help": "hybrid: LLM few-shot with nearest-neighbour fallback; "
                                                          "nn: nearest neighbours only (no LLM call)"})
    k: int = field(default=5, metadata={"help": "reference products retrieved per item (NN average and few-shot examples)"})
    weight_power: float = field(default=1.0, metadata={"help": "NN weight = cosine similarity ** this (0 = plain mean)"})
    endpoint: str = field(default="http://127.0.0.1:8000/v1", metadata={"help": "OpenAI-compatible base URL "
                                                                              "(default: 'llmrec serve' on port 8000)"})
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model name the endpoint serves"})
    api_key: str = field(default="EMPTY", metadata={"help": "API key sent to the endpoint (vLLM ignores it)"})
    timeout_s: float = field(default=60.0, metadata={"help": "per-request timeout; past it the NN fallback is used"})
    max_tokens: int | None = field(default=None, metadata={"help": "answer length (default: the template's)"})
    temperature: float = field(default=0.0, metadata={"help": "sampling temperature (0 = greedy)"})
    concurrency: int = field(default=4, metadata={"help": "requests in flight at once (a CPU server queues the rest "
                                                                 "and they may time out)"})
    template: str = field(default="estimate", metadata={"help": "prompt template: a name in prompts/carbon/ or a path"})
    json_mode: bool = field(default=False, metadata={"help": "ask the endpoint for a JSON object (response_format); "
                                                             "vLLM then constrains decoding"})
    plausible_margin: float = field(default=10.0, metadata={
        "help": "an LLM value outside [min/margin, max*margin] of the reference PCFs is implausible"})
    max_decades_from_nn: float | None = field(default=None, metadata={
        "help": "also implausible: an LLM value more than this many orders of magnitude from the NN estimate "
                "(null: no such check)"})

    def __post_init__(self):
        if self.mode not in MODES:
            raise LlmrecError(f"mode must be one of {list(MODES)}, got '{self.mode}'")
        if self.k < 1:
            raise LlmrecError(f"k must be >= 1, got {self.k}")
        if self.weight_power < 0:
            raise LlmrecError(f"weight_power must be >= 0, got {self.weight_power}")
        if self.timeout_s <= 0 or self.concurrency < 1:
            raise LlmrecError("timeout_s must be > 0 and concurrency >= 1")
        if self.plausible_margin < 1 or not math.isfinite(self.plausible_margin):
            raise LlmrecError(f"plausible_margin must be a finite number >= 1, got {self.plausible_margin}")
        if self.max_decades_from_nn is not None and self.max_decades_from_nn <= 0:
            raise LlmrecError(f"max_decades_from_nn must be > 0 or null, got {self.max_decades_from_nn}")


def config_fields() -> list:
    return list(fields(CarbonConfig))


def load_config(path: str | Path | None = None, **overrides) -> CarbonConfig:
    """``CarbonConfig`` from a flat YAML file (unknown keys are errors), then ``overrides`` that are not None."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise DataError("expected a mapping of field: value", file=str(path))
        known = {f.name for f in config_fields()}
        for key in loaded:
            if key not in known:
                raise DataError(f"unknown setting (known: {sorted(known)})", file=str(path), field=str(key))
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return CarbonConfig(**values)
    except TypeError as e:
        raise LlmrecError(f"{path or 'config'}: {e}") from None
