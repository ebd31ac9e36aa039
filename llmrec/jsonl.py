"""JSON lines files: one record a line, UTF-8, the format llmrec writes tasks, products and estimates in."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """One record a line (UTF-8 JSON, non-ASCII kept); parent folders created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, object]]:
    """``(line number, value)`` for each non-blank line; a line that is not JSON raises a DataError naming the
    file and the line, so a user can open it there."""
    from llmrec.errors import DataError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield n, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"not JSON ({e.msg})", file=str(path), record=n) from None
