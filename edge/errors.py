"""Edge errors and the one table that turns them into responses.

    EdgeError
    ├── BadRequest             400  (bad JSON, missing model, missing X-Hops-Node)
    ├── ModelNotFound          404  (no host has the model; Ollama's per-route wording)
    ├── BodyTooLarge           413
    ├── NoHealthyHost          503  + Retry-After
    ├── ControlPlaneDown       503  (no control plane answers and no usable inventory)
    └── UpstreamFailed         502/504  (every host tried failed before the first byte)

Each route answers in its own API's shape (its dialect): /api routes Ollama's
``{"error": message}``; /v1 routes OpenAI's ``{"error": {"message", "type", "param", "code"}}``;
/v1/messages Anthropic's ``{"type": "error", "error": {"type", "message"}, "request_id"}``.
"""

from __future__ import annotations

import json

from starlette.responses import Response

from hopscommon import apierrors

JSON_TYPE = "application/json; charset=utf-8"


class EdgeError(Exception):
    status = 500

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after


class BadRequest(EdgeError):
    status = 400


class ModelNotFound(EdgeError):
    status = 404


class BodyTooLarge(EdgeError):
    status = 413


class BodyTimeout(EdgeError):
    status = 408


class NoHealthyHost(EdgeError):
    status = 503


class ControlPlaneDown(EdgeError):
    status = 503


class UpstreamFailed(EdgeError):
    status = 502


class UpstreamTimeout(UpstreamFailed):
    status = 504


OLLAMA, OPENAI, ANTHROPIC = "ollama", "openai", "anthropic"


def dialect_of(path: str) -> str:
    """Which API's error shape a route answers in."""
    if path == "/v1/messages":
        return ANTHROPIC
    return OPENAI if path.startswith("/v1/") else OLLAMA


def error_body(status: int, message: str, *, dialect: str) -> bytes:
    obj: object
    if dialect == OPENAI:
        obj = apierrors.openai_error(status, message)
    elif dialect == ANTHROPIC:
        obj = apierrors.anthropic_error(status, message)
    else:
        obj = {"error": message}
    return json.dumps(obj, separators=(",", ":")).encode()


def error_response(error: EdgeError, *, dialect: str) -> Response:
    headers = {}
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    return Response(
        error_body(error.status, error.message, dialect=dialect),
        status_code=error.status,
        media_type=JSON_TYPE,
        headers=headers,
    )
