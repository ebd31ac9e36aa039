"""TAP-PER: per-user soft prefixes from a temporal-attention encoder over the user's history.

A frozen causal LM reads ``[prefix; token embeddings of the chat-templated prompt (+ answer)]``, where the
prefix ``[K, hidden]`` (``K = user_slots + query_slots``) comes from :class:`PrefixEncoder`:

- **user-state part** (``user_slots`` vectors): learned query slots attend over the user's history
  embeddings (sentence-transformers MiniLM, 384-d, one per profile entry) with attention logits
  ``q.k / sqrt(d_head) - decay_h * age``. ``decay_h = softplus(raw_h) >= 0`` is learned per head and
  ``age = log1p(days between the item and the query)``: the log keeps a review from three years ago
  from swamping the logits (``log1p(1095) = 7.0``) while still separating yesterday from last month.
- **query part** (``query_slots`` vectors): the projected query embedding is expanded into
  ``query_slots`` queries that attend over the same history by content only (no decay): "which of this
  user's past items matter for this request".
- Both attentions also see a learned *null* key/value (age 0), so an empty history is well defined and
  a slot can attend to nothing. An MLP maps each vector to the backbone's hidden size, and its L2 norm
  is set to the mean norm of the backbone's token-embedding rows times a learned per-slot gain
  (``exp(log_gain)``, starting at 1): the frozen LM sees prefix vectors on the scale of real tokens.

**What the user-state store holds.** The store keeps one prefix per user and stock vLLM can only take
it as ``prompt_embeds``: the request's text never reaches the encoder at serving time. So the stored
prefix is the encoder's *query-free* output: the query part is computed from a learned **null query**
instead of the request's embedding. Training uses the null query for a random ``query_dropout`` share
of the examples, so this mode is trained, not improvised at export. The history is the user's profile
at their latest question in the LaMP folder (everything strictly before their latest interaction) and
ages are measured at that question's time. A server that runs the encoder per request could send the
query-conditioned prefix instead; stock vLLM serving uses the stored one (see docs/tapper.md).

The layout matches the gateway's (``llmrec.serving.prompt_embeds.PromptEmbedder.with_prefix``): prefix
vectors first, then the embeddings of the token ids of the chat-templated prompt (no extra special
tokens), so a stored prefix means at serving what it meant in training.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from llmrec.errors import LlmrecError

SECONDS_PER_DAY = 86400.0
ENCODER_CONFIG = "tapper_encoder.json"
ENCODER_WEIGHTS = "tapper_encoder.safetensors"


@dataclass
class TapperConfig:
    """llmrec's section of a ``tapper`` config: data, encoder shape, export and footprint report."""

    backbone: str = field(default="smollm2-135m-instruct", metadata={
        "help": "backbone name from 'llmrec backbone get' or a local HF model folder (model_name_or_path wins)"})
    lamp_dirs: list[str] = field(default_factory=list, metadata={
        "help": "LaMP-format folders from 'llmrec data build-lamp' (trained jointly; the first is used for export)"})
    user_slots: int = field(default=4, metadata={"help": "K_u: prefix vectors from the recency-decayed user state"})
    query_slots: int = field(default=4, metadata={"help": "K_q: prefix vectors from query-over-history attention"})
    encoder_dim: int = field(default=256, metadata={"help": "width of the encoder's attention layers"})
    num_heads: int = field(default=4, metadata={"help": "attention heads of the encoder (one recency decay each)"})
    init_decay: float = field(default=0.25, metadata={
        "help": "initial recency decay per head (logit penalty per unit of log1p(age in days))"})
    max_history: int = field(default=32, metadata={"help": "most recent profile entries the encoder reads"})
    query_dropout: float = field(default=0.5, metadata={
        "help": "share of training examples that use the learned null query (the stored, query-free prefix)"})
    max_input_words: int | None = field(default=150, metadata={
        "help": "cut the question input to this many words in the prompt (template default when unset)"})
    system_prompt: str | None = field(default=None, metadata={"help": "optional system message for every prompt"})
    embedder: str | None = field(default=None, metadata={
        "help": "sentence-transformers folder for history/query embeddings (default: the packaged MiniLM)"})
    max_train_examples: int | None = field(default=None, metadata={"help": "cap on training examples per lamp_dir"})
    max_eval_examples: int = field(default=64, metadata={
        "help": "dev questions scored after training (own, query-free, other user's and no prefix); 0 skips"})
    export_store: str | None = field(default=None, metadata={
        "help": "after training, write every user's stored prefix [K, hidden] to this user-state store"})
    export_adapter: str | None = field(default=None, metadata={
        "help": "with use_peft: the name the shared LoRA is served under (llmrec serve --lora NAME=OUT/adapter); "
                "exported users are routed to it, since their prefixes were trained with it"})
    footprint: bool = field(default=False, metadata={
        "help": "print the per-user footprint against one LoRA per user and exit (no training)"})
    footprint_users: int = field(default=1000, metadata={"help": "number of users in the footprint report"})
    footprint_lora_rank: int | None = field(default=None, metadata={
        "help": "rank of the per-user LoRA (q,k,v,o) in the footprint report (default: lora_r)"})

    def __post_init__(self):
        if isinstance(self.lamp_dirs, str):
            self.lamp_dirs = [self.lamp_dirs]
        for name in ("export_store", "export_adapter", "embedder", "system_prompt"):
            if isinstance(getattr(self, name), str) and getattr(self, name).strip().lower() in ("", "none"):
                setattr(self, name, None)
        if not self.footprint and not self.lamp_dirs:
            raise LlmrecError("give at least one lamp_dirs folder (from 'llmrec data build-lamp')")
        if self.user_slots < 0 or self.query_slots < 0 or self.user_slots + self.query_slots == 0:
            raise LlmrecError(f"need user_slots, query_slots >= 0 and > 0 in all, got {self.user_slots}, "
                              f"{self.query_slots}")
        if self.encoder_dim % self.num_heads:
            raise LlmrecError(f"encoder_dim ({self.encoder_dim}) must be a multiple of num_heads ({self.num_heads})")
        if self.init_decay <= 0:
            raise LlmrecError(f"init_decay must be > 0, got {self.init_decay}")
        if self.max_history < 1:
            raise LlmrecError(f"max_history must be >= 1, got {self.max_history}")
        if not 0 <= self.query_dropout <= 1:
            raise LlmrecError(f"query_dropout must be in [0, 1], got {self.query_dropout}")
        if self.footprint_users < 1:
            raise LlmrecError(f"footprint_users must be >= 1, got {self.footprint_users}")

    @property
    def prefix_len(self) -> int:
        return self.user_slots + self.query_slots

    def encoder_kwargs(self, hidden_size: int, in_dim: int, embed_norm: float) -> dict:
        return {"hidden_size": hidden_size, "in_dim": in_dim, "user_slots": self.user_slots,
                "query_slots": self.query_slots, "dim": self.encoder_dim, "num_heads": self.num_heads,
                "init_decay": self.init_decay, "embed_norm": embed_norm}


