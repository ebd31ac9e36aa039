"""SAILRec training parts: config, data (from a CF model folder), the wrapper model, collator and scoring.

The LM reads the SAILRec prompt (``prompts/rec/sailrec.yaml``) with one CF soft token for the user and one after
every history item's title, and is trained to write the title of the user's next item. The backbone is frozen
(a shared LoRA is optional, through TRL's ``ModelConfig``); what trains is the projector from CF embeddings to
soft tokens (:class:`llmrec.sailrec.projector.SoftTokenProjector`). The loss is

    answer-token LM loss + item_align_weight * item InfoNCE + user_align_weight * user code cross-entropy

and every forward runs with the attention steering schedule (:mod:`llmrec.sailrec.steering`).

Data protocol (leave-one-out, the CF model's split): a user's training example asks for their *valid* item
from their train items (the CF model never saw that interaction, as at test time); the evaluation asks for the
*test* item from train + valid, ranked against ``n_negatives`` sampled items by title likelihood
(``llmrec.recommend.next_item.make_cases``, the protocol of the text-only LLM ranking in ``llmrec eval``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from llmrec.errors import LlmrecError


@dataclass
class SailRecConfig:
    """llmrec's section of a ``sailrec`` config."""

    backbone: str = field(default="smollm2-135m-instruct", metadata={
        "help": "backbone name from 'llmrec backbone get' or a local HF model folder (model_name_or_path wins)"})
    cf_dir: str | None = field(default=None, metadata={
        "help": "folder written by 'llmrec cf train' (its config names the data set; BPR-MF or LightGCN)"})
    data: str | None = field(default=None, metadata={"help": "data set (default: the one in cf_dir/config.yaml)"})
    max_train_users: int | None = field(default=None, metadata={"help": "train on the first N users (valid items)"})
    max_eval_users: int = field(default=200, metadata={"help": "users whose test item is ranked after training; 0 skips"})
    n_negatives: int = field(default=19, metadata={"help": "sampled negatives per evaluated user (candidates = 1 + N)"})
    eval_seed: int = field(default=0, metadata={"help": "seed of the negative sampling"})
    eval_text_only: bool = field(default=True, metadata={
        "help": "also rank with the same prompt without soft tokens (the text-only LLM recommender)"})
    template: str | None = field(default=None, metadata={"help": "prompt template YAML (default prompts/rec/sailrec.yaml)"})
    text_embedder: str = field(default="backbone", metadata={
        "help": "item text semantics: 'backbone' (mean input embedding of the title's tokens), 'minilm' (the "
                "packaged sentence-transformers model) or a sentence-transformers folder"})
    codebook_codes: int = field(default=32, metadata={"help": "codes per codebook level (k-means k)"})
    codebook_levels: int = field(default=2, metadata={"help": "residual-quantization levels (1 = plain k-means)"})
    projector_width: int = field(default=256, metadata={"help": "hidden width of the projector MLPs"})
    align: bool = field(default=True, metadata={"help": "dual-side alignment losses on (false: the 'no alignment' ablation)"})
    item_align_weight: float = field(default=0.1, metadata={"help": "weight of the item-side InfoNCE"})
    user_align_weight: float = field(default=0.1, metadata={"help": "weight of the user-side code cross-entropy"})
    steer: bool = field(default=True, metadata={"help": "attention steering on (false: the 'no steering' ablation)"})
    steer_shallow: float = field(default=-2.0, metadata={"help": "logit bias on CF keys in the shallow layers"})
    steer_deep: float = field(default=2.0, metadata={"help": "logit bias on CF keys in the deep layers"})
    steer_split: float = field(default=0.5, metadata={"help": "share of layers (from the bottom) that are shallow"})
    steer_schedule: list[float] | None = field(default=None, metadata={
        "help": "explicit per-layer bias (one value per layer; overrides shallow/deep/split)"})

    def __post_init__(self):
        for name in ("data", "template", "cf_dir"):
            if isinstance(getattr(self, name), str) and getattr(self, name).strip().lower() in ("", "none"):
                setattr(self, name, None)
        if not self.cf_dir:
            raise LlmrecError("give cf_dir: a folder written by 'llmrec cf train' on the same data set")
        if self.n_negatives < 1:
            raise LlmrecError(f"n_negatives must be >= 1, got {self.n_negatives}")
        if self.codebook_codes < 2 or self.codebook_levels < 1:
            raise LlmrecError(f"need codebook_codes >= 2 and codebook_levels >= 1, got {self.codebook_codes}, "
                              f"{self.codebook_levels}")
        if not 0 <= self.steer_split <= 1:
            raise LlmrecError(f"steer_split must be in [0, 1], got {self.steer_split}")
        if min(self.item_align_weight, self.user_align_weight) < 0:
            raise LlmrecError("alignment weights must be >= 0")

    def schedule(self, num_layers: int) -> list[float]:
        from llmrec.sailrec.steering import layer_schedule

        if not self.steer:
            return [0.0] * num_layers
        return layer_schedule(num_layers, self.steer_shallow, self.steer_deep, self.steer_split, self.steer_schedule)


