"""TAP-PER examples from LaMP-format task folders: token ids in the gateway's layout plus history embeddings.

Each question gives one example: the chat-templated prompt (the question input alone, as the LaMP
template renders it without profile: the prefix replaces the text profile), the answer tokens (gold +
end of turn), and the user's history: the question's profile entries in time order (the last
``max_history``), each rendered by the task template's ``item`` line (so a rating history carries the
scores, a title history the titles) and embedded once by sentence-transformers. Ages are
``log1p(days)`` from each entry's ``timestamp`` to the question's; files without timestamps (official
LaMP) get age 0 everywhere, so the recency decay has nothing to act on there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmrec.errors import LlmrecError

SPLIT_ORDER = ("train", "dev", "test")


@dataclass
class TapperExample:
    user_id: str | None
    qid: str
    task: str
    prompt_ids: list[int]
    answer_ids: list[int]
    history: list[str]  # rendered profile entries, oldest first
    ages: list[float]  # log1p(days before the question), one per history entry
    query: str  # the text the query embedding is taken from


def chat_ids(tokenizer, messages: list[dict], answer: str) -> tuple[list[int], list[int]]:
    """``(prompt ids, answer ids)``: the prompt exactly as the gateway tokenizes a chat request
    (chat template with generation prompt, no added special tokens); the answer is the rest of the
    templated conversation (gold text + end of turn)."""
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": answer}], tokenize=False)
    if not full.startswith(prompt):
        raise LlmrecError("the chat template renders the assistant turn differently from the generation prompt")
    return (tokenizer(prompt, add_special_tokens=False)["input_ids"],
            tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"])


def history_of(question: dict, template, max_history: int) -> tuple[list[str], list[float]]:
    """The question's last ``max_history`` profile entries (time order) rendered, and their ages."""
    from llmrec.training.tapper import age_feature

    profile = list(question["profile"])
    if all("timestamp" in p for p in profile):
        profile.sort(key=lambda p: p["timestamp"])
    profile = profile[-max_history:]
    tq = question.get("timestamp")
    if tq is not None and profile and all("timestamp" in p for p in profile):
        ages = age_feature(float(tq), torch.tensor([float(p["timestamp"]) for p in profile])).tolist()
    else:
        ages = [0.0] * len(profile)
    return [template.render_item(p) for p in profile], ages


def read_split(lamp_dir: str | Path, split: str, with_golds: bool = True):
    """``(questions, golds | None, task)`` of one split of a LaMP folder."""
    from llmrec.data.lamp_format import load_questions, read_outputs

    lamp_dir = Path(lamp_dir)
    qpath, opath = lamp_dir / f"{split}_questions.json", lamp_dir / f"{split}_outputs.json"
    if not qpath.is_file():
        raise LlmrecError(f"{qpath} not found (build it with 'llmrec data build-lamp')")
    if not opath.is_file():
        raise LlmrecError(f"{opath} not found (the task name and golds are read from it)")
    golds = read_outputs(opath)
    return load_questions(qpath), golds.outputs if with_golds else None, golds.task


def lamp_tapper_examples(lamp_dir: str | Path, split: str, tokenizer, *, max_history: int = 32,
                         max_input_words: int | None = None, system_prompt: str | None = None,
                         limit: int | None = None) -> list[TapperExample]:
    """One :class:`TapperExample` per question of ``{split}_questions.json`` (first ``limit`` ones)."""
    from llmrec.eval.lamp_predict import LampTemplate

    questions, golds, task = read_split(lamp_dir, split)
    if limit is not None:
        questions = questions[:limit]
    template = LampTemplate.for_task(task)
    if max_input_words is not None:
        template.max_input_words = max_input_words
    system = system_prompt or template.system
    out = []
    for q in questions:
        if q["id"] not in golds:
            raise LlmrecError(f"{lamp_dir}/{split}_outputs.json: no output for question {q['id']!r}")
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": template.render(q["input"], [])}]
        prompt_ids, answer_ids = chat_ids(tokenizer, messages, golds[q["id"]])
        history, ages = history_of(q, template, max_history)
        out.append(TapperExample(q.get("user_id"), q["id"], task, prompt_ids, answer_ids, history, ages,
                                 template.query(q["input"])))
    if not out:
        raise LlmrecError(f"{lamp_dir}: no {split} questions")
    return out


