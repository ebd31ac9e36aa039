"""TAP-PER: the prefix encoder, its recency decay, the ``tapper`` recipe on real reviews, export, footprint."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llmrec.paths import configs_dir
from llmrec.training.tapper import (
    PrefixEncoder,
    RecencyAttention,
    _inverse_softplus,
    age_feature,
    footprint,
    lora_params,
)

DAY = 86400


def _encoder(**kw) -> PrefixEncoder:
    torch.manual_seed(0)
    return PrefixEncoder(**{"hidden_size": 128, "in_dim": 384, "user_slots": 3, "query_slots": 2, "dim": 64,
                            "num_heads": 4, "embed_norm": 0.7, **kw}).eval()


def _history(b=2, n=5):
    g = torch.Generator().manual_seed(1)
    hist = torch.randn(b, n, 384, generator=g)
    age = torch.rand(b, n, generator=g) * 5
    mask = torch.ones(b, n, dtype=torch.bool)
    mask[1, 3:] = False  # the second user has only 3 entries
    return hist, age, mask, torch.randn(b, 384, generator=g)


def test_encoder_shapes_scale_and_the_two_parts():
    enc = _encoder()
    hist, age, mask, query = _history()
    with torch.no_grad():
        out = enc(hist, age, mask, query)
        assert out.shape == (2, 5, 128) and enc.prefix_len == 5
        # Scale-matched: every vector has the backbone's mean token-embedding norm (gain starts at 1).
        assert torch.allclose(out.norm(dim=-1), torch.full((2, 5), 0.7), atol=1e-5)
        # The query moves only the query part; the user-state part depends on the history alone.
        other = enc(hist, age, mask, query.flip(0))
        assert torch.allclose(out[:, :3], other[:, :3]) and not torch.allclose(out[:, 3:], other[:, 3:])
        # Padding is ignored: the second user's padded entries can hold anything.
        noisy = hist.clone()
        noisy[1, 3:] = 100.0
        assert torch.allclose(enc(noisy, age, mask, query)[1], out[1], atol=1e-6)
        # The stored prefix (null query, no query embedding) and an empty history are defined and finite.
        stored = enc(hist, age, mask, query=None)
        assert stored.shape == (2, 5, 128) and torch.allclose(stored[:, :3], out[:, :3])
        assert torch.allclose(enc(hist, age, mask, query, null_query=torch.tensor([True, False]))[0], stored[0])
        empty = enc(torch.zeros(2, 0, 384), torch.zeros(2, 0), torch.zeros(2, 0, dtype=torch.bool), query)
        assert empty.shape == (2, 5, 128) and torch.isfinite(empty).all()


def test_age_feature_is_log1p_days_clamped():
    got = age_feature(torch.tensor([10 * DAY, 10 * DAY, 10 * DAY]), torch.tensor([10 * DAY, 7 * DAY, 11 * DAY]))
    assert torch.allclose(got, torch.tensor([0.0, math.log(4.0), 0.0]))


def test_recency_decay_changes_attention_by_hand():
    """Two identical history items, one today and one e^2 - 1 days old (age feature 0 and 2): the content
    logits are equal, so the weight ratio is exactly exp(decay * 2)."""
    enc = _encoder(user_slots=1, num_heads=1, init_decay=0.7)
    assert torch.allclose(enc.user_attn.decay(), torch.tensor([0.7]))
    item = torch.randn(384)
    hist = torch.stack([item, item])[None]
    tq = 1000 * DAY
    age = age_feature(tq, torch.tensor([[tq, tq - (math.e ** 2 - 1) * DAY]]))
    assert torch.allclose(age, torch.tensor([[0.0, 2.0]]))
    mask = torch.ones(1, 2, dtype=torch.bool)
    with torch.no_grad():
        w = enc.user_attention(hist, age, mask)[0, 0, 0]  # [null, recent, old]
        assert w.sum().item() == pytest.approx(1.0)
        assert (w[1] / w[2]).item() == pytest.approx(math.exp(0.7 * 2), rel=1e-5)
        enc.user_attn.raw_decay.fill_(_inverse_softplus(1e-6))  # (almost) no decay: equal weights
        w0 = enc.user_attention(hist, age, mask)[0, 0, 0]
        assert (w0[1] / w0[2]).item() == pytest.approx(1.0, abs=1e-5)
    # The decay is learned: the loss reaches it, and it stays non-negative whatever the raw value.
    enc.user_attn.raw_decay.data.fill_(-50.0)
    assert enc.user_attn.decay().item() >= 0
    enc.user_attn.raw_decay.data.fill_(0.0)
    enc(hist, age, mask, None).sum().backward()
    assert enc.user_attn.raw_decay.grad is not None and enc.user_attn.raw_decay.grad.abs().sum() > 0


def test_recency_attention_without_decay_is_content_only():
    att = RecencyAttention(64, 4, None)
    assert att.raw_decay is None and torch.equal(att.decay(), torch.zeros(4))


# ---------------------------------------------------------------------------------------------- footprint


def test_footprint_equals_a_hand_computation(tiny_backbone):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

    # SmolLM2-135M: hidden 576, 9 heads, 3 KV heads (head_dim 64), 30 layers.
    smol = LlamaConfig(hidden_size=576, num_attention_heads=9, num_key_value_heads=3, num_hidden_layers=30,
                       intermediate_size=1536, vocab_size=49152)
    per_layer = 8 * ((576 + 576) + (576 + 192) + (576 + 192) + (576 + 576))  # q, k, v, o: r * (in + out)
    assert lora_params(smol, 8) == 30 * per_layer == 921_600
    fp = footprint(smol, prefix_len=8, lora_rank=8, users=1000, encoder_params=1_000_000)
    d = fp.as_dict()
    assert d["prefix_params_per_user"] == 8 * 576 == 4608 and d["prefix_bytes_per_user"] == 4608 * 4
    assert d["tapper_total_params"] == 1000 * 4608 + 1_000_000
    assert d["lora_total_params"] == 921_600_000 and d["lora_total_bytes"] == 921_600_000 * 4
    assert d["per_user_ratio"] == pytest.approx(200.0)
    assert "921,600" in fp.table()

    # The formula agrees with PEFT's own count on a real model (tiny Qwen2: GQA, head_dim 64).
    config = AutoConfig.from_pretrained(tiny_backbone)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_backbone),
                           LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    assert lora_params(config, 4) == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_params(config, 4) == 2 * 4 * ((128 + 128) + (128 + 64) + (128 + 64) + (128 + 128))


def test_footprint_flag_prints_the_table(tiny_backbone, capsys):
    from llmrec.cli.main import main

    rc = main(["train", "tapper", "--config", str(configs_dir() / "tapper_mi.yaml"), "--model_name_or_path",
               str(tiny_backbone), "--footprint", "true", "--footprint_users", "10", "--footprint_lora_rank", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    # tiny: hidden 128, K = 8 -> 1,024 per user; LoRA r=2 on 2 layers -> 2 * 2 * 896 = 3,584 per user.
    assert "1,024 (8 x 128)" in out and "3,584" in out and "total params, 10 users" in out


# ---------------------------------------------------------------------------------------------- real data


def _subset(src, dst, sizes: dict[str, int]):
    from llmrec.data.lamp_format import load_questions, read_outputs, write_outputs, write_questions

    for split, n in sizes.items():
        qs = load_questions(src / f"{split}_questions.json")[:n]
        golds = read_outputs(src / f"{split}_outputs.json")
        write_questions(dst / f"{split}_questions.json", qs)
        write_outputs(dst / f"{split}_outputs.json", golds.task, {q["id"]: golds.outputs[q["id"]] for q in qs})
    return dst


@pytest.fixture(scope="module")
def mi_lamp(shared_data, tmp_path_factory):
    """Small LaMP folders (rating and title) cut from the real Musical Instruments build."""
    from llmrec.cli.main import main

    mi = shared_data / "amazon" / "musical_instruments_5core_2014" / "Musical_Instruments.json"
    root = tmp_path_factory.mktemp("tapper_lamp")
    out = {}
    for task in ("rating", "title"):
        assert main(["data", "build-lamp", "--data", str(mi), "--task", task, "--out", str(root / f"full_{task}")]) == 0
        out[task] = _subset(root / f"full_{task}", root / task, {"train": 8, "dev": 4, "test": 4})
    return out


@pytest.fixture(scope="module")
def steerable_backbone(tiny_backbone, tmp_path_factory):
    """The tiny Qwen2 re-initialised with std 0.1 instead of 0.02, same tokenizer.

    At std 0.02 a random tiny LM's logits are nearly flat (max logit about 2.6 over 2,048 tokens) and its
    attention nearly uniform, so *no* input, prefix included, can move it much while it stays frozen; a
    larger init gives it the dynamic range a pretrained LM has, which prefix training relies on.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_backbone)
    config.initializer_range = 0.1
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("steerable")
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_backbone).save_pretrained(out)
    return out