@dataclass
class SailRecData:
    """Everything the recipe needs from the data set and the CF model, in CF row space."""

    cf: object  # llmrec.cf.artifacts.CFRecommender
    titles: dict[str, str]  # item id -> title
    histories: dict[str, list[dict]]  # user -> train interactions (time order) [{"item_id", "title"}]
    valid: dict[str, str]  # user -> valid item id
    cases: list  # NextItemCase (test item, history train + valid, sampled negatives)
    split: object


def load_data(cfg: SailRecConfig) -> SailRecData:
    """Loads the CF model, its data set and the leave-one-out split, and the evaluation cases."""
    from llmrec.cf.artifacts import load_cf
    from llmrec.cf.interactions import slice_users
    from llmrec.data.loading import load_recdata
    from llmrec.data.splits import leave_one_out
    from llmrec.recommend.next_item import make_cases, user_histories

    cf = load_cf(cfg.cf_dir)
    if not cf.dot_product:
        raise LlmrecError(f"{cfg.cf_dir}: SAILRec needs user and item embeddings in one space (BPR-MF or LightGCN), "
                          f"not {cf.model_name}")
    c = cf.config
    path = cfg.data or c["data"]
    opts = {"item_meta": c["item_meta"]} if c.get("item_meta") else {}
    data = load_recdata(path, format=c.get("data_format", "auto"), **opts)
    if c.get("max_users"):
        data = slice_users(data, c["max_users"])
    split = leave_one_out(data, min_interactions=c.get("min_interactions", 3))
    titles = {str(i): (t or str(i)) for i, t in zip(data.items["item_id"], data.items["title"])}
    histories = user_histories(split.train)
    valid = {u: h[0]["item_id"] for u, h in user_histories(split.valid).items()}
    known = set(cf.user_ids)
    missing = [u for u in valid if u not in known]
    if missing:
        raise LlmrecError(f"{len(missing)} users of {path} are not in the CF model {cfg.cf_dir} (e.g. {missing[0]}): "
                          "train the CF model on the same data set")
    cases = make_cases([split.train, split.valid], split.test, n_negatives=cfg.n_negatives, seed=cfg.eval_seed,
                       max_users=cfg.max_eval_users or None) if cfg.max_eval_users else []
    return SailRecData(cf, titles, histories, valid, cases, split)


def item_text_embeddings(cfg: SailRecConfig, backbone, tokenizer, cf, titles: dict[str, str]) -> torch.Tensor:
    """``[n_items, text_dim]`` text semantics of every CF item row (see ``text_embedder``)."""
    texts = [titles.get(i, i) for i in cf.item_ids]
    if cfg.text_embedder == "backbone":
        table = backbone.get_input_embeddings().weight.detach().float()
        out = torch.zeros(len(texts), table.shape[1])
        for r, t in enumerate(texts):
            ids = tokenizer(t, add_special_tokens=False).input_ids or [tokenizer.eos_token_id]
            out[r] = table[torch.tensor(ids)].mean(0)
        return out
    from llmrec.training.tapper_data import TextEmbeddings

    emb = TextEmbeddings(None if cfg.text_embedder == "minilm" else cfg.text_embedder)
    emb.add(texts)
    return emb.matrix[torch.tensor([emb.index[t] for t in texts])]


def cf_histories(cf) -> list[np.ndarray]:
    """Train item rows per CF user row (the codebook profile's input)."""
    return [cf.train_items[cf.train_indptr[u]: cf.train_indptr[u + 1]] for u in range(len(cf.user_ids))]


