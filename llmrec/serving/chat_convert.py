"""Chat requests served through /v1/completions, for the one case that needs it: a soft prefix.

vLLM takes ``prompt_embeds`` on /v1/completions only, so a chat request for a user with a stored
prefix is rendered with the model's chat template (the same template vLLM's chat endpoint applies),
embedded, prefixed, sent as a completion, and the answer is turned back into a chat completion
(streamed chunks included). Chat-only features that have no completion equivalent are refused with a
400 naming the field rather than silently dropped.
"""

from __future__ import annotations

import json

from llmrec.serving.api_errors import bad_field

# Consumed while rendering the prompt.
_TEMPLATE = {"messages", "chat_template_kwargs", "add_generation_prompt", "max_tokens", "max_completion_tokens"}
# No completion equivalent: refused with the prefix path.
_CHAT_ONLY = {"tools", "tool_choice", "functions", "function_call", "parallel_tool_calls", "logprobs",
              "top_logprobs", "continue_final_message", "echo", "documents", "chat_template", "audio", "modalities",
              "prediction", "reasoning_effort", "return_tokens_as_token_ids"}


def message_text(content, param: str) -> str:
    """A message's content as text (OpenAI content-part lists of text parts are joined)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_field(f"{param}[{j}]", "only text content parts can be used with a personalization "
                                "prefix")
            parts.append(part["text"])
        return "".join(parts)
    if content is None:
        return ""
    raise bad_field(param, "must be a string or a list of content parts")


def completion_body(chat: dict) -> dict:
    """The completion request equivalent to a chat request, minus the prompt (set by the caller)."""
    for key, value in chat.items():
        if key in _CHAT_ONLY and value not in (None, False):
            raise bad_field(key, "is not supported for users personalized with a prefix (prompt_embeds go "
                            "through the completions endpoint)")
    body = {k: v for k, v in chat.items() if k not in _TEMPLATE and k not in _CHAT_ONLY}
    max_tokens = chat.get("max_completion_tokens", chat.get("max_tokens"))
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    return body  # fields outside _SHARED are vLLM sampling extras: they pass on unchanged


def chat_response(completion: dict) -> dict:
    """A /v1/completions response as a /v1/chat/completions response."""
    choices = [{"index": c.get("index", i), "message": {"role": "assistant", "content": c.get("text", "")},
                "logprobs": None, "finish_reason": c.get("finish_reason"), "stop_reason": c.get("stop_reason")}
               for i, c in enumerate(completion.get("choices", []))]
    return {"id": "chat" + str(completion.get("id", "cmpl")), "object": "chat.completion",
            "created": completion.get("created"), "model": completion.get("model"), "choices": choices,
            "usage": completion.get("usage")}


class ChatStreamConverter:
    """Server-sent events of a streamed completion -> chat.completion.chunk events."""

    def __init__(self):
        self._started: set[int] = set()
        self._buffer = b""

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        out = []
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            out.append(self._event(event))
        return b"".join(out)

    def _event(self, event: bytes) -> bytes:
        line = event.strip()
        if not line.startswith(b"data:"):
            return event + b"\n\n"
        payload = line[5:].strip()
        if payload == b"[DONE]":
            return b"data: [DONE]\n\n"
        chunk = json.loads(payload)
        if "error" in chunk:
            return event + b"\n\n"
        choices = []
        for c in chunk.get("choices", []):
            idx = c.get("index", 0)
            delta = {"content": c.get("text", "")}
            if idx not in self._started:
                self._started.add(idx)
                delta = {"role": "assistant", **delta}
            choices.append({"index": idx, "delta": delta, "logprobs": None, "finish_reason": c.get("finish_reason"),
                            "stop_reason": c.get("stop_reason")})
        out = {"id": "chat" + str(chunk.get("id", "cmpl")), "object": "chat.completion.chunk",
               "created": chunk.get("created"), "model": chunk.get("model"), "choices": choices}
        if chunk.get("usage") is not None:
            out["usage"] = chunk["usage"]
        return b"data: " + json.dumps(out).encode() + b"\n\n"
