"""The user-state store (directory and SQLite back ends), the `llmrec users` command, and the gateway's
pure helpers (profile injection, chat <-> completion conversion, upstream error renaming)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmrec.errors import LlmrecError
from llmrec.serving.user_state import DirectoryUserStore, SqliteUserStore, UserState, open_user_store

ODD_IDS = ["plain", "../../etc/passwd", "a/b\\c", ".", "..", "ünïcödé 用户", "x" * 256, "%2F", "with space"]


@pytest.mark.parametrize("name", ["store", "store.sqlite"])
def test_round_trip_and_odd_ids(tmp_path, name):
    store = open_user_store(tmp_path / name)
    assert isinstance(store, SqliteUserStore if name.endswith(".sqlite") else DirectoryUserStore)
    prefix = np.arange(12, dtype=np.float32).reshape(3, 4)
    for uid in ODD_IDS:
        store.update(uid, profile=f"profile of {uid}", prefix=prefix, adapter="a1", history=["i1", "i2"])
    assert store.user_ids() == sorted(ODD_IDS)
    for uid in ODD_IDS:
        s = store.get(uid)
        assert s.profile == f"profile of {uid}" and s.adapter == "a1" and s.history == ["i1", "i2"]
        np.testing.assert_array_equal(s.prefix, prefix)
        assert s.mechanisms() == ["adapter", "profile", "prefix"]
    # Nothing escaped the store's folder
    if name == "store":
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    # update keeps the fields it is not given; reopening sees the same data
    store.update("plain", adapter="")
    again = open_user_store(tmp_path / name, create=False).get("plain")
    assert again.adapter is None and again.profile == "profile of plain" and again.prefix.shape == (3, 4)
    assert store.get("nobody") is None
    assert store.delete("plain") and not store.delete("plain") and store.get("plain") is None


def test_bad_ids_and_prefixes_are_refused(tmp_path):
    store = open_user_store(tmp_path / "s")
    for bad in ("", "x" * 257, None):
        with pytest.raises(LlmrecError, match="user id"):
            store.update(bad, profile="p")
    for prefix, msg in [(np.zeros(4), r"\[K, hidden\]"), (np.zeros((2, 3), dtype=np.int64), "floating"),
                        (np.full((2, 3), np.nan), "NaN")]:
        with pytest.raises(LlmrecError, match=msg):
            store.update("u", prefix=prefix)
    with pytest.raises(LlmrecError, match="does not exist"):
        open_user_store(tmp_path / "missing", create=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(LlmrecError, match="is a file"):
        open_user_store(tmp_path / "afile")


def test_prefix_files_are_never_unpickled(tmp_path):
    store = open_user_store(tmp_path / "s")
    store.put(UserState("u", prefix=np.ones((2, 2), dtype=np.float32)))
    # Replace the prefix with a pickled object array: loading must refuse, not execute.
    np.save(tmp_path / "s" / "prefixes" / "u.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(LlmrecError, match="unreadable"):
        store.get("u")


def test_users_cli(tmp_path, capsys):
    from llmrec.cli.main import main

    np.save(tmp_path / "p.npy", np.ones((2, 8), dtype=np.float32))
    store = str(tmp_path / "users.db")
    assert main(["users", "set", "--store", store, "--user", "u1", "--profile", "jazz bassist",
                 "--prefix", str(tmp_path / "p.npy"), "--history", "i1, i2"]) == 0
    assert capsys.readouterr().out.strip() == "u1: profile, prefix"
    assert main(["users", "show", "--store", store, "--user", "u1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["prefix_shape"] == [2, 8] and shown["history"] == ["i1", "i2"] and shown["profile"] == "jazz bassist"
    assert main(["users", "list", "--store", store]) == 0
    assert capsys.readouterr().out.splitlines() == ["u1\tprofile,prefix", "1 users"]
    assert main(["users", "show", "--store", store, "--user", "u2"]) == 2
    assert "no user 'u2'" in capsys.readouterr().err
    assert main(["users", "delete", "--store", store, "--user", "u1"]) == 0


def test_profile_injection_into_messages():
    from llmrec.serving.personalize import ProfileTemplate, with_profile_messages

    t = ProfileTemplate(system="S:{profile}", system_suffix="|{profile}", completion_prefix="P:{profile} ")
    user = [{"role": "user", "content": "hi"}]
    assert with_profile_messages(user, "x", t) == [{"role": "system", "content": "S:x"}, *user]
    sys_msg = [{"role": "system", "content": "be brief"}, *user]
    assert with_profile_messages(sys_msg, "x", t)[0] == {"role": "system", "content": "be brief|x"}
    parts = [{"role": "system", "content": [{"type": "text", "text": "a"}]}]
    assert with_profile_messages(parts, "x", t)[0]["content"][-1] == {"type": "text", "text": "|x"}
    assert sys_msg[0]["content"] == "be brief"  # the request's own list is not mutated


def test_chat_completion_conversion():
    from llmrec.serving.api_errors import ApiError
    from llmrec.serving.chat_convert import ChatStreamConverter, chat_response, completion_body

    body = completion_body({"model": "m", "messages": [], "max_completion_tokens": 5, "temperature": 0,
                            "top_k": 3, "user": "u", "logprobs": False})
    assert body == {"model": "m", "max_tokens": 5, "temperature": 0, "top_k": 3, "user": "u"}
    with pytest.raises(ApiError) as e:
        completion_body({"model": "m", "messages": [], "tools": [{"type": "function"}]})
    assert e.value.param == "tools" and e.value.status == 400
    out = chat_response({"id": "cmpl-1", "created": 5, "model": "m", "usage": {"total_tokens": 3},
                         "choices": [{"index": 0, "text": "hey", "finish_reason": "length"}]})
    assert out["object"] == "chat.completion" and out["choices"][0]["message"] == {"role": "assistant",
                                                                                   "content": "hey"}
    conv = ChatStreamConverter()
    chunk = json.dumps({"id": "cmpl-1", "model": "m", "choices": [{"index": 0, "text": "he"}]}).encode()
    # An event split across two network reads is converted once it is complete.
    first = conv.feed(b"data: " + chunk[:10])
    assert first == b""
    events = conv.feed(chunk[10:] + b"\n\ndata: " + chunk.replace(b'"he"', b'"y"') + b"\n\ndata: [DONE]\n\n")
    parsed = [e for e in events.decode().split("\n\n") if e]
    one, two = (json.loads(p[6:]) for p in parsed[:2])
    assert one["object"] == "chat.completion.chunk" and one["choices"][0]["delta"] == {"role": "assistant",
                                                                                     "content": "he"}
    assert two["choices"][0]["delta"] == {"content": "y"} and parsed[2] == "data: [DONE]"


def test_upstream_error_names_the_request_field():
    from llmrec.serving.gateway import upstream_error

    vllm = json.dumps({"error": {"message": "This model's maximum context length is 512 tokens. However, your "
                                 "prompt contains at least 513 input tokens", "param": "input_tokens", "code": 400}})
    r = upstream_error(400, vllm.encode(), "messages", {"X": "1"})
    err = json.loads(r.body)["error"]
    assert r.status_code == 400 and err["param"] == "messages" and err["message"].startswith("'messages':")
    other = json.dumps({"error": {"message": "bad top_p", "param": "top_p"}})
    assert json.loads(upstream_error(400, other.encode(), "prompt", {}).body)["error"]["param"] == "top_p"
    assert upstream_error(500, b"not json", "prompt", {}).status_code == 500