class SailRecModel(nn.Module):
    """Frozen backbone + soft-token projector; the loss is LM + weighted alignment losses.

    Inputs (from :class:`SailRecCollator`): ``input_ids``, ``attention_mask``, ``slot_user``, ``slot_item``
    (``[b, s]``; -1 where a text token is), ``labels`` ``[b, s]`` and ``user_row`` ``[b]``.
    """

    def __init__(self, backbone, projector, user_emb: torch.Tensor, item_emb: torch.Tensor, item_text: torch.Tensor,
                 profiles: torch.Tensor, schedule: list[float], item_align_weight: float = 0.1,
                 user_align_weight: float = 0.1):
        super().__init__()
        from llmrec.sailrec import steering

        self.backbone = steering.enable(backbone)
        self.projector = projector
        self.register_buffer("user_emb", user_emb.float(), persistent=False)
        self.register_buffer("item_emb", item_emb.float(), persistent=False)
        self.register_buffer("item_text", item_text.float(), persistent=False)
        self.register_buffer("profiles", profiles.float(), persistent=False)
        self.register_buffer("bias", torch.tensor(schedule, dtype=torch.float32), persistent=False)
        self.item_align_weight, self.user_align_weight = item_align_weight, user_align_weight
        self.last: dict[str, float] = {}

    def embed(self, input_ids, slot_user, slot_item) -> torch.Tensor:
        from llmrec.sailrec.layout import embed_layout

        return embed_layout(self.backbone.get_input_embeddings(), self.projector, self.user_emb, self.item_emb,
                            slot_user, slot_item, input_ids)

    def steer_kwargs(self, slot_user, slot_item, steer: bool = True) -> dict:
        cf = (slot_user >= 0) | (slot_item >= 0)
        return {"sailrec_cf_keys": cf, "sailrec_bias": self.bias if steer else torch.zeros_like(self.bias)}

    def forward(self, input_ids, attention_mask, slot_user, slot_item, labels=None, user_row=None, **_):
        from llmrec.sailrec.projector import item_alignment_loss, user_alignment_loss

        x = self.embed(input_ids, slot_user, slot_item)
        out = self.backbone(inputs_embeds=x, attention_mask=attention_mask, labels=labels,
                            **self.steer_kwargs(slot_user, slot_item))
        loss = out.loss
        parts = {"lm_loss": float(loss.detach())}
        if self.item_align_weight > 0:
            rows = torch.unique(slot_item[slot_item >= 0])
            li = item_alignment_loss(self.projector.item(self.item_emb[rows]), self.item_text[rows],
                                     self.projector.item_readout, self.projector.log_temperature)
            loss = loss + self.item_align_weight * li
            parts["item_align"] = float(li.detach())
        if self.user_align_weight > 0 and user_row is not None:
            lu = user_alignment_loss(self.projector.code_logits(self.projector.user(self.user_emb[user_row])),
                                     self.profiles[user_row])
            loss = loss + self.user_align_weight * lu
            parts["user_align"] = float(lu.detach())
        self.last = parts
        return {"loss": loss, "logits": out.logits}