def age_feature(query_ts, item_ts):
    """``log1p(days from item to query)``, clamped at 0 (same shapes as the inputs; Unix seconds in)."""
    days = (torch.as_tensor(query_ts, dtype=torch.float64) - torch.as_tensor(item_ts, dtype=torch.float64))
    return torch.log1p((days / SECONDS_PER_DAY).clamp(min=0)).float()


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class RecencyAttention(nn.Module):
    """Multi-head attention whose logits are lowered by ``decay_h * age`` (``decay_h >= 0`` learned).

    With ``init_decay=None`` the attention is by content only (no decay parameter).
    """

    def __init__(self, dim: int, num_heads: int, init_decay: float | None):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.raw_decay = (nn.Parameter(torch.full((num_heads,), _inverse_softplus(init_decay)))
                          if init_decay is not None else None)

    def decay(self) -> torch.Tensor:
        """``[heads]`` non-negative decay (zeros without one)."""
        if self.raw_decay is None:
            return torch.zeros(self.num_heads, device=self.q.weight.device)
        return nn.functional.softplus(self.raw_decay)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [b, n, d] -> [b, h, n, d_head]
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def weights(self, queries, keys, age, mask) -> torch.Tensor:
        """Attention weights ``[b, heads, m, n]``.

        Args: queries ``[b, m, dim]``, keys ``[b, n, dim]``, age ``[b, n]`` (``log1p`` days), mask ``[b, n]``
        (True = a real key; at least one per row).
        """
        logits = self._split(self.q(queries)) @ self._split(self.k(keys)).transpose(-1, -2) / math.sqrt(self.head_dim)
        logits = logits - self.decay()[None, :, None, None] * age[:, None, None, :]
        logits = logits.masked_fill(~mask[:, None, None, :], float("-inf"))
        return logits.softmax(-1)

    def forward(self, queries, keys, age, mask) -> torch.Tensor:
        """``[b, m, dim]``: the attended values, one per query."""
        w = self.weights(queries, keys, age, mask)
        out = (w @ self._split(self.v(keys))).transpose(1, 2).reshape(queries.shape)
        return self.o(out)


