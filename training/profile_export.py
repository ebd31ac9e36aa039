"""Writes BUMP profiles into the user-state store that the serving gateway reads (``prompts/serve/profile.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def export_profiles(profiles: Mapping[str, str | None], store: str | Path, meta: dict | None = None) -> int:
    """Stores each user's profile text (other state fields are kept); returns how many were written.

    Users whose profile is None or blank are skipped (the store would otherwise keep a stale profile
    under a new timestamp, or hold an empty one the gateway would inject). ``meta`` (e.g. the run and
    adapter that wrote the profiles) is merged into each user's ``meta``.
    """
    from llmrec.serving.user_state import open_user_store

    st = open_user_store(store)
    n = 0
    for user, text in profiles.items():
        if text is None or not str(text).strip():
            continue
        st.update(str(user), profile=str(text).strip(), meta=meta)
        n += 1
    return n
