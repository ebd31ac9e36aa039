"""Errors in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``, so every client library
(openai, LangChain, curl users) shows the message and the offending field the same way it would for OpenAI."""

from __future__ import annotations

import json

from starlette.responses import Response

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error",
          499: "client_closed_request", 502: "upstream_error", 503: "service_unavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def response(self, headers: dict | None = None) -> Response:
        return error_response(self.status, self.message, self.param, headers)


def error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> Response:
    body = {"error": {"message": message, "type": _TYPES.get(status, "error"), "param": param, "code": status}}
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def bad_field(param: str, message: str, status: int = 400) -> ApiError:
    """A 4xx naming the field: the message always starts with the field's name."""
    return ApiError(status, f"'{param}': {message}", param)


def type_name(value: object) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def expect(body: dict, key: str, types: tuple, what: str, required: bool = False, prefix: str = ""):
    """``body[key]`` if it has one of ``types`` (bool is never accepted as a number), else a 400 naming it."""
    param = f"{prefix}{key}"
    if key not in body or body[key] is None:
        if required:
            raise bad_field(param, "is required")
        return None
    value = body[key]
    if isinstance(value, bool) and bool not in types:
        raise bad_field(param, f"must be {what}, got boolean")
    if not isinstance(value, types):
        raise bad_field(param, f"must be {what}, got {type_name(value)}")
    return value


def parse_json_object(raw: bytes) -> dict:
    if not raw:
        raise ApiError(400, "the request body is empty; send a JSON object", None)
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", None) from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type_name(body)}", None)
    return body