class _FrozenCheck:
    """Snapshots the backbone and encoder at train begin; records what changed at train end."""

    def __new__(cls):
        from transformers import TrainerCallback

        class Check(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, **kw):
                self.backbone = {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}
                self.encoder = {k: v.detach().clone() for k, v in model.encoder.state_dict().items()}
                self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}

            def on_train_end(self, args, state, control, model=None, **kw):
                self.backbone_changed = [k for k, v in model.backbone.state_dict().items()
                                         if not torch.equal(v, self.backbone[k])]
                self.encoder_changed = [k for k, v in model.encoder.state_dict().items()
                                        if not torch.equal(v, self.encoder[k])]

        return Check()


@pytest.fixture(scope="module")
def trained(steerable_backbone, mi_lamp, tmp_path_factory):
    """The recipe overfits the 8 real rating questions (40 steps, batch 8), exporting prefixes."""
    from llmrec.training.tapper_recipe import parse, train_tapper

    out = tmp_path_factory.mktemp("tapper_run")
    store = out / "users"
    args, targs, margs = parse(["--config", str(configs_dir() / "tapper_mi.yaml"), "--lamp_dirs",
                                str(mi_lamp["rating"]), "--output_dir", str(out / "run"), "--max_steps", "40",
                                "--learning_rate", "0.01", "--warmup_steps", "0", "--lr_scheduler_type", "constant",
                                "--logging_steps", "5", "--save_strategy", "no", "--disable_tqdm", "true",
                                "--export_store", str(store), "--max_eval_examples", "4"],
                               prog="llmrec train tapper")
    check = _FrozenCheck()
    run = train_tapper(steerable_backbone, args, targs, margs, callbacks=[check])
    return {"run": run, "store": store, "check": check, "args": args}


