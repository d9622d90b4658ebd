"""HTTP plumbing shared by the simulator's routes: Go-like JSON bodies and errors, timestamps,
disconnect-aware waiting, and the responses that end a connection on purpose (fault ``drop``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from hopscommon.ollama_json import BodyError, decode_object, go_kind
from ollamasim.errors import BadRequest

T = TypeVar("T")

JSON_TYPE = "application/json; charset=utf-8"
NDJSON_TYPE = "application/x-ndjson"
SSE_TYPE = "text/event-stream"


def dumps(obj: Any) -> str:
    """Compact JSON, as Go's encoder writes it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(dumps(obj).encode(), status_code=status, media_type=JSON_TYPE)


def error_response(status: int, message: str) -> Response:
    return json_response({"error": message}, status)


def rfc3339(epoch: float, *, utc: bool) -> str:
    """Go's RFC3339Nano: fraction with trailing zeros trimmed; ``Z`` for UTC, else an offset."""
    moment = (
        datetime.fromtimestamp(epoch, UTC) if utc else datetime.fromtimestamp(epoch).astimezone()
    )
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    fraction = f"{moment.microsecond:06d}".rstrip("0")
    if fraction:
        text += "." + fraction
    offset = moment.utcoffset()
    if offset is None or offset.total_seconds() == 0:
        return text + "Z"
    minutes = int(offset.total_seconds() // 60)
    sign = "+" if minutes >= 0 else "-"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


def now_utc() -> str:
    return rfc3339(time.time(), utc=True)


async def read_json(request: Request, go_type: str) -> dict[str, Any]:
    """The request body as a JSON object, or BadRequest with the text Ollama's Go decoder gives."""
    try:
        return decode_object(await request.body(), go_type)
    except BodyError as exc:
        raise BadRequest(str(exc)) from None


_GO_TYPES: dict[type, str] = {str: "string", bool: "bool", list: "[]", dict: "map", int: "int"}


def typed(data: Mapping[str, Any], key: str, kind: type[T], go_struct: str) -> T | None:
    """``data[key]`` if absent/null or of ``kind``; else BadRequest with Go's unmarshal text."""
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise BadRequest(
        f"json: cannot unmarshal {go_kind(value)} into Go struct field "
        f"{go_struct}.{key} of type {_GO_TYPES.get(kind, kind.__name__)}"
    )


class ClientGone(Exception):
    """The client closed the connection while we were still working on its request."""


async def _wait_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first, in which case ``work`` is cancelled
    (so the simulated GPU stops, as Ollama's does) and ClientGone is raised.

    The request body must already have been read.
    """
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone()


async def hang_until_disconnect(request: Request) -> None:
    await _wait_disconnect(request.receive)


class DropConnection(Exception):
    """Raised inside a response that has started, so the server cuts the connection."""


class TruncatedResponse(Response):
    """Announces the whole body, sends part of it, then drops the connection."""

    def __init__(self, body: bytes, cut: int, media_type: str) -> None:
        super().__init__(body, media_type=media_type)
        self.cut = cut

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        await send({"type": "http.response.body", "body": self.body[: self.cut], "more_body": True})
        raise DropConnection("fault: connection dropped mid-body")


def json_or_cut(body: Any, drop: object | None) -> Response:
    """A reply not streamed; with a ``drop`` fault in force, cut halfway through its body."""
    if drop is None:
        return json_response(body)
    payload = dumps(body).encode()
    return TruncatedResponse(payload, len(payload) // 2, JSON_TYPE)
