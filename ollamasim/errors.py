"""Errors the simulated Ollama answers with, each carrying its HTTP status.

    SimError
    ├── BadRequest      400
    ├── NotFound        404
    ├── Unsupported     501
    ├── ServerBusy      503  (Ollama's ErrMaxQueue text)
    └── RunnerError     500

The HTTP layer maps them in one place: ``{"error": message}`` on /api routes, OpenAI's
``{"error": {"message", "type", ...}}`` on /v1 routes.
"""

from __future__ import annotations

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class SimError(Exception):
    """An error answered to the client with ``status`` and ``message``."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(SimError):
    status = 400


class NotFound(SimError):
    status = 404


class Unsupported(SimError):
    status = 501


class ServerBusy(SimError):
    status = 503

    def __init__(self, message: str = BUSY_MESSAGE) -> None:
        super().__init__(message)


class RunnerError(SimError):
    status = 500
