"""Does a BUMP profile help a model personalise? LaMP-3-style rating prediction with the profile in the prompt.

For test users, the rating questions are their held-out reviews (review text -> 1-5 stars, from
``llmrec.training.bump_tasks.build_rating_questions``: the same review data and users as the profile
tasks, never shown in the profile prompt). The rating model reads ``prompts/bump/rating.yaml`` with
or without the user's profile, and its answer is *scored*, not parsed: the probability of each
first answer token "1".."5" gives the argmax prediction and the expected value (both reported as
MAE and RMSE), so there are no parsing failures.

Conditions compared by :func:`bump_eval_report`: the trained profile writer's profiles, no profile,
the untrained model's profiles, and another user's trained profile (:func:`shuffle_profiles`, a
derangement: if this does as well as the user's own profile, the profile carries no personal signal).

The rater: an untrained 135M model prefers one digit whatever the prompt says, so every condition gets the
same argmax MAE. :func:`rater_sft_examples` builds SFT data for a rater from the *training-side* users
(never the evaluated ones), each question shown with the trained writer's profile, the untrained model's
profile or none in equal shares, so the rater learns to read a profile without favouring either writer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmrec.errors import LlmrecError
from llmrec.paths import load_prompt_template
from llmrec.text import cut_words

STARS = ("1", "2", "3", "4", "5")
CONDITIONS = ("trained_profile", "no_profile", "untrained_profile", "other_user_profile")


@dataclass
class RatingTemplate:
    """``prompts/bump/rating.yaml``."""

    prompt: str
    prompt_without_profile: str
    system: str | None = None
    max_profile_words: int | None = 120
    max_review_words: int | None = 200

    @classmethod
    def load(cls, path: str | Path | None = None) -> RatingTemplate:
        return load_prompt_template(cls, path, "bump/rating.yaml")

    def messages(self, review: str, profile: str | None) -> list[dict]:
        review = cut_words(review, self.max_review_words, squeeze=True)
        if profile and profile.strip():
            text = self.prompt.format(profile=cut_words(profile, self.max_profile_words, squeeze=True), review=review)
        else:
            text = self.prompt_without_profile.format(review=review)
        msgs = [{"role": "system", "content": self.system}] if self.system else []
        return msgs + [{"role": "user", "content": text}]


def load_causal_lm(model_path, adapter_path: str | Path | None = None, device: str | None = None):
    """(model, tokenizer) from a local folder / cached backbone name, optionally with a PEFT adapter.

    ``model_path`` may already be a ``(model, tokenizer)`` pair, returned as is (adapter not allowed then).
    """
    if isinstance(model_path, tuple):
        if adapter_path is not None:
            raise LlmrecError("pass a model path (not a loaded model) together with adapter_path")
        return model_path
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.backbone import resolve_backbone, tokenizer_folder

    folder = resolve_backbone(model_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    # bf16 is slower than fp32 on CPUs without bf16 instructions (docs/DEVELOPING.md).
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32 if device == "cpu" else torch.bfloat16)
    if adapter_path is not None:
        from peft import PeftModel

        if not Path(adapter_path).is_dir():
            raise LlmrecError(f"adapter folder {adapter_path} not found")
        model = PeftModel.from_pretrained(model, str(adapter_path))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder(folder, adapter_path))
    return model.to(device).eval(), tokenizer


def _chat_texts(tokenizer, messages: Sequence[list[dict]]) -> list[str]:
    return [tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in messages]


def _batches(tokenizer, texts: list[str], batch_size: int):
    """Index batches of similar token length (less padding); yields (indices, left-padded encoding)."""
    lengths = [len(tokenizer(t, add_special_tokens=False).input_ids) for t in texts]
    order = np.argsort(lengths, kind="stable")
    for a in range(0, len(order), batch_size):
        idx = [int(i) for i in order[a: a + batch_size]]
        yield idx, tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)


class _Scoring:
    """Eval mode and left padding for the duration of a block, then the caller's mode and padding side
    again (a trainer's policy and processing class are handed in while training goes on around them).
    A missing pad token is set to the end-of-sequence token and left so."""

    def __init__(self, model, tokenizer):
        self.model, self.tok = model, tokenizer

    def __enter__(self):
        self.training, self.side = self.model.training, self.tok.padding_side
        self.model.eval()
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        return self

    def __exit__(self, *exc):
        self.model.train(self.training)
        self.tok.padding_side = self.side


def generate_profiles(model_path, tasks, adapter_path: str | Path | None = None, max_new_tokens: int = 96,
                      batch_size: int = 8, progress: bool = True) -> dict[str, str]:
    """Greedy profile per task (``prompt`` chat messages, ``user_id``): ``{user_id: profile text}``.

    ``model_path``: a folder, a cached backbone name or a loaded ``(model, tokenizer)`` pair.
    """
    tasks = list(tasks)
    if not tasks:
        return {}
    model, tok = load_causal_lm(model_path, adapter_path)
    return generate_profiles_with_model(model, tok, tasks, max_new_tokens, batch_size, progress)


def generate_profiles_with_model(model, tokenizer, tasks, max_new_tokens: int = 96, batch_size: int = 8,
                                 progress: bool = True) -> dict[str, str]:
    """:func:`generate_profiles` with a loaded model (e.g. ``trainer.model`` after GRPO, a PEFT model)."""
    import torch
    from tqdm.auto import tqdm

    tasks = list(tasks)
    out: list[str] = [""] * len(tasks)
    device = next(model.parameters()).device
    bar = tqdm(total=len(tasks), desc="profiles", unit="user", disable=not progress)
    with _Scoring(model, tokenizer), torch.inference_mode():
        texts = _chat_texts(tokenizer, [t["prompt"] for t in tasks])
        for idx, enc in _batches(tokenizer, texts, batch_size):
            enc = enc.to(device)
            gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, temperature=None, top_p=None, top_k=None)
            for i, row in zip(idx, gen[:, enc["input_ids"].shape[1]:]):
                out[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            bar.update(len(idx))
    bar.close()
    return {t["user_id"]: text for t, text in zip(tasks, out)}


def star_token_ids(tokenizer) -> list[int]:
    """Token id of each answer "1".."5"; each must be one token (true for digit-splitting tokenizers)."""
    ids = []
    for s in STARS:
        enc = tokenizer(s, add_special_tokens=False).input_ids
        if len(enc) != 1:
            raise LlmrecError(f"the tokenizer splits the answer {s!r} into {len(enc)} tokens; rating scoring "
                              "needs each star digit to be one token")
        ids.append(enc[0])
    return ids


def star_logprobs(model_path, questions: Sequence[dict], profiles: Mapping[str, str | None], batch_size: int = 8,
                  template: RatingTemplate | str | Path | None = None, progress: bool = True) -> np.ndarray:
    """[n_questions, 5] log p(first answer token = star) under the model (full-vocabulary log-softmax)."""
    import torch
    from tqdm.auto import tqdm

    tpl = template if isinstance(template, RatingTemplate) else RatingTemplate.load(template)
    model, tok = load_causal_lm(model_path)
    stars = torch.tensor(star_token_ids(tok))
    out = np.zeros((len(questions), len(STARS)))
    device = next(model.parameters()).device
    bar = tqdm(total=len(questions), desc="rating", unit="question", disable=not progress)
    with _Scoring(model, tok), torch.inference_mode():
        texts = _chat_texts(tok, [tpl.messages(q["review"], profiles.get(q["user_id"])) for q in questions])
        for idx, enc in _batches(tok, texts, batch_size):
            enc = enc.to(device)
            # Left padding: positions must start at 0 at each row's first real token, as in generate().
            pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
            logits = model(**enc, position_ids=pos).logits[:, -1].float()
            lp = torch.log_softmax(logits, -1)[:, stars.to(device)]
            out[idx] = lp.cpu().numpy()
            bar.update(len(idx))
    bar.close()
    return out


def rating_mae(model_path, questions: Sequence[dict], profiles: Mapping[str, str | None], batch_size: int = 8,
               template: RatingTemplate | str | Path | None = None, progress: bool = True,
               return_predictions: bool = False) -> dict:
    """MAE/RMSE of the argmax star and of the expected star (probabilities renormalised over 1-5).

    ``questions``: ``{"id", "user_id", "review", "rating"}`` dicts; ``profiles``: user -> profile text
    or None (no profile in the prompt). ``star_mass`` is the mean probability the model puts on the
    five answers at all (low values mean it would answer something else when generating).
    """
    if not questions:
        raise LlmrecError("no rating questions to evaluate")
    lp = star_logprobs(model_path, questions, profiles, batch_size, template, progress)
    gold = np.array([float(q["rating"]) for q in questions])
    pred = lp.argmax(1) + 1.0
    p = np.exp(lp - lp.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    expected = p @ np.arange(1, 6)
    res = {
        "n": len(questions),
        "n_with_profile": sum(bool((profiles.get(q["user_id"]) or "").strip()) for q in questions),
        "mae": float(np.abs(pred - gold).mean()),
        "rmse": float(np.sqrt(((pred - gold) ** 2).mean())),
        "mae_expected": float(np.abs(expected - gold).mean()),
        "rmse_expected": float(np.sqrt(((expected - gold) ** 2).mean())),
        "star_mass": float(np.exp(lp).sum(1).mean()),
    }
    if return_predictions:
        res["predictions"] = [{"id": q["id"], "user_id": q["user_id"], "gold": int(g), "pred": int(a),
                               "expected": float(e)} for q, g, a, e in zip(questions, gold, pred, expected)]
    return res


def shuffle_profiles(profiles: Mapping[str, str | None], seed: int = 0) -> dict[str, str | None]:
    """Every user gets another user's profile (a seeded derangement: one random cycle over the users)."""
    users = sorted(profiles)
    if len(users) < 2:
        raise LlmrecError("shuffling profiles needs at least two users")
    order = [users[i] for i in np.random.default_rng(seed).permutation(len(users))]
    return {u: profiles[order[(k + 1) % len(order)]] for k, u in enumerate(order)}


def rater_sft_examples(questions: Sequence[dict], sources: Mapping[str, Mapping[str, str | None]], seed: int = 0,
                       template: RatingTemplate | str | Path | None = None) -> list[dict]:
    """SFT examples for a rating model: each question's prompt with one source's profile, the gold star as answer.

    ``sources``: name -> (user -> profile text, or None for no profile), e.g. ``{"trained": ..., "untrained":
    ..., "none": {}}``. The questions are shuffled (seeded) and dealt to the sources in turn, so each source
    gets an equal share and no question appears twice. Each example carries its ``source`` name.
    """
    if not sources:
        raise LlmrecError("rater_sft_examples needs at least one profile source")
    if not questions:
        raise LlmrecError("no rating questions to build rater examples from")
    tpl = template if isinstance(template, RatingTemplate) else RatingTemplate.load(template)
    names = list(sources)
    out = []
    for k, i in enumerate(np.random.default_rng(seed).permutation(len(questions))):
        q, name = questions[int(i)], names[k % len(names)]
        msgs = tpl.messages(q["review"], sources[name].get(q["user_id"]))
        out.append({"prompt": msgs, "completion": [{"role": "assistant", "content": str(int(q["rating"]))}],
                    "source": name, "id": q["id"]})
    return out


def condition_errors(report: dict, base: str = "trained_profile", seed: int = 0) -> dict[str, dict]:
    """Paired test per question of ``base`` against every other condition, on the expected star's absolute error
    (needs ``rating_mae(..., return_predictions=True)`` results). Positive ``mean_diff``: ``base`` errs more."""
    from llmrec.eval.llm_ranking import paired_comparison

    conds = report["conditions"]
    if base not in conds or "predictions" not in conds[base]:
        raise LlmrecError(f"condition {base!r} with per-question predictions is needed for the paired test")

    def errors(name):
        return [abs(p["expected"] - p["gold"]) for p in conds[name]["predictions"]]

    return {name: paired_comparison(errors(base), errors(name), seed=seed) for name in conds if name != base}


def constant_references(train_questions: Sequence[dict], questions: Sequence[dict]) -> dict[str, dict]:
    """MAE/RMSE on ``questions`` of answering every one with the training questions' most frequent star and with
    their mean star: a rater that does not beat these has learned the rating marginal, not the review."""
    if not train_questions or not questions:
        raise LlmrecError("constant references need training questions and evaluation questions")
    train = np.array([float(q["rating"]) for q in train_questions])
    gold = np.array([float(q["rating"]) for q in questions])
    stars, counts = np.unique(train, return_counts=True)
    out = {}
    for name, value in (("constant_mode", float(stars[counts.argmax()])), ("constant_mean", float(train.mean()))):
        out[name] = {"value": value, "mae": float(np.abs(value - gold).mean()),
                     "rmse": float(np.sqrt(((value - gold) ** 2).mean())), "n_train": len(train)}
    return out


def bump_eval_report(model_path, tasks, questions: Sequence[dict], adapter_path: str | Path | None = None,
                     trained_profiles: Mapping[str, str] | None = None,
                     untrained_profiles: Mapping[str, str] | None = None, rating_model_path=None,
                     rating_adapter_path: str | Path | None = None,
                     max_new_tokens: int = 96, batch_size: int = 8, seed: int = 0, progress: bool = True) -> dict:
    """The four-condition table: rating MAE/RMSE with trained / no / untrained / another user's profile.

    Args:
        model_path: the profile writer's base model (folder, backbone name or a (model, tokenizer) pair).
        tasks: BUMP tasks of the test users (``build_bump_tasks(..., split="test")``).
        questions: their rating questions (``build_rating_questions`` with the same arguments).
        adapter_path: the trained profile writer (LoRA); or pass ``trained_profiles`` already generated.
        untrained_profiles: reuse already generated base-model profiles.
        rating_model_path: the model that rates (default: ``model_path``, the untrained base), so only
            the profile differs between conditions.
        rating_adapter_path: a LoRA on the rating model, e.g. a rater fine-tuned on training-side users'
            questions (:func:`rater_sft_examples`).
    Returns ``{"conditions": {name: rating_mae(...) with per-question predictions}, "paired": trained profile
    vs each other condition (:func:`condition_errors`), "profiles": {...}, "n_users", "n_questions", ...}``.
    """
    if trained_profiles is None and adapter_path is None:
        raise LlmrecError("bump_eval_report needs adapter_path (the trained profile writer) or trained_profiles")
    # Checked before the minutes of profile writing, not when the rater is loaded after them.
    if rating_adapter_path is not None and not Path(rating_adapter_path).is_dir():
        raise LlmrecError(f"rater adapter folder {rating_adapter_path} not found")
    tasks = list(tasks)
    if trained_profiles is None:
        trained_profiles = generate_profiles(model_path, tasks, adapter_path, max_new_tokens, batch_size, progress)
        import gc

        gc.collect()
    base = load_causal_lm(model_path)
    if untrained_profiles is None:
        untrained_profiles = generate_profiles(base, tasks, None, max_new_tokens, batch_size, progress)
    if rating_model_path is None and rating_adapter_path is None:
        rater = base
    else:
        rater = load_causal_lm(model_path if rating_model_path is None else rating_model_path, rating_adapter_path)
    conditions = {
        "trained_profile": dict(trained_profiles),
        "no_profile": {t["user_id"]: None for t in tasks},
        "untrained_profile": dict(untrained_profiles),
        "other_user_profile": shuffle_profiles(trained_profiles, seed),
    }
    table = {name: rating_mae(rater, questions, profs, batch_size, progress=progress, return_predictions=True)
             for name, profs in conditions.items()}
    report = {"model": str(model_path if not isinstance(model_path, tuple) else "<loaded model>"),
              "adapter": None if adapter_path is None else str(adapter_path),
              "rater": {"model": None if rating_model_path is None or isinstance(rating_model_path, tuple)
                        else str(rating_model_path),
                        "adapter": None if rating_adapter_path is None else str(rating_adapter_path)},
              "n_users": len(tasks), "n_questions": len(questions), "seed": seed, "conditions": table,
              "profiles": {"trained": dict(trained_profiles), "untrained": dict(untrained_profiles)}}
    report["paired"] = condition_errors(report, seed=seed)
    return report


def format_report_table(report: dict) -> str:
    """The report's conditions as a Markdown table (MAE / RMSE of argmax and expected stars)."""
    lines = ["| condition | MAE | RMSE | MAE (expected) | RMSE (expected) | star mass |",
             "|---|---|---|---|---|---|"]
    for name, m in report["conditions"].items():
        lines.append(f"| {name} | {m['mae']:.3f} | {m['rmse']:.3f} | {m['mae_expected']:.3f} | "
                     f"{m['rmse_expected']:.3f} | {m['star_mass']:.3f} |")
    for name, m in report.get("references", {}).items():
        lines.append(f"| {name} ({m['value']:.2f}, from {m['n_train']} training-side answers) | {m['mae']:.3f} | "
                     f"{m['rmse']:.3f} | | | |")
    if report.get("paired"):
        lines += ["", ("Trained profile vs each condition, per question, on |expected star - gold| (negative: "
                       "the trained profile errs less):"), "",
                  "| vs | mean diff | 95% CI | Wilcoxon p | better / worse / tied |", "|---|---|---|---|---|"]
        for name, p in report["paired"].items():
            lo, hi = p["ci95"]
            # A lower error is a win for the trained profile: paired_comparison counted base > other as "wins".
            lines.append(f"| {name} | {p['mean_diff']:+.3f} | {lo:+.3f}..{hi:+.3f} | {p['wilcoxon_p']:.3g} | "
                         f"{p['losses']} / {p['wins']} / {p['ties']} |")
    return "\n".join(lines)
