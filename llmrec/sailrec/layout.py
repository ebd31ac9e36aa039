"""Where SAILRec's soft tokens sit in the prompt, shared by training, evaluation and serving.

The template (``prompts/rec/sailrec.yaml``) is rendered with marker strings where the soft tokens go, put
through the tokenizer's chat template, split at the markers, and each text piece tokenized on its own
(no added special tokens, as the gateway does for chat prompts). A soft token takes one position: the user's
after "A user", each history item's right after its title. :func:`prompt_embeds` builds the
``[seq, hidden]`` tensor vLLM takes as ``prompt_embeds`` from exactly this layout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from llmrec.errors import LlmrecError

USER_MARK = "<<sailrec:user>>"
ITEM_MARK = "<<sailrec:item>>"
_SPLIT = re.compile(f"({re.escape(USER_MARK)}|{re.escape(ITEM_MARK)})")


@dataclass
class SailRecTemplate:
    system: str
    history_item: str
    prompt: str
    max_history: int = 8

    @classmethod
    def load(cls, path: str | Path | None = None) -> SailRecTemplate:
        from llmrec.paths import load_prompt_template

        return load_prompt_template(cls, path, "rec/sailrec.yaml")

    def messages(self, titles: list[str], cf: bool = True) -> list[dict]:
        """Chat messages for the history ``titles`` (oldest first), with soft-token markers when ``cf``."""
        # The soft token follows the word directly: BPE tokenizers attach a space to the next word, so a
        # space before the marker would become a lone space token.
        user = USER_MARK if cf else ""
        item = ITEM_MARK if cf else ""
        lines = [self.history_item.format(title=t, item_cf=item) for t in titles[-self.max_history:]]
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": self.prompt.format(user_cf=user, history="\n".join(lines))}]


@dataclass
class Layout:
    """Token ids of a prompt with soft-token slots: ``slot_user[p]`` / ``slot_item[p]`` is the CF row whose soft
    token goes at position ``p`` (-1: a text token). Slot positions hold ``pad_id`` in ``ids``."""

    ids: list[int]
    slot_user: list[int] = field(default_factory=list)
    slot_item: list[int] = field(default_factory=list)

    @property
    def cf_positions(self) -> list[int]:
        return [p for p, (u, i) in enumerate(zip(self.slot_user, self.slot_item)) if u >= 0 or i >= 0]


def build_layout(tokenizer, template: SailRecTemplate, titles: list[str], item_rows: list[int], user_row: int,
                 cf: bool = True) -> Layout:
    """The prompt of one user: history ``titles`` with their CF ``item_rows`` (same order), the user's CF row."""
    if len(titles) != len(item_rows):
        raise LlmrecError(f"{len(titles)} titles but {len(item_rows)} item rows")
    item_rows = item_rows[-template.max_history:]
    text = tokenizer.apply_chat_template(template.messages(titles, cf), tokenize=False, add_generation_prompt=True)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids: list[int] = []
    su: list[int] = []
    si: list[int] = []
    items = iter(item_rows)
    for piece in _SPLIT.split(text):
        if piece == USER_MARK:
            ids.append(pad), su.append(user_row), si.append(-1)
        elif piece == ITEM_MARK:
            ids.append(pad), su.append(-1), si.append(next(items))
        elif piece:
            toks = tokenizer(piece, add_special_tokens=False).input_ids
            ids += toks
            su += [-1] * len(toks)
            si += [-1] * len(toks)
    return Layout(ids, su, si)


def embed_layout(table, projector, user_emb, item_emb, slot_user, slot_item, ids):
    """``[b, s, hidden]`` input embeddings: token rows of ``table`` with soft tokens at the slots.

    ``ids`` / ``slot_user`` / ``slot_item``: ``[b, s]`` long tensors; ``user_emb`` / ``item_emb``: the CF
    tables ``[n_users, d]`` / ``[n_items, d]``; ``table``: the backbone's input embedding module or weight.
    """
    import torch

    x = table(ids) if callable(table) else table[ids]
    u, i = slot_user >= 0, slot_item >= 0
    if u.any():
        x = x.masked_scatter(u[..., None], projector.user(user_emb[slot_user[u]]).to(x.dtype))
    if i.any():
        x = x.masked_scatter(i[..., None], projector.item(item_emb[slot_item[i]]).to(x.dtype))
    return x if torch.is_tensor(x) else torch.as_tensor(x)


def prompt_embeds(tokenizer, table, projector, user_emb, item_emb, layout: Layout):
    """float32 ``[seq, hidden]`` for vLLM's ``prompt_embeds`` (send with ``llmrec.serving.prompt_embeds.encode_embeds``).

    Stock vLLM serves the soft tokens but not the attention steering (see docs/sailrec.md).
    """
    import torch

    with torch.no_grad():
        t = lambda v: torch.tensor([v], dtype=torch.long)
        x = embed_layout(table, projector, torch.as_tensor(user_emb), torch.as_tensor(item_emb),
                         t(layout.slot_user), t(layout.slot_item), t(layout.ids))
    return x[0].float()