def test_recipe_learns_on_real_reviews(trained):
    from llmrec.training.metrics_log import read_metrics

    losses = [r["loss"] for r in read_metrics(trained["run"] / "metrics.jsonl") if "loss" in r]
    assert len(losses) == 8
    # Overfitting 8 examples: the answer loss falls by a clear margin (measured: 7.6 -> 1.8 nats).
    assert losses[-1] < losses[0] - 3.0 and losses[-1] < 3.0
    assert (trained["run"] / "metrics.png").is_file()
    assert all("recency_decay" in r for r in read_metrics(trained["run"] / "metrics.jsonl") if "loss" in r)
    ev = json.loads((trained["run"] / "eval.json").read_text())
    (scores,) = ev.values()
    assert scores["examples"] == 4 and set(scores) >= {"query", "stored", "other_user", "no_prefix"}


def test_only_the_encoder_trains(trained):
    check = trained["check"]
    assert check.backbone_changed == []
    assert check.encoder_changed  # the encoder did learn
    assert check.trainable and all(n.startswith("encoder.") for n in check.trainable)


def test_saved_encoder_reloads(trained):
    from llmrec.training.tapper import load_encoder

    enc, doc = load_encoder(trained["run"])
    assert enc.prefix_len == 8 and doc["encoder"]["hidden_size"] == 128 and doc["tasks"] == ["LaMP_3"]
    assert doc["train_examples"] == 8 and doc["embedder"]
    assert not (trained["run"] / "model.safetensors").exists()  # the frozen backbone is not copied


def test_export_writes_prefixes_the_gateway_accepts(trained, mi_lamp, steerable_backbone):
    import numpy as np

    from llmrec.data.lamp_format import load_questions
    from llmrec.eval.lamp_predict import LampTemplate
    from llmrec.serving.prompt_embeds import PromptEmbedder
    from llmrec.serving.user_state import open_user_store
    from llmrec.training.tapper import load_encoder
    from llmrec.training.tapper_data import TextEmbeddings, history_of

    store = open_user_store(trained["store"], create=False)
    users = {q["user_id"] for s in ("train", "dev", "test")
             for q in load_questions(mi_lamp["rating"] / f"{s}_questions.json")}
    assert set(store.user_ids()) == users and len(users) == 16
    emb = PromptEmbedder.load(steerable_backbone)
    q = load_questions(mi_lamp["rating"] / "test_questions.json")[0]
    state = store.get(q["user_id"])
    assert state.prefix.dtype == np.float32 and state.prefix.shape == (8, 128)
    assert state.meta["written_by"] == "llmrec train tapper"
    ids = emb.token_ids(emb.chat_prompt([{"role": "user", "content": q["input"]}]), chat=True)
    assert emb.with_prefix(state.prefix, ids=ids).shape == (8 + len(ids), 128)

    # The stored prefix is the reloaded encoder's query-free output over the user's latest profile.
    enc, doc = load_encoder(trained["run"])
    texts = TextEmbeddings()
    hist, ages = history_of(q, LampTemplate.for_task("LaMP_3"), doc["max_history"])
    texts.add(hist)
    with torch.no_grad():
        again = enc(texts.matrix[None], torch.tensor([ages]), torch.ones(1, len(hist), dtype=torch.bool), None)[0]
    assert np.allclose(again.numpy(), state.prefix, atol=1e-5)