class SailRecDataset(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def train_rows(data: SailRecData, tokenizer, template, max_users: int | None = None) -> list[dict]:
    """One example per user: the train history (time order) asks for the valid item's title."""
    from llmrec.sailrec.layout import build_layout

    cf = data.cf
    rows = []
    end = tokenizer.eos_token or ""
    for user in sorted(data.valid):
        hist = data.histories.get(user) or []
        if not hist:
            continue
        lay = build_layout(tokenizer, template, [h["title"] for h in hist],
                           list(cf.item_index([h["item_id"] for h in hist])), int(cf.user_index([user])[0]))
        answer = tokenizer(data.titles.get(data.valid[user], data.valid[user]) + end, add_special_tokens=False).input_ids
        rows.append({"ids": lay.ids, "slot_user": lay.slot_user, "slot_item": lay.slot_item, "answer": answer,
                     "user_row": int(cf.user_index([user])[0])})
        if max_users and len(rows) >= max_users:
            break
    return rows


@dataclass
class SailRecCollator:
    pad_id: int

    def __call__(self, rows: list[dict]) -> dict:
        width = max(len(r["ids"]) + len(r["answer"]) for r in rows)
        b = len(rows)
        ids = torch.full((b, width), self.pad_id, dtype=torch.long)
        labels = torch.full((b, width), -100, dtype=torch.long)
        su = torch.full((b, width), -1, dtype=torch.long)
        si = torch.full((b, width), -1, dtype=torch.long)
        mask = torch.zeros((b, width), dtype=torch.long)
        for r, row in enumerate(rows):
            n, a = len(row["ids"]), len(row["answer"])
            ids[r, :n + a] = torch.tensor(row["ids"] + row["answer"])
            labels[r, n:n + a] = torch.tensor(row["answer"])
            su[r, :n] = torch.tensor(row["slot_user"])
            si[r, :n] = torch.tensor(row["slot_item"])
            mask[r, :n + a] = 1
        return {"input_ids": ids, "attention_mask": mask, "slot_user": su, "slot_item": si, "labels": labels,
                "user_row": torch.tensor([row["user_row"] for row in rows])}


def case_layout(data: SailRecData, case, tokenizer, template, cf_tokens: bool = True):
    """The prompt layout of an evaluation case (history = train + valid items)."""
    from llmrec.sailrec.layout import build_layout

    cf = data.cf
    hist = case.history
    return build_layout(tokenizer, template, [h["title"] for h in hist], list(cf.item_index([h["item_id"] for h in hist])),
                        int(cf.user_index([case.user_id])[0]), cf=cf_tokens)


@torch.no_grad()
def score_cases(model: SailRecModel, data: SailRecData, tokenizer, template, cf_tokens: bool = True,
                steer: bool = True, progress: bool = True) -> list[np.ndarray]:
    """Mean log p(candidate title + end-of-turn | prompt) per candidate of every case (KV cache shared).

    ``cf_tokens=False`` is the text-only LLM recommender (same prompt without soft tokens); ``steer=False``
    keeps the soft tokens but drops the steering (what stock vLLM computes from the same ``prompt_embeds``).
    """
    from tqdm.auto import tqdm

    end = tokenizer.eos_token or ""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()
    out = []
    for case in tqdm(data.cases, desc="scoring candidates", disable=not progress):
        lay = case_layout(data, case, tokenizer, template, cf_tokens)
        t = lambda v: torch.tensor([v], dtype=torch.long)
        su, si = t(lay.slot_user), t(lay.slot_item)
        kw = model.steer_kwargs(su, si, steer)
        x = model.embed(t(lay.ids), su, si)
        first = model.backbone(inputs_embeds=x, use_cache=True, **kw)
        first_logp = torch.log_softmax(first.logits[0, -1].float(), -1)
        cache = first.past_key_values
        cands = [data.titles.get(c, c) for c in case.candidates]
        a_ids = [tokenizer(c + end, add_special_tokens=False).input_ids for c in cands]
        cache.batch_repeat_interleave(len(cands))
        width = max(len(a) for a in a_ids)
        ids = torch.full((len(cands), width), pad, dtype=torch.long)
        amask = torch.zeros((len(cands), width), dtype=torch.long)
        for r, a in enumerate(a_ids):
            ids[r, :len(a)] = torch.tensor(a)
            amask[r, :len(a)] = 1
        mask = torch.cat([torch.ones((len(cands), x.shape[1]), dtype=torch.long), amask], 1)
        logits = model.backbone(input_ids=ids, attention_mask=mask, past_key_values=cache, **kw).logits.float()
        logp = torch.log_softmax(logits[:, :-1], -1)
        tok_lp = torch.cat([first_logp[ids[:, 0]].unsqueeze(1), logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)], 1)
        out.append(((tok_lp * amask).sum(1) / amask.sum(1)).numpy().astype(np.float64))
    return out


def cf_scores(data: SailRecData) -> list[np.ndarray]:
    """The CF model's own scores of every case's candidates (the "CF model alone" baseline)."""
    return [data.cf.score([c.user_id], c.candidates)[0].astype(np.float64) for c in data.cases]


def rank(scores, data: SailRecData, metrics: str = "ndcg@10,hr@10,hr@1,mrr") -> dict[str, float]:
    from llmrec.eval.llm_ranking import rank_cases

    return rank_cases(scores, [c.candidates for c in data.cases], [c.target for c in data.cases], metrics)
