"""Where llmrec finds its data files and keeps its cache."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path


def _package_dir(package: str) -> Path:
    return Path(str(resources.files(package)))


def prompts_dir() -> Path:
    """The ``prompts/`` folder (templates), installed as ``llmrec.prompts``."""
    return _package_dir("llmrec.prompts")


def configs_dir() -> Path:
    """The ``configs/`` folder (YAML recipes), installed as ``llmrec.configs``."""
    return _package_dir("llmrec.configs")


def cache_dir() -> Path:
    """Root of llmrec's cache: ``$LLMREC_CACHE``, else ``$XDG_CACHE_HOME/llmrec``, else ``~/.cache/llmrec``."""
    if os.environ.get("LLMREC_CACHE"):
        root = Path(os.environ["LLMREC_CACHE"])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llmrec"
    return root.expanduser()


def shared_data_dir() -> Path | None:
    """The team's read-only real data (``../shared/data`` beside a checkout), if present.

    ``$LLMREC_SHARED_DATA`` overrides. Used by tests and benchmarks only; users point commands at
    their own files.
    """
    env = os.environ.get("LLMREC_SHARED_DATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parent.parent
    candidates.append(repo.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


def load_prompt_template(cls, path: str | Path | None, default: str):
    """A prompt-template dataclass from a YAML file (``default``: its path under ``prompts/``).

    ``path`` may also be relative to ``prompts/`` ("rerec/task_attributes.yaml"). A missing file, a missing or
    unknown key, or a value the dataclass refuses (ValueError) is one error line naming the file, not a traceback.
    """
    import yaml

    from llmrec.errors import LlmrecError

    path = Path(path) if path else prompts_dir() / default
    if not path.is_file() and not path.is_absolute() and (prompts_dir() / path).is_file():
        path = prompts_dir() / path
    if not path.is_file():
        raise LlmrecError(f"prompt template {path} not found")
    try:
        return cls(**(yaml.safe_load(path.read_text(encoding="utf-8")) or {}))
    except (TypeError, ValueError) as e:
        raise LlmrecError(f"{path}: {e}") from None