def test_training_layout_is_the_gateways(steerable_backbone, mi_lamp):
    """``[prefix; chat-templated prompt]`` built for training equals the gateway's ``with_prefix``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmrec.eval.lamp_predict import LampTemplate
    from llmrec.serving.prompt_embeds import PromptEmbedder
    from llmrec.training.tapper import PrefixEncoder, TapperModel
    from llmrec.training.tapper_data import (
        TapperCollator,
        TapperDataset,
        TextEmbeddings,
        lamp_tapper_examples,
        read_split,
    )

    tok = AutoTokenizer.from_pretrained(steerable_backbone)
    examples = lamp_tapper_examples(mi_lamp["title"], "dev", tok, max_input_words=40, limit=2)
    texts = TextEmbeddings()
    batch = TapperCollator(texts, tok.pad_token_id)([TapperDataset(examples, texts)[0]])
    torch.manual_seed(0)
    model = TapperModel(AutoModelForCausalLM.from_pretrained(steerable_backbone), PrefixEncoder(128)).eval()
    n = len(examples[0].prompt_ids)
    with torch.no_grad():
        embeds, mask = model.embed(batch["history"], batch["history_age"], batch["history_mask"], None,
                                   batch["input_ids"][:, :n], batch["attention_mask"][:, :n])
        prefix = model.encoder(batch["history"], batch["history_age"], batch["history_mask"], None)[0]
    questions, _, task = read_split(mi_lamp["title"], "dev")
    template = LampTemplate.for_task(task)
    template.max_input_words = 40
    emb = PromptEmbedder.load(steerable_backbone)
    text = emb.chat_prompt([{"role": "user", "content": template.render(questions[0]["input"], [])}])
    served = emb.with_prefix(prefix.numpy(), ids=emb.token_ids(text, chat=True))
    assert embeds[0].shape == served.shape and torch.allclose(embeds[0], served, atol=1e-6)
    assert mask.sum() == served.shape[0]
    # The answer is the gold plus the end of turn, exactly what the chat template puts after the prompt.
    gold = tok.decode(examples[0].answer_ids)
    assert gold.endswith("<|im_end|>\n") and gold[:-len("<|im_end|>\n")].strip()


def test_cli_trains_two_tasks_and_exports(steerable_backbone, mi_lamp, tmp_path, capsys):
    """`llmrec train tapper` end to end: rating and title jointly, a shared LoRA, 2 steps, a SQLite store."""
    from llmrec.cli.main import main
    from llmrec.serving.user_state import open_user_store

    out = tmp_path / "run"
    rc = main(["train", "tapper", "--config", str(configs_dir() / "tapper_mi.yaml"), "--model_name_or_path",
               str(steerable_backbone), "--lamp_dirs", str(mi_lamp["rating"]), str(mi_lamp["title"]),
               "--output_dir", str(out), "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no",
               "--max_eval_examples", "2", "--export_store", str(tmp_path / "users.sqlite"), "--disable_tqdm", "true",
               "--use_peft", "true", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj",
               "--export_adapter", "tapper"])
    assert rc == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "tapper_encoder.safetensors").is_file()
    assert "LoRA / prefix" in capsys.readouterr().out
    doc = json.loads((out / "tapper_encoder.json").read_text())
    assert doc["tasks"] == ["LaMP_3", "LaMP_4"] and doc["train_examples"] == 16
    assert set(json.loads((out / "eval.json").read_text())) == {str(mi_lamp["rating"]), str(mi_lamp["title"])}
    fp = json.loads((out / "footprint.json").read_text())
    assert fp["prefix_params_per_user"] == 8 * 128 and fp["users"] == 1000
    assert fp["shared_lora_params"] == 2 * 4 * ((128 + 128) + (128 + 64))  # 2 layers, r=4 on q and v, once
    store = open_user_store(tmp_path / "users.sqlite")
    assert len(store.user_ids()) == 16
    state = store.get(store.user_ids()[0])
    assert state.adapter == "tapper" and state.prefix.shape == (8, 128)


def test_a_killed_run_resumes_from_its_checkpoint(steerable_backbone, mi_lamp, tmp_path):
    """Checkpoints hold the encoder (not the backbone); a second start continues from the last one."""
    from llmrec.cli.main import main
    from llmrec.training.metrics_log import read_metrics

    out = tmp_path / "run"
    argv = ["train", "tapper", "--config", str(configs_dir() / "tapper_mi.yaml"), "--model_name_or_path",
            str(steerable_backbone), "--lamp_dirs", str(mi_lamp["rating"]), "--output_dir", str(out),
            "--logging_steps", "1", "--save_steps", "2", "--max_eval_examples", "0", "--disable_tqdm", "true",
            "--per_device_train_batch_size", "4"]
    assert main([*argv, "--max_steps", "2"]) == 0
    ckpt = out / "checkpoint-2"
    assert (ckpt / "tapper_encoder.safetensors").is_file() and not (ckpt / "model.safetensors").exists()
    assert main([*argv, "--max_steps", "3"]) == 0
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == [1, 2, 3]