class TextEmbeddings:
    """Each distinct text embedded once (sentence-transformers, L2-normalised) -> rows of one matrix."""

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 64):
        from llmrec.eval.retrieval import DenseRetriever

        self.encoder = DenseRetriever(model_path, batch_size=batch_size)
        self.index: dict[str, int] = {}
        self.matrix = torch.zeros(0, 0)

    @property
    def dim(self) -> int:
        model = self.encoder.model
        # sentence-transformers 6 renamed the method; older releases only have the old name.
        get = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get())

    def add(self, texts) -> None:
        new = [t for t in dict.fromkeys(texts) if t not in self.index]
        if not new:
            return
        emb = torch.from_numpy(self.encoder.embed(new)).float()
        if not self.index:
            self.matrix = emb
        else:
            self.matrix = torch.cat([self.matrix, emb])
        for t in new:
            self.index[t] = len(self.index)

    def add_examples(self, examples: list[TapperExample]) -> None:
        self.add([t for ex in examples for t in (*ex.history, ex.query)])


class TapperDataset(torch.utils.data.Dataset):
    """Examples as dicts of ids and indices into the embedding matrix (the collator looks them up)."""

    def __init__(self, examples: list[TapperExample], embeddings: TextEmbeddings):
        embeddings.add_examples(examples)
        self.rows = [{"prompt_ids": ex.prompt_ids, "answer_ids": ex.answer_ids,
                      "history": [embeddings.index[t] for t in ex.history], "ages": ex.ages,
                      "query": embeddings.index[ex.query]} for ex in examples]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class TapperCollator:
    """Pads a batch: tokens right-padded (labels -100 on the prompt and padding), histories padded + masked."""

    def __init__(self, embeddings: TextEmbeddings, pad_token_id: int):
        self.embeddings, self.pad_token_id = embeddings, pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        matrix = self.embeddings.matrix
        b = len(rows)
        n = max(len(r["history"]) for r in rows)
        s = max(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in rows)
        history = torch.zeros(b, n, matrix.shape[1])
        ages = torch.zeros(b, n)
        hmask = torch.zeros(b, n, dtype=torch.bool)
        ids = torch.full((b, s), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros(b, s, dtype=torch.long)
        labels = torch.full((b, s), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["history"])
            if k:
                history[i, :k] = matrix[torch.tensor(r["history"])]
                ages[i, :k] = torch.tensor(r["ages"])
                hmask[i, :k] = True
            p, a = r["prompt_ids"], r["answer_ids"]
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            mask[i, :len(p) + len(a)] = 1
            labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        return {"history": history, "history_age": ages, "history_mask": hmask,
                "query": matrix[torch.tensor([r["query"] for r in rows])], "input_ids": ids,
                "attention_mask": mask, "labels": labels}


def latest_questions(lamp_dir: str | Path) -> list[dict]:
    """Each user's latest question over all splits of a LaMP folder (later timestamp, then later split)."""
    best: dict[str, tuple] = {}
    for rank, split in enumerate(SPLIT_ORDER):
        if not (Path(lamp_dir) / f"{split}_questions.json").is_file():
            continue
        questions, _, task = read_split(lamp_dir, split, with_golds=False)
        for i, q in enumerate(questions):
            if q.get("user_id") is None:
                raise LlmrecError(f"{lamp_dir}/{split}_questions.json: question {q['id']!r} has no user_id, so its "
                                  "prefix cannot be keyed in the user-state store (use 'llmrec data build-lamp')")
            key = (float(q.get("timestamp") or 0), rank, i)
            if q["user_id"] not in best or key > best[q["user_id"]][0]:
                best[q["user_id"]] = (key, q, task)
    if not best:
        raise LlmrecError(f"{lamp_dir}: no questions files")
    return [{**q, "task": task} for _, q, task in (best[u] for u in sorted(best))]
