"""Every config in configs/ parses: recipe configs with their recipe's own parser (TRL's TrlParser), the
others (named after their command) with that command's loader."""

from __future__ import annotations

import pytest

from llmrec.cli.train import RECIPES
from llmrec.paths import configs_dir

CONFIGS = sorted(configs_dir().glob("*.yaml"))


# Configs of commands other than `llmrec train`: file-name prefix -> (module, function, takes argv).
LOADERS = {
    "carbon": ("llmrec.carbon.config", "load_config", False),
    "cf": ("llmrec.cf.recipe", "parse", True),  # `llmrec cf train`, parsed by TrlParser like the recipes
}


def _recipe_of(path):
    return path.stem.split("_")[0]


def test_there_are_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_parses(path):
    import importlib

    recipe = _recipe_of(path)
    header = path.read_text().splitlines()[:3]
    assert header[0].startswith("# Purpose:") and any(line.startswith("# Run:") for line in header)
    if recipe in LOADERS:
        module, fn, takes_argv = LOADERS[recipe]
        load = getattr(importlib.import_module(module), fn)
        assert load(["--config", str(path)]) if takes_argv else load(path)
        return
    assert recipe in RECIPES, f"{path.name}: no recipe '{recipe}' (file names start with the recipe or a LOADERS key)"
    module = importlib.import_module(RECIPES[recipe][0].split(":")[0])
    parsed = module.parse(["--config", str(path)], prog=f"llmrec train {recipe}")
    assert parsed  # dataclasses built and validated (each __post_init__ ran)


def test_flags_override_the_yaml():
    from llmrec.training.sft_recipe import parse

    data, sft, model = parse(["--config", str(configs_dir() / "sft_lamp.yaml"), "--max_steps", "3", "--k", "5"],
                             prog="llmrec train sft")
    assert sft.max_steps == 3 and data.k == 5 and model.lora_r == 16 and model.use_peft


def test_grpo_rerec_alignment_k_flag():
    from llmrec.errors import LlmrecError
    from llmrec.training.grpo_recipe import parse

    cfg = str(configs_dir() / "grpo-rerec_ml100k.yaml")
    assert parse(["--config", cfg], prog="llmrec train grpo-rerec")[0].alignment_k is None  # = ndcg_k
    assert parse(["--config", cfg, "--alignment_k", "1"], prog="llmrec train grpo-rerec")[0].alignment_k == 1
    bad = parse(["--config", cfg, "--alignment_k", "0"], prog="llmrec train grpo-rerec")[0]
    with pytest.raises(LlmrecError, match="alignment_k must be at least 1"):
        bad.check()  # run before any model loads


def test_grpo_rerec_box_rule_reaches_the_segmenter():
    from llmrec.errors import LlmrecError
    from llmrec.training.grpo_recipe import parse, rerec_segment_fn

    cfg = str(configs_dir() / "grpo-rerec_ml100k.yaml")
    args = parse(["--config", cfg, "--box_rule", "top-item"], prog="llmrec train grpo-rerec")[0]
    args.check()
    assert args.box_rule == "top-item"
    assert parse(["--config", cfg], prog="llmrec train grpo-rerec")[0].box_rule == "format"
    with pytest.raises(LlmrecError, match="bad_segment_penalty must be one of"):
        parse(["--config", cfg, "--bad_segment_penalty", "tokens"], prog="llmrec train grpo-rerec")[0].check()
    with pytest.raises(LlmrecError, match="box_rule must be one of"):
        parse(["--config", cfg, "--box_rule", "first"], prog="llmrec train grpo-rerec")[0].check()
    example = {"targets": ["b"], "candidates": ["a", "b", "c"], "candidate_titles": ["A", "B", "C"]}
    text = "Item 2 fits. \\boxed{1, 2, 3}"
    assert [bad for _, _, bad in rerec_segment_fn(text, example)] == [False, False]
    assert [bad for _, _, bad in rerec_segment_fn(text, example, box_rule="top-item")] == [False, True]


def test_grpo_rerec_refuses_fallback_shaping_without_shaping_terms():
    from llmrec.errors import LlmrecError
    from llmrec.training.grpo_recipe import parse

    cfg = str(configs_dir() / "grpo-rerec_ml100k.yaml")
    parse(["--config", cfg, "--shaping", "fallback"], prog="llmrec train grpo-rerec")[0].check()
    bad = parse(["--config", cfg, "--shaping", "fallback", "--reward", "ndcg"], prog="llmrec train grpo-rerec")[0]
    with pytest.raises(LlmrecError, match="--reward ndcg has none"):
        bad.check()


def test_train_sft_end_to_end_from_the_cli(tiny_backbone, shared_data, tmp_path):
    """`llmrec data build-lamp` then `llmrec train sft` on real reviews, tiny model, 2 steps."""
    from llmrec.cli.main import main

    mi = shared_data / "amazon" / "musical_instruments_5core_2014" / "Musical_Instruments.json"
    lamp = tmp_path / "lamp"
    assert main(["data", "build-lamp", "--data", str(mi), "--task", "rating", "--out", str(lamp)]) == 0
    out = tmp_path / "run"
    rc = main(["train", "sft", "--config", str(configs_dir() / "sft_lamp.yaml"), "--lamp_dir", str(lamp),
               "--model_name_or_path", str(tiny_backbone), "--output_dir", str(out), "--max_steps", "2",
               "--per_device_train_batch_size", "2", "--logging_steps", "1", "--max_train_examples", "8",
               "--retriever", "bm25", "--max_length", "512", "--lora_target_modules", "q_proj", "v_proj"])
    assert rc == 0
    assert (out / "adapter_model.safetensors").is_file()
    assert (out / "metrics.jsonl").read_text().count("loss") >= 2
