"""`llmrec train grpo-rerec` end to end on the tiny backbone and real MovieLens tasks: metrics, curriculum,
token-level advantages, resume after a kill, accelerate with 2 CPU processes, and TRL's own CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llmrec.paths import configs_dir

CONFIG = str(configs_dir() / "grpo-rerec_ml100k.yaml")


@pytest.fixture(scope="module")
def ml100k_tasks_file(shared_data, tmp_path_factory) -> Path:
    from llmrec.data import load_recdata
    from llmrec.training.rerec_tasks import build_rerec_tasks, write_tasks_jsonl

    tasks = build_rerec_tasks(load_recdata(shared_data / "movielens" / "recbole_ml-100k"), split="train",
                              n_candidates=20, max_history=5, seed=0, cf=None, max_users=12)
    path = tmp_path_factory.mktemp("rerec") / "tasks.jsonl"
    write_tasks_jsonl(tasks[:12], path)
    return path


def _flags(tiny_backbone, tasks_file, out, steps=2, extra=()):
    # per_device 8 = 2 tasks x 4 rollouts per step; tiny completions keep the test quick
    return ["--config", CONFIG, "--model_name_or_path", str(tiny_backbone), "--data", "", "--cf_dir", "",
            "--tasks_file", str(tasks_file), "--output_dir", str(out), "--max_steps", str(steps),
            "--max_completion_length", "24", "--per_device_train_batch_size", "8", "--num_generations", "4",
            "--save_steps", "2", "--lora_target_modules", "q_proj", "v_proj", *extra]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_grpo_rerec_cli_trains_and_logs(tiny_backbone, ml100k_tasks_file, tmp_path):
    from llmrec.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "grpo-rerec", *_flags(tiny_backbone, ml100k_tasks_file, out, steps=3)]) == 0
    assert (out / "adapter_model.safetensors").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {k for r in records for k in r}
    for key in ("rewards/format/mean", "rewards/ndcg/mean", "rewards/qas/mean", "rewards/pas/mean", "reward",
                "rerec/format_valid", "reasoning/bad_token_share"):
        assert key in logged, key
    curriculum = [json.loads(line) for line in (out / "curriculum.jsonl").read_text().splitlines()]
    assert curriculum[0]["pass"] == 0 and curriculum[0]["tasks_kept"] == 12
    meta = json.loads((out / "llmrec_train.json").read_text())
    assert meta["reward_funcs"] == ["format", "ndcg", "qas", "pas"] and meta["reward_weights"] == [1.0, 1.0, 0.5, 0.5]


def test_plain_grpo_baseline_uses_ndcg_only(tiny_backbone, ml100k_tasks_file, tmp_path):
    from llmrec.cli.main import main

    out = tmp_path / "ndcg"
    flags = _flags(tiny_backbone, ml100k_tasks_file, out, steps=1, extra=["--reward", "ndcg", "--curriculum", "false"])
    assert main(["train", "grpo-rerec", *flags]) == 0
    logged = {k for line in (out / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
    assert "rewards/ndcg/mean" in logged and "rewards/format/mean" not in logged
    assert "rerec/format_valid" in logged  # malformed answers are counted without the format reward too
    assert "reasoning/bad_token_share" not in logged and not (out / "curriculum.jsonl").exists()


def test_shaping_fallback_gates_the_shaping_rewards(tiny_backbone, ml100k_tasks_file, tmp_path):
    from llmrec.cli.main import main

    out = tmp_path / "fallback"
    flags = _flags(tiny_backbone, ml100k_tasks_file, out, steps=1,
                   extra=["--shaping", "fallback", "--curriculum", "false", "--reasoning_aware", "false"])
    assert main(["train", "grpo-rerec", *flags]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    gated = [r["rerec/shaping_gated"] for r in records if "rerec/shaping_gated" in r]
    assert gated and all(0.0 <= g <= 1.0 for g in gated)
    assert json.loads((out / "llmrec_train.json").read_text())["llmrec"]["shaping"] == "fallback"


def test_box_blame_options_reach_the_trainer(tiny_backbone, ml100k_tasks_file, tmp_path, monkeypatch):
    from llmrec.cli.main import main
    from llmrec.training import grpo_trainer

    seen = {}

    class Spy(grpo_trainer.LlmrecGRPOTrainer):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(grpo_trainer, "LlmrecGRPOTrainer", Spy)
    out = tmp_path / "blame"
    flags = _flags(tiny_backbone, ml100k_tasks_file, out, steps=1,
                   extra=["--bad_segment_penalty", "advantage", "--box_rule", "top-item", "--curriculum", "false"])
    assert main(["train", "grpo-rerec", *flags]) == 0
    assert seen["bad_segment_penalty"] == "advantage"
    assert seen["segment_fn"].keywords["box_rule"] == "top-item"
    meta = json.loads((out / "llmrec_train.json").read_text())["llmrec"]
    assert meta["bad_segment_penalty"] == "advantage" and meta["box_rule"] == "top-item"
    logged = {k for line in (out / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
    assert "reasoning/bad_token_share" in logged


def test_trainer_hands_trl_the_gated_rewards(tiny_backbone, ml100k_tasks_file, tmp_path):
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    from llmrec.rewards.rerec import make_component_rewards
    from llmrec.training.grpo_trainer import LlmrecGRPOTrainer
    from llmrec.training.rerec_tasks import read_tasks_jsonl

    tasks = read_tasks_jsonl(ml100k_tasks_file)[:2]
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbone)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    config = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=2,
                        max_completion_length=8, report_to=[], reward_weights=[1.0, 1.0, 0.5, 0.5], use_cpu=True)
    trainer = LlmrecGRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_backbone), reward_funcs=make_component_rewards(),
        args=config, train_dataset=datasets.Dataset.from_list(tasks), processing_class=tokenizer,
        shaping_anchor="ndcg")

    def number(task, hit):
        return next(i + 1 for i, c in enumerate(task["candidates"]) if (c in task["targets"]) == hit)

    # task 0: one rollout ranks the target first, one does not (NDCG separates them); task 1: both miss
    completions = [f"The first fits. \\boxed{{{number(tasks[0], True)}}}",
                   f"The first fits. \\boxed{{{number(tasks[0], False)}}}",
                   f"The first fits. \\boxed{{{number(tasks[1], False)}}}", "no box"]
    inputs = [tasks[0], tasks[0], tasks[1], tasks[1]]
    rpf = trainer._calculate_rewards(inputs, [t["prompt"] for t in inputs], completions, [[0]] * 4)
    assert trainer.reward_func_names == ["format", "ndcg", "qas", "pas"]
    assert rpf[0].tolist() == [0.0, 1.0, 0.0, 0.0] and rpf[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert rpf[2, 0].item() == 1.0 and rpf[3].tolist() == [0.0, 0.0, 0.0, 0.0]  # flat group: format kept
    mode = "train" if trainer.model.training else "eval"
    assert trainer._metrics[mode]["rerec/shaping_gated"] == [0.5]


def test_resume_after_kill_loses_no_step(tiny_backbone, ml100k_tasks_file, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "llmrec.cli.main", "train", "grpo-rerec",
           *_flags(tiny_backbone, ml100k_tasks_file, out, steps=6)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (out / "checkpoint-2" / "curriculum_state.json").exists():
            assert proc.poll() is None, "training ended before its first checkpoint"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)  # mid-run, as a pre-empted job would be
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (out / "checkpoint-6").exists()
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6
    steps = [r["step"] for r in state["log_history"] if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # every step once: none lost, none repeated
    logged = [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert logged == [1, 2, 3, 4, 5, 6]  # the metrics log too, whatever the killed run logged past checkpoint-2
    assert json.loads((out / "checkpoint-6" / "curriculum_state.json").read_text())["pass_no"] >= 1


def test_a_resumed_run_drops_the_logged_steps_past_its_checkpoint(tmp_path):
    """The killed run logged steps 5 and 6 after checkpoint-4 and was cut writing 7; resumed at 4, the log keeps
    1-4 and goes on."""
    from types import SimpleNamespace

    from llmrec.training.metrics_log import JsonlMetricsCallback, read_metrics

    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 7)) + '{"step": 7, "lo')
    callback = JsonlMetricsCallback(log, plot=False)
    callback.on_train_begin(None, SimpleNamespace(is_world_process_zero=True, global_step=4), None)
    callback.on_log(None, SimpleNamespace(is_world_process_zero=True, global_step=5, epoch=1.0), None,
                    logs={"loss": 0.3})
    assert [(r["step"], r["loss"]) for r in read_metrics(log)] == [(1, 1.0), (2, 0.5), (3, 1 / 3), (4, 0.25), (5, 0.3)]
    callback.on_train_begin(None, SimpleNamespace(is_world_process_zero=True, global_step=0), None)
    assert read_metrics(log) == []  # a fresh start (no checkpoint) in the same folder logs from scratch


def test_accelerate_launch_two_cpu_processes(tiny_backbone, ml100k_tasks_file, tmp_path):
    out = tmp_path / "ddp"
    # accelerate's --multi_gpu launcher is torchrun: without a GPU its processes train on CPU over gloo
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "llmrec.cli.main", "train", "grpo-rerec",
           # 4 rollouts of one task per process per step: a group spans both processes
           *_flags(tiny_backbone, ml100k_tasks_file, out, steps=2, extra=["--per_device_train_batch_size", "4"])]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (out / "adapter_model.safetensors").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]  # written once, by the main process
    assert json.loads((out / "llmrec_train.json").read_text())["processes"] == 2
    assert "reasoning/bad_token_share" in {k for r in records for k in r}


def test_trl_own_cli_uses_the_dotted_reward(tiny_backbone, ml100k_tasks_file, tmp_path):
    """`trl grpo --reward_funcs llmrec.rewards.rerec.rerec_reward` trains with our reward, no llmrec code path."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "train.jsonl").write_text(ml100k_tasks_file.read_text())
    out = tmp_path / "trl"
    cmd = [sys.executable, "-m", "trl.cli.main", "grpo", "--model_name_or_path", str(tiny_backbone),
           "--dataset_name", str(data_dir), "--reward_funcs", "llmrec.rewards.rerec.rerec_reward",
           "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", "4",
           "--num_generations", "4", "--max_completion_length", "16", "--use_cpu", "true", "--bf16", "false",
           "--report_to", "none", "--logging_steps", "1", "--save_strategy", "no"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "rewards/rerec_reward/mean" in done.stdout + done.stderr


def test_grpo_continues_an_existing_adapter(tiny_backbone, tiny_adapter_dir, ml100k_tasks_file, tmp_path):
    """--init_adapter (the SFT warm start) is trained further, not replaced by a fresh LoRA."""
    from peft import PeftConfig
    from safetensors.torch import load_file

    from llmrec.cli.main import main

    out = tmp_path / "cont"
    flags = _flags(tiny_backbone, ml100k_tasks_file, out, steps=1,
                   extra=["--init_adapter", str(tiny_adapter_dir / "tinylora"), "--learning_rate", "0.01"])
    with pytest.warns(UserWarning, match=r"keeps its own LoRA settings: lora_r 8 \(config: 16\), lora_alpha 16 "
                      r"\(config: 32\), lora_dropout 0.0 \(config: 0.05\)"):
        assert main(["train", "grpo-rerec", *flags, "--lora_dropout", "0.05"]) == 0
    assert PeftConfig.from_pretrained(out).r == 8  # the SFT adapter's shape (the config asks r=16)
    before = load_file(tiny_adapter_dir / "tinylora" / "adapter_model.safetensors")
    after = load_file(out / "adapter_model.safetensors")
    assert set(before) == set(after)
    # trained: its own weights, all of them (a random tiny model earns no reward variance to move them)
    trainable = json.loads((out / "llmrec_train.json").read_text())["trainable_parameters"]
    assert trainable == sum(t.numel() for t in before.values())


def test_grpo_bump_trains_and_exports_profiles_to_the_user_store(tiny_backbone, shared_data, tmp_path, capsys):
    """`llmrec train grpo-bump`: MiniLM-judged in-batch reward over 4 users x 4 rollouts, profiles exported."""
    from llmrec.cli.main import main
    from llmrec.serving.user_state import open_user_store

    data = shared_data / "amazon" / "musical_instruments_5core_2014"
    if not data.is_dir():
        pytest.skip(f"{data} absent")
    out, store = tmp_path / "bump", tmp_path / "users"
    flags = ["--config", str(configs_dir() / "grpo-bump_mi.yaml"), "--model_name_or_path", str(tiny_backbone),
             "--data", str(data), "--max_train_tasks", "8", "--output_dir", str(out), "--max_steps", "2",
             "--max_completion_length", "16", "--per_device_train_batch_size", "16", "--num_generations", "4",
             "--save_steps", "2", "--lora_target_modules", "q_proj", "v_proj", "--export_store", str(store)]
    assert main(["train", "grpo-bump", *flags]) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rewards = [r["rewards/bump_reward/mean"] for r in records if "rewards/bump_reward/mean" in r]
    assert len(rewards) == 2 and all(0.0 <= x <= 1.0 for x in rewards)
    assert {"bump/profile_to_items", "bump/items_to_profile"} <= {k for r in records for k in r}
    meta = json.loads((out / "llmrec_train.json").read_text())
    assert meta["recipe"] == "grpo-bump" and meta["tasks"] == 8 and meta["reward_funcs"] == ["bump_reward"]
    # the random tiny model's greedy profiles are newlines only, so the store must hold exactly the
    # non-blank ones the export reported (blank skipping and round trips: test_bump_tasks.py)
    reported = int(re.search(r"exported (\d+) profiles to", capsys.readouterr().out).group(1))
    st = open_user_store(store)
    assert len(st.user_ids()) == reported <= 8
    assert all(st.get(u).profile.strip() for u in st.user_ids())


def test_kl_to_the_warm_start_not_to_the_bare_backbone(tiny_backbone, tiny_adapter_dir, ml100k_tasks_file, tmp_path):
    """With --beta and --init_adapter the KL reference is the warm start (TRL keeps a frozen copy of the adapter),
    so the first step, where the policy still is the warm start, logs a KL of 0; against the bare backbone it would
    not (the tiny SFT adapter changes the model's output)."""
    from llmrec.cli.main import main

    out = tmp_path / "kl"
    flags = _flags(tiny_backbone, ml100k_tasks_file, out, steps=2,
                   extra=["--init_adapter", str(tiny_adapter_dir / "tinylora"), "--learning_rate", "0.01",
                          "--beta", "0.04"])
    assert main(["train", "grpo-rerec", *flags]) == 0
    kl = [r["kl"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "kl" in r]
    assert len(kl) == 2 and kl[0] == pytest.approx(0.0, abs=1e-7)


def test_init_adapter_lora_warning_names_only_the_settings_that_differ():
    import warnings
    from types import SimpleNamespace

    from llmrec.training.grpo_recipe import _warn_lora_settings_not_applied

    adapter = SimpleNamespace(r=16, lora_alpha=32, lora_dropout=0.05, target_modules={"v_proj", "q_proj"})
    same = SimpleNamespace(lora_r=16, lora_alpha=32, lora_dropout=0.05, lora_target_modules=["q_proj", "v_proj"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_lora_settings_not_applied(adapter, same, "sft")  # nothing differs: no warning
    other = SimpleNamespace(lora_r=16, lora_alpha=32, lora_dropout=0.0, lora_target_modules="all-linear")
    with pytest.warns(UserWarning) as caught:
        _warn_lora_settings_not_applied(adapter, other, "sft")
    assert str(caught[0].message) == ("init_adapter sft keeps its own LoRA settings: lora_dropout 0.05 (config: 0.0), "
                                      "lora_target_modules ['q_proj', 'v_proj'] (config: ['all-linear'])")
