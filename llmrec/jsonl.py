"""JSON lines files: one record a line, UTF-8, the format llmrec writes tasks, products and estimates in."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """One record a line (UTF-8 JSON, non-ASCII kept); parent folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path
