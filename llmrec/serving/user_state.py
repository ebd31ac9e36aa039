"""Per-user state that training writes and the serving gateway reads, keyed by OpenAI's ``user`` field.

A user's state holds any of: a text profile (BUMP) injected into the prompt, soft-prefix vectors
(TAP-PER / SAILRec, ``[K, hidden]``) sent to vLLM as ``prompt_embeds``, the name of a LoRA adapter
to route to, and the item ids of the user's history (for ``/v1/recommendations``).

Two interchangeable back ends, picked by the path: a directory (one JSON file per user plus one
``.npy`` per prefix; easy to inspect, rsync and diff) or a SQLite file (``*.sqlite`` / ``*.db``; one
file, safe for concurrent writers). Prefixes are stored as ``.npy`` bytes in both, loaded with
``allow_pickle=False``, so a store never executes code.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np

from llmrec.errors import LlmrecError

SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
MAX_USER_ID_LEN = 256


@dataclass
class UserState:
    user_id: str
    profile: str | None = None
    prefix: np.ndarray | None = None  # [K, hidden] float
    adapter: str | None = None
    history: list[str] = field(default_factory=list)  # item ids, oldest first
    meta: dict = field(default_factory=dict)  # free-form provenance (which run wrote what, when)

    def mechanisms(self) -> list[str]:
        """What this state can personalize with, in the order the gateway applies them."""
        out = []
        if self.adapter:
            out.append("adapter")
        if self.profile:
            out.append("profile")
        if self.prefix is not None:
            out.append("prefix")
        return out


def check_user_id(user_id: object) -> str:
    if not isinstance(user_id, str) or not user_id:
        raise LlmrecError(f"user id must be a non-empty string, got {user_id!r}")
    if len(user_id) > MAX_USER_ID_LEN:
        raise LlmrecError(f"user id longer than {MAX_USER_ID_LEN} characters")
    return user_id


def _check_prefix(prefix) -> np.ndarray:
    arr = np.asarray(prefix.detach().cpu().float().numpy() if hasattr(prefix, "detach") else prefix)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise LlmrecError(f"a prefix must be a [K, hidden] matrix, got shape {tuple(arr.shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise LlmrecError(f"a prefix must be floating point, got {arr.dtype}")
    if not np.isfinite(arr).all():
        raise LlmrecError("a prefix contains NaN or infinite values")
    return arr.astype(np.float32, copy=False)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_load(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


class UserStore:
    """Common interface; use :func:`open_user_store`."""

    path: Path

    def get(self, user_id: str) -> UserState | None:
        raise NotImplementedError

    def put(self, state: UserState) -> None:
        raise NotImplementedError

    def delete(self, user_id: str) -> bool:
        raise NotImplementedError

    def user_ids(self) -> list[str]:
        raise NotImplementedError

    def update(self, user_id: str, *, profile: str | None = None, prefix=None, adapter: str | None = None,
               history: list[str] | None = None, meta: dict | None = None) -> UserState:
        """Changes the given fields of a user's state (creating it), keeps the others."""
        state = self.get(check_user_id(user_id)) or UserState(user_id)
        if profile is not None:
            state.profile = profile
        if prefix is not None:
            state.prefix = _check_prefix(prefix)
        if adapter is not None:
            state.adapter = adapter or None
        if history is not None:
            state.history = [str(h) for h in history]
        if meta:
            state.meta = {**state.meta, **meta}
        self.put(state)
        return state

    def __len__(self) -> int:
        return len(self.user_ids())