class PrefixEncoder(nn.Module):
    """History + query embeddings -> ``[b, user_slots + query_slots, hidden_size]`` prefix vectors.

    Example::

        enc = PrefixEncoder(hidden_size=576)
        prefix = enc(history, age, mask, query)          # history [b, n, 384], age/mask [b, n], query [b, 384]
        stored = enc(history, age, mask, query=None)     # the query-free prefix the user-state store holds
    """

    def __init__(self, hidden_size: int, in_dim: int = 384, user_slots: int = 4, query_slots: int = 4,
                 dim: int = 256, num_heads: int = 4, init_decay: float = 0.25, embed_norm: float = 1.0):
        super().__init__()
        self.config = {"hidden_size": hidden_size, "in_dim": in_dim, "user_slots": user_slots,
                       "query_slots": query_slots, "dim": dim, "num_heads": num_heads, "init_decay": init_decay,
                       "embed_norm": embed_norm}
        self.user_slots, self.query_slots, self.dim = user_slots, query_slots, dim
        self.item_in = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim))
        self.query_in = nn.Sequential(nn.Linear(in_dim, dim), nn.LayerNorm(dim))
        self.null_query = nn.Parameter(torch.randn(dim) * 0.02)
        self.null_kv = nn.Parameter(torch.randn(dim) * 0.02)
        self.slots = nn.Parameter(torch.randn(user_slots, dim) * dim ** -0.5)
        self.user_attn = RecencyAttention(dim, num_heads, init_decay)
        self.query_expand = nn.Linear(dim, query_slots * dim)
        self.query_attn = RecencyAttention(dim, num_heads, None)
        self.out = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, hidden_size))
        self.log_gain = nn.Parameter(torch.zeros(user_slots + query_slots))
        self.register_buffer("embed_norm", torch.tensor(float(embed_norm)))

    @property
    def prefix_len(self) -> int:
        return self.user_slots + self.query_slots

    def keys(self, history, age, mask):
        """History plus the null key in front: ``([b, n+1, dim], [b, n+1], [b, n+1])``."""
        b = history.shape[0]
        items = self.item_in(history)
        null = self.null_kv.expand(b, 1, self.dim)
        ones = torch.ones(b, 1, dtype=torch.bool, device=history.device)
        zero = torch.zeros(b, 1, dtype=age.dtype, device=age.device)
        return (torch.cat([null, items], 1), torch.cat([zero, age], 1),
                torch.cat([ones, mask.bool()], 1))

    def query_vector(self, query, null_query=None):
        """``[b, dim]``: the projected query, or the null query where ``query`` is None / ``null_query`` is True."""
        if query is None:
            return self.null_query.expand(null_query.shape[0] if null_query is not None else 1, self.dim)
        q = self.query_in(query)
        if null_query is not None:
            q = torch.where(null_query[:, None].to(q.device), self.null_query.expand_as(q), q)
        return q

    def forward(self, history, age, mask, query=None, null_query=None) -> torch.Tensor:
        """Args: history ``[b, n, in_dim]`` (n may be 0), age ``[b, n]`` (:func:`age_feature`), mask ``[b, n]``
        (True = real entry), query ``[b, in_dim]`` or None (null query for all), null_query ``[b]`` bool
        (use the null query for these rows). Returns ``[b, K, hidden_size]``."""
        b = history.shape[0]
        keys, age, mask = self.keys(history, age, mask)
        parts = []
        if self.user_slots:
            slots = self.slots.expand(b, -1, -1)
            parts.append(slots + self.user_attn(slots, keys, age, mask))
        if self.query_slots:
            q = self.query_vector(query, null_query)
            q = q.expand(b, -1) if q.shape[0] == 1 else q
            queries = self.query_expand(q).view(b, self.query_slots, self.dim)
            parts.append(queries + self.query_attn(queries, keys, age, mask))
        h = self.out(torch.cat(parts, 1))
        # Scale-matched: each vector gets the mean token-embedding norm (times a learned gain per slot).
        h = nn.functional.normalize(h, dim=-1) * (self.embed_norm * self.log_gain.exp())[None, :, None]
        return h

    def user_attention(self, history, age, mask) -> torch.Tensor:
        """The user-state slots' attention ``[b, heads, user_slots, n + 1]`` (column 0 is the null key)."""
        keys, age, mask = self.keys(history, age, mask)
        return self.user_attn.weights(self.slots.expand(history.shape[0], -1, -1), keys, age, mask)


