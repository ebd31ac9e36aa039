"""Supervised warm start for ReRec: teach the answer format (reasoning, then ``\\boxed{...}``) before GRPO.

There is no teacher model here to distil reasoning from, so each answer is written from the task's own
columns (prompts/rerec/sft_answer.yaml): why the held-out target fits the stated need (the attributes it
shares with it), which candidates come next, and the ranking. The ranking puts the target first, then the
other candidates by attribute overlap with the need and by CF similarity (PAS) to the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmrec.paths import load_prompt_template

BOX_CHOICES = ("ranking", "named")


@dataclass
class SftAnswerTemplate:
    match: str
    no_match: str
    others: str
    answer: str
    ranking_length: int = 10
    scan: str = ""
    scan_none: str = ""
    # "ranking": the box lists the first ranking_length items of answer_ranking; "named": only the items the
    # reasoning named (the top item, then the others), so the box copies numbers already written
    box: str = "ranking"

    def __post_init__(self):
        if self.box not in BOX_CHOICES:
            raise ValueError(f"box must be one of {BOX_CHOICES}, got {self.box!r}")

    @classmethod
    def load(cls, path: str | Path | None = None) -> SftAnswerTemplate:
        """``path``: a file, or one relative to ``prompts/`` (default ``rerec/sft_answer.yaml``)."""
        return load_prompt_template(cls, path, "rerec/sft_answer.yaml")


def answer_ranking(task: dict) -> list[int]:
    """0-based candidate indices: targets first, then by (shared need attributes, PAS), ties by position."""
    need = set(task["target_attributes"])
    targets = set(task["targets"])
    order = sorted(range(len(task["candidates"])), key=lambda i: (
        task["candidates"][i] not in targets, -len(need & set(task["candidate_attributes"][i])),
        -task["candidate_pas"][i], i))
    return order


def sft_answer(task: dict, template: SftAnswerTemplate | None = None) -> str:
    template = template or SftAnswerTemplate.load()
    ranking = answer_ranking(task)[: template.ranking_length]
    top = ranking[0]
    from llmrec.training.rerec_tasks import category_attributes

    # only what the request itself states (categories/genres), not brand or price the user never named
    need = category_attributes(task["target_attributes"])
    scan = []
    if template.scan:
        for attribute in need:
            having = [str(i + 1) for i, attrs in enumerate(task["candidate_attributes"]) if attribute in attrs]
            scan.append(template.scan.format(attribute=attribute, numbers=", ".join(having)) if having
                        else (template.scan_none or template.scan).format(attribute=attribute, numbers=""))
    readable = [a for a in need if a in set(task["candidate_attributes"][top])]
    if readable:
        text = template.match.format(request=", ".join(readable), number=top + 1, title=task["candidate_titles"][top],
                                     matched=", ".join(readable))
    else:
        text = template.no_match.format(number=top + 1, title=task["candidate_titles"][top])
    need_set = set(task["target_attributes"])
    others = [i + 1 for i in ranking[1:4] if need_set & set(task["candidate_attributes"][i])]
    if others:
        text += " " + template.others.format(others=", ".join(map(str, others)))
    text = " ".join([*scan, text])
    boxed = [top + 1, *others] if template.box == "named" else [i + 1 for i in ranking]
    return text + " " + template.answer.format(ranking=", ".join(map(str, boxed)))


def rerec_sft_examples(tasks: list[dict], template: SftAnswerTemplate | None = None) -> list[dict]:
    """Chat prompt/completion pairs for TRL's SFTTrainer (loss on the answer only)."""
    template = template or SftAnswerTemplate.load()
    return [{"prompt": t["prompt"], "completion": [{"role": "assistant", "content": sft_answer(t, template)}]}
            for t in tasks]
