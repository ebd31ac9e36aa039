"""The SFT recipe trains a LoRA adapter that actually learns, on real review data."""

from __future__ import annotations

import json

import pytest

from llmrec.errors import DataError, LlmrecError
from llmrec.training.sft import SFTDataArguments, read_prompt_completion_jsonl, to_chat_example, train_sft


def _review_rating_examples(shared_data, n=48):
    path = shared_data / "lamp" / "derived_lamp3_like_amazon_mi" / "dev_questions.json"
    outs = shared_data / "lamp" / "derived_lamp3_like_amazon_mi" / "dev_outputs.json"
    qs = json.loads(path.read_text())[:n]
    golds = {g["id"]: g["output"] for g in json.loads(outs.read_text())["golds"]}
    return [to_chat_example(q["input"][-300:], golds[q["id"]]) for q in qs]


def _config(tmp_path, name, **kw):
    from trl import SFTConfig

    base = {"output_dir": str(tmp_path / name), "max_steps": 16, "per_device_train_batch_size": 8,
            "logging_steps": 1, "save_strategy": "no", "report_to": [], "use_cpu": True, "bf16": False,
            "max_length": 160, "seed": 0, "disable_tqdm": True}
    return SFTConfig(**{**base, **kw})


def test_sft_learns_real_ratings(tiny_backbone, shared_data, tmp_path):
    from llmrec.training.metrics_log import read_metrics

    out = train_sft(tiny_backbone, _review_rating_examples(shared_data), _config(tmp_path, "full", learning_rate=3e-3))
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 16
    # Completion-only loss on a one-digit answer: from ~ln(vocab) = 7.6 to well below half of it.
    assert losses[0] > 7.0
    assert sum(losses[-3:]) / 3 < 0.45 * sum(losses[:3]) / 3
    assert (out / "metrics.png").is_file()


def test_sft_lora_saves_a_trained_adapter(tiny_backbone, shared_data, tmp_path):
    import torch
    from safetensors.torch import load_file

    from llmrec.training.sft import default_lora_config

    # A random tiny model learns slowly through LoRA; here we check the adapter is trained and saved.
    # (The demo shows LoRA learning on the pretrained backbone.)
    cfg = _config(tmp_path, "lora", max_steps=3, learning_rate=1e-2)
    out = train_sft(tiny_backbone, _review_rating_examples(shared_data, 24), cfg, default_lora_config(r=8))
    assert (out / "adapter_config.json").is_file()
    weights = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert len(lora_b) == 2 * 4  # 2 layers x q/k/v/o
    assert all(torch.count_nonzero(v) > 0 for v in lora_b)  # B starts at zero: nonzero means it trained


def test_jsonl_reader_and_errors(tmp_path):
    p = tmp_path / "train.jsonl"
    p.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c"}\n')
    with pytest.raises(DataError, match=r"train.jsonl: record 3, field 'completion'"):
        read_prompt_completion_jsonl(p)
    p.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", \n')
    with pytest.raises(DataError, match=r"train.jsonl: record 2: not JSON \(Expecting"):
        read_prompt_completion_jsonl(p)
    with pytest.raises(FileNotFoundError, match="nope.jsonl: no such file"):
        read_prompt_completion_jsonl(tmp_path / "nope.jsonl")
    p.write_text('{"prompt": "a", "completion": "b"}\n')
    rows = read_prompt_completion_jsonl(p, system_prompt="sys")
    assert rows == [{"prompt": [{"role": "system", "content": "sys"}, {"role": "user", "content": "a"}],
                     "completion": [{"role": "assistant", "content": "b"}]}]


def test_data_arguments_validate():
    with pytest.raises(LlmrecError, match="exactly one"):
        SFTDataArguments()
    with pytest.raises(LlmrecError, match="k must be"):
        SFTDataArguments(train_file="x", k=-1)


def test_check_lengths_counts_the_examples_trl_drops(tiny_backbone, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    from llmrec.errors import LlmrecError
    from llmrec.training.sft import check_lengths

    tok = AutoTokenizer.from_pretrained(tiny_backbone)
    short = to_chat_example("a short review of a guitar strap", "5")
    long_prompt = to_chat_example("great sound and a sturdy case " * 60, "5")
    long_answer = to_chat_example("a short review of a guitar strap", "it fits well " * 80)
    examples = [short, long_prompt, long_answer]
    with pytest.warns(UserWarning, match="1 of 3 examples lose their whole answer"):
        report = check_lengths(examples, tok, 160)
    assert report["dropped"] == 1 and report["cut"] == 1 and report["longest"] > 160
    # what TRL itself keeps with the same limit: all but the example whose prompt fills max_length
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_backbone), processing_class=tok,
                         args=_config(tmp_path, "len", max_length=160),
                         train_dataset=datasets.Dataset.from_list(examples))
    assert len(trainer.train_dataset) == len(examples) - report["dropped"]
    assert check_lengths(examples, tok, report["longest"]) == {"dropped": 0, "cut": 0, "longest": report["longest"]}
    with pytest.raises(LlmrecError, match="TRL would train on none: set max_length to at least"):
        check_lengths([long_prompt, long_prompt], tok, 160)