def mean_embedding_norm(backbone) -> float:
    """Mean L2 norm of the backbone's input-embedding rows (the scale prefix vectors are put on)."""
    with torch.no_grad():
        return float(backbone.get_input_embeddings().weight.float().norm(dim=-1).mean())


class TapperModel(nn.Module):
    """The frozen backbone (optionally with a trainable LoRA) fed ``[prefix; tokens]``; returns the LM loss.

    Only ``encoder`` (and LoRA weights, if any) have ``requires_grad``. The loss covers the answer tokens
    only (``labels`` are -100 elsewhere; the prefix positions get -100 here).
    """

    def __init__(self, backbone, encoder: PrefixEncoder, query_dropout: float = 0.0):
        super().__init__()
        self.backbone, self.encoder, self.query_dropout = backbone, encoder, query_dropout

    def embed(self, history, history_age, history_mask, query, input_ids, attention_mask, null_query=None):
        """``(inputs_embeds [b, K + s, hidden], attention_mask [b, K + s])``: the gateway's layout."""
        prefix = self.encoder(history, history_age, history_mask, query, null_query=null_query)
        tokens = self.backbone.get_input_embeddings()(input_ids)
        ones = torch.ones(prefix.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        return torch.cat([prefix.to(tokens.dtype), tokens], 1), torch.cat([ones, attention_mask], 1)

    def forward(self, history, history_age, history_mask, query, input_ids, attention_mask, labels,
                null_query=None):
        if null_query is None and self.training and self.query_dropout > 0:
            null_query = torch.rand(input_ids.shape[0], device=input_ids.device) < self.query_dropout
        embeds, mask = self.embed(history, history_age, history_mask, query, input_ids, attention_mask, null_query)
        ignore = torch.full((labels.shape[0], self.encoder.prefix_len), -100, dtype=labels.dtype, device=labels.device)
        out = self.backbone(inputs_embeds=embeds, attention_mask=mask, labels=torch.cat([ignore, labels], 1))
        return {"loss": out.loss}


def freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def save_encoder(encoder: PrefixEncoder, out_dir: str | Path, extra: dict | None = None) -> Path:
    """``tapper_encoder.json`` (constructor arguments + ``extra``) and ``tapper_encoder.safetensors``."""
    from llmrec.training.side_module_trainer import save_side_module

    return save_side_module(encoder, out_dir, "encoder", ENCODER_CONFIG, ENCODER_WEIGHTS, extra)


def load_encoder(run_dir: str | Path) -> tuple[PrefixEncoder, dict]:
    """The trained encoder of a ``tapper`` run (eval mode) and its saved config."""
    from llmrec.training.side_module_trainer import load_side_module

    return load_side_module(PrefixEncoder, run_dir, "encoder", ENCODER_CONFIG, ENCODER_WEIGHTS, "llmrec train tapper")


# ------------------------------------------------------------------------------------------------
# Footprint: K stored vectors per user vs one LoRA adapter per user (OPPU-style)
# ------------------------------------------------------------------------------------------------

LORA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj")


def lora_params(config, rank: int, modules: tuple[str, ...] = LORA_MODULES) -> int:
    """Parameters of one LoRA adapter of ``rank`` on ``modules`` of every layer: ``rank * (in + out)`` each.

    Shapes come from the backbone's config: q and o are ``hidden <-> heads * head_dim``, k and v
    ``hidden -> kv_heads * head_dim`` (grouped-query attention).
    """
    hidden, heads = config.hidden_size, config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    shapes = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv * head_dim),
              "v_proj": (hidden, kv * head_dim), "o_proj": (heads * head_dim, hidden)}
    unknown = set(modules) - set(shapes)
    if unknown:
        raise LlmrecError(f"footprint knows {', '.join(shapes)}, not {', '.join(sorted(unknown))}")
    return config.num_hidden_layers * rank * sum(sum(shapes[m]) for m in modules)


