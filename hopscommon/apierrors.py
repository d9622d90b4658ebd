"""Error bodies in the shapes of the APIs Ollama speaks, shared by the edge and the simulator:
OpenAI's ``{"error": {"message", "type", "param", "code"}}`` (Ollama's middleware names the type
by status) and Anthropic's ``{"type": "error", "error": {"type", "message"}, "request_id"}``."""

from __future__ import annotations

import secrets
from typing import Any

OPENAI_TYPES = {400: "invalid_request_error", 404: "not_found_error", 413: "invalid_request_error"}
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def openai_error(status: int, message: str) -> dict[str, Any]:
    kind = OPENAI_TYPES.get(status, "api_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def anthropic_error(status: int, message: str) -> dict[str, Any]:
    return {
        "type": "error",
        "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message},
        "request_id": "req_" + secrets.token_hex(12),
    }