class DirectoryUserStore(UserStore):
    """``DIR/users/<quoted id>.json`` and ``DIR/prefixes/<quoted id>.npy``; writes are atomic renames."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise LlmrecError(f"user-state store {self.path} is a file; use a directory or a {SQLITE_SUFFIXES} file")
        if not self.path.exists() and not create:
            raise LlmrecError(f"user-state store {self.path} does not exist")
        (self.path / "users").mkdir(parents=True, exist_ok=True)
        (self.path / "prefixes").mkdir(exist_ok=True)

    @staticmethod
    def _key(user_id: str) -> str:
        # Percent-encoding keeps ids readable and reversible and makes '/', '..' and NUL harmless in a file
        # name. Ids whose encoding would pass file-name limits (255 bytes) are hashed instead: "%h" never
        # occurs in an encoded id ('%' is always followed by two hex digits there).
        key = quote(check_user_id(user_id), safe="")
        if len(key) > 150:
            return "%h" + hashlib.sha256(user_id.encode()).hexdigest()
        return key if key not in (".", "..") else key.replace(".", "%2E")

    def _write(self, dest: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)

    def get(self, user_id: str) -> UserState | None:
        key = self._key(user_id)
        try:
            doc = json.loads((self.path / "users" / f"{key}.json").read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise LlmrecError(f"user-state store {self.path}: user {user_id!r} is unreadable: {e}") from None
        prefix = None
        if doc.get("prefix"):
            try:
                prefix = np.load(self.path / "prefixes" / doc["prefix"], allow_pickle=False)
            except (OSError, ValueError) as e:
                raise LlmrecError(f"user-state store {self.path}: prefix of {user_id!r} is unreadable: {e}") from None
        return UserState(user_id, doc.get("profile"), prefix, doc.get("adapter"), doc.get("history") or [],
                         doc.get("meta") or {})

    def put(self, state: UserState) -> None:
        key = self._key(state.user_id)
        prefix_name = None
        if state.prefix is not None:
            prefix_name = f"{key}.npy"
            self._write(self.path / "prefixes" / prefix_name, _npy_bytes(_check_prefix(state.prefix)))
        else:
            (self.path / "prefixes" / f"{key}.npy").unlink(missing_ok=True)
        doc = {"user_id": state.user_id, "profile": state.profile, "adapter": state.adapter,
               "history": state.history, "prefix": prefix_name, "meta": state.meta, "updated": time.time()}
        self._write(self.path / "users" / f"{key}.json", json.dumps(doc, ensure_ascii=False).encode())

    def delete(self, user_id: str) -> bool:
        key = self._key(user_id)
        (self.path / "prefixes" / f"{key}.npy").unlink(missing_ok=True)
        try:
            (self.path / "users" / f"{key}.json").unlink()
            return True
        except FileNotFoundError:
            return False

    def user_ids(self) -> list[str]:
        from urllib.parse import unquote

        ids = []
        for p in (self.path / "users").glob("*.json"):
            if p.name.startswith("%h"):
                ids.append(json.loads(p.read_text())["user_id"])
            else:
                ids.append(unquote(p.name[:-5]))
        return sorted(ids)


class SqliteUserStore(UserStore):
    """One table; a connection per thread (sqlite3 connections must not cross threads)."""

    def __init__(self, path: str | Path, create: bool = True):
        self.path = Path(path)
        if not self.path.exists() and not create:
            raise LlmrecError(f"user-state store {self.path} does not exist")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as c:
            c.execute("CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, profile TEXT, adapter TEXT, "
                      "history TEXT, prefix BLOB, meta TEXT, updated REAL)")

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, timeout=30)
            except sqlite3.Error as e:
                raise LlmrecError(f"user-state store {self.path}: {e}") from None
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def get(self, user_id: str) -> UserState | None:
        row = self._conn().execute("SELECT profile, adapter, history, prefix, meta FROM users WHERE user_id = ?",
                                   (check_user_id(user_id),)).fetchone()
        if row is None:
            return None
        profile, adapter, history, prefix, meta = row
        return UserState(user_id, profile, _npy_load(prefix) if prefix is not None else None, adapter,
                         json.loads(history or "[]"), json.loads(meta or "{}"))

    def put(self, state: UserState) -> None:
        prefix = _npy_bytes(_check_prefix(state.prefix)) if state.prefix is not None else None
        with self._conn() as c:
            c.execute("INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (check_user_id(state.user_id), state.profile, state.adapter, json.dumps(state.history),
                       prefix, json.dumps(state.meta), time.time()))

    def delete(self, user_id: str) -> bool:
        with self._conn() as c:
            return c.execute("DELETE FROM users WHERE user_id = ?", (user_id,)).rowcount > 0

    def user_ids(self) -> list[str]:
        return [r[0] for r in self._conn().execute("SELECT user_id FROM users ORDER BY user_id")]


def open_user_store(path: str | Path, create: bool = True) -> UserStore:
    """A directory store, or a SQLite store when ``path`` ends in .sqlite/.sqlite3/.db."""
    path = Path(path)
    if path.suffix.lower() in SQLITE_SUFFIXES:
        return SqliteUserStore(path, create=create)
    return DirectoryUserStore(path, create=create)