@dataclass
class Footprint:
    """Per-user and total parameters/bytes of TAP-PER prefixes against one LoRA per user."""

    users: int
    hidden_size: int
    prefix_len: int
    lora_rank: int
    encoder_params: int  # shared, stored once
    shared_lora_params: int  # TAP-PER's optional shared LoRA, stored once
    bytes_per_param: int = 4  # float32, what the store writes
    prefix_params_per_user: int = 0
    lora_params_per_user: int = 0

    @property
    def tapper_total_params(self) -> int:
        return self.users * self.prefix_params_per_user + self.encoder_params + self.shared_lora_params

    @property
    def lora_total_params(self) -> int:
        return self.users * self.lora_params_per_user

    def as_dict(self) -> dict:
        b = self.bytes_per_param
        return {**asdict(self), "tapper_total_params": self.tapper_total_params,
                "lora_total_params": self.lora_total_params,
                "prefix_bytes_per_user": self.prefix_params_per_user * b,
                "lora_bytes_per_user": self.lora_params_per_user * b,
                "tapper_total_bytes": self.tapper_total_params * b, "lora_total_bytes": self.lora_total_params * b,
                "per_user_ratio": self.lora_params_per_user / self.prefix_params_per_user,
                "total_ratio": self.lora_total_params / self.tapper_total_params}

    def table(self) -> str:
        d = self.as_dict()
        rows = [("", "TAP-PER prefix", f"LoRA r={self.lora_rank} (q,k,v,o) per user"),
                ("per-user params", f"{self.prefix_params_per_user:,} ({self.prefix_len} x {self.hidden_size})",
                 f"{self.lora_params_per_user:,}"),
                ("per-user bytes (fp32)", _size(d["prefix_bytes_per_user"]), _size(d["lora_bytes_per_user"])),
                ("shared params (once)", f"{self.encoder_params + self.shared_lora_params:,} (encoder"
                 + (f" + shared LoRA {self.shared_lora_params:,})" if self.shared_lora_params else ")"), "0"),
                (f"total params, {self.users:,} users", f"{self.tapper_total_params:,}", f"{self.lora_total_params:,}"),
                (f"total bytes, {self.users:,} users", _size(d["tapper_total_bytes"]), _size(d["lora_total_bytes"]))]
        w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
        lines = [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
        lines.append(f"LoRA / prefix: {d['per_user_ratio']:.1f}x per user, {d['total_ratio']:.1f}x in total")
        return "\n".join(lines)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def footprint(backbone_config, prefix_len: int, lora_rank: int, users: int = 1000, encoder_params: int = 0,
              shared_lora_params: int = 0, modules: tuple[str, ...] = LORA_MODULES) -> Footprint:
    """Footprint of ``users`` users: ``prefix_len * hidden`` floats each (+ the shared encoder once) against
    one LoRA of ``lora_rank`` on ``modules`` per user (:func:`lora_params`)."""
    return Footprint(users=users, hidden_size=backbone_config.hidden_size, prefix_len=prefix_len,
                     lora_rank=lora_rank, encoder_params=encoder_params, shared_lora_params=shared_lora_params,
                     prefix_params_per_user=prefix_len * backbone_config.hidden_size,
                     lora_params_per_user=lora_params(backbone_config, lora_rank, modules))
