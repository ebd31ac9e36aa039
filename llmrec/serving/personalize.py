"""What the gateway does to a request for a known user: pure functions, no I/O.

Order: route to the user's adapter (when the request asks for the base model), inject the text
profile (system message / prompt prefix), then put the soft prefix in front of the whole prompt's
embeddings. Every applied mechanism is reported in the ``X-Llmrec-Personalization`` header; an unknown
user is served the plain model and marked ``X-Llmrec-User: unknown``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llmrec.paths import load_prompt_template
from llmrec.serving.api_errors import bad_field

USER_HEADER = "X-Llmrec-User"
PERSONALIZATION_HEADER = "X-Llmrec-Personalization"
MODEL_HEADER = "X-Llmrec-Model"


@dataclass
class ProfileTemplate:
    system: str
    system_suffix: str
    completion_prefix: str

    @classmethod
    def load(cls, path: str | Path | None = None) -> ProfileTemplate:
        return load_prompt_template(cls, path, "serve/profile.yaml")


@dataclass
class Plan:
    """The personalization decided for one request, reported back in response headers."""

    user: str  # "known" | "unknown" | "anonymous" (no user field) | "opted-out" (personalize: false)
    model: str
    applied: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "adapter-unavailable"

    def headers(self) -> dict[str, str]:
        value = ",".join(self.applied) or "none"
        if self.notes:
            value += "; " + ",".join(self.notes)
        return {USER_HEADER: self.user, PERSONALIZATION_HEADER: value, MODEL_HEADER: self.model}


def with_profile_messages(messages: list[dict], profile: str, template: ProfileTemplate) -> list[dict]:
    """The conversation with the profile in its system message (a new one first if it has none)."""
    first = messages[0] if messages else None
    if first and first.get("role") in ("system", "developer"):
        content = first.get("content")
        suffix = template.system_suffix.format(profile=profile)
        if isinstance(content, list):
            content = [*content, {"type": "text", "text": suffix}]
        else:
            content = (content or "") + suffix
        return [{**first, "content": content}, *messages[1:]]
    return [{"role": "system", "content": template.system.format(profile=profile)}, *messages]


def prompt_kind(prompt: object) -> str:
    """'text' | 'texts' | 'ids' | 'ids_batch' for the shapes OpenAI's completions ``prompt`` may take."""
    if isinstance(prompt, str):
        return "text"
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return "texts"
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            return "ids"
        if all(isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p)
               for p in prompt):
            return "ids_batch"
    raise bad_field("prompt", "must be a string, a list of strings, a list of token ids or a list of token-id "
                    "lists, and not empty")


def validate_generation(body: dict, chat: bool) -> None:
    """Type checks for the fields the gateway reads; vLLM validates the rest and names them itself."""
    from llmrec.serving.api_errors import expect

    expect(body, "model", (str,), "a string")
    user = expect(body, "user", (str,), "a string")
    if user is not None and not (0 < len(user) <= 256):
        raise bad_field("user", "must be 1 to 256 characters")
    expect(body, "stream", (bool,), "a boolean")
    expect(body, "personalize", (bool,), "a boolean")
    for key in ("max_tokens", "max_completion_tokens", "n"):
        value = expect(body, key, (int,), "an integer")
        if value is not None and value < 1:
            raise bad_field(key, f"must be at least 1, got {value}")
    if chat:
        messages = expect(body, "messages", (list,), "a list of messages", required=True)
        if not messages:
            raise bad_field("messages", "must not be empty")
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                raise bad_field(f"messages[{i}]", "must be an object with 'role' and 'content'")
            if not isinstance(m.get("role"), str):
                raise bad_field(f"messages[{i}].role", "is required and must be a string")
            if m.get("content") is not None and not isinstance(m["content"], (str, list)):
                raise bad_field(f"messages[{i}].content", "must be a string or a list of content parts")
        return
    if body.get("prompt") is None and body.get("prompt_embeds") is None:
        raise bad_field("prompt", "is required (or 'prompt_embeds')")
    if body.get("prompt") is not None:
        prompt_kind(body["prompt"])
    embeds = body.get("prompt_embeds")
    if embeds is not None and not (isinstance(embeds, str) or
                                   (isinstance(embeds, list) and embeds and all(isinstance(e, str) for e in embeds))):
        raise bad_field("prompt_embeds", "must be a base64 string (or a list of them) of torch.save(tensor[seq, "
                        "hidden])")
