"""Parsing shared by the native and OpenAI inference routes, and driving one generation: the first
piece is awaited before any byte is sent (Ollama sends no headers until the model is loaded and the
first token exists), the rest is streamed, and a client that leaves cancels the work."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hopscommon.ollama_json import go_kind
from hopscommon.runner_options import BOOL_OPTIONS, INT_DEFAULTS, RunnerOptions, runner_options
from hopscommon.units import parse_go_duration
from ollamasim.catalogue import THINKING, VISION, ModelSpec
from ollamasim.errors import BadRequest, RunnerError, ServerBusy, SimError
from ollamasim.faults import FaultSpec
from ollamasim.host import GenRequest, Host, Metrics, Piece
from ollamasim.wire import DropConnection, hang_until_disconnect, until_disconnect

THINK_LEVELS = ("low", "medium", "high", "max")
# What a vision runner says of an image it cannot decode (runner NewSequence: Go's image package
# knows the format by its first bytes): the request's fault, though a 500 after the load.
UNREADABLE_IMAGE = "failed to process inputs: image: unknown format"
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive: seconds as a number, or a Go duration string; negative = forever."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise BadRequest(
            "json: cannot unmarshal bool into Go struct field .keep_alive of type string"
        )
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return parse_go_duration(value)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
    raise BadRequest("json: cannot unmarshal object into Go value of type api.Duration")


def think(value: Any, spec: ModelSpec, model_as_sent: str) -> bool:
    """Whether to think: absent means yes for a thinking model; a level counts as yes."""
    if value is None:
        return THINKING in spec.capabilities
    if isinstance(value, bool):
        wanted = value
    elif isinstance(value, str) and value in THINK_LEVELS:
        wanted = True
    else:
        raise BadRequest(
            f'invalid think value: "{value}" (must be "high", "medium", "low", true, or false)'
        )
    if wanted and THINKING not in spec.capabilities:
        raise BadRequest(f'"{model_as_sent}" does not support thinking')
    return wanted


def option_int(options: dict[str, Any], key: str) -> int | None:
    value = options.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RunnerError(f'option "{key}" must be of type integer')
    return int(value)


# Ollama's other typed options (api/types.go Options): a value of another type is the server's
# 500 `option "x" must be of type ...` (Options.FromMap) before any load; unknown names pass.
INT_OPTIONS = ("num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx")
FLOAT_OPTIONS = (
    "temperature",
    "top_p",
    "min_p",
    "typical_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
)


def decode_images(values: list[Any], go_field: str) -> tuple[bytes, ...]:
    """Images as Go's JSON decoder reads a []byte field: standard base64 strings; anything else
    is the request's 400, in the decoder's words."""
    images = []
    for value in values:
        if not isinstance(value, str):
            raise BadRequest(
                f"json: cannot unmarshal {go_kind(value)} into Go struct field {go_field} "
                "of type []uint8"
            )
        try:
            images.append(base64.b64decode(value, validate=True))
        except binascii.Error:
            bad = _BASE64.match(value)
            at = bad.end() if bad is not None and bad.end() < len(value) else len(value) // 4 * 4
            raise BadRequest(f"illegal base64 data at input byte {at}") from None
    return tuple(images)


def image_error(spec: ModelSpec, images: tuple[bytes, ...]) -> str:
    """The runner's error, once loaded, for images it cannot read: a vision model reads PNG,
    JPEG and WebP; "" when all are readable (a model without vision ignores images)."""
    if VISION not in spec.capabilities:
        return ""
    for image in images:
        webp = image[:4] == b"RIFF" and image[8:12] == b"WEBP"
        if not (image.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")) or webp):
            return UNREADABLE_IMAGE
    return ""


def check_options(options: dict[str, Any]) -> None:
    """Raises RunnerError, in Ollama's words, for an option of the wrong type (the runner
    options are checked as runner_options_of reads them)."""
    for name in INT_OPTIONS:
        option_int(options, name)
    for name in FLOAT_OPTIONS:
        value = options.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise RunnerError(f'option "{name}" must be of type float32')
    stop = options.get("stop")
    if stop is not None and not isinstance(stop, list):
        raise RunnerError('option "stop" must be of type array')
    if stop is not None and not all(isinstance(word, str) for word in stop):
        raise RunnerError('option "stop" must be of an array of strings')


def runner_options_of(options: dict[str, Any]) -> RunnerOptions:
    """The runner options a request names (hopscommon.runner_options), checked as Ollama checks
    them: a wrong type is the runner's error."""
    for name in INT_DEFAULTS:
        option_int(options, name)
    for name in BOOL_OPTIONS:
        if options.get(name) is not None and not isinstance(options[name], bool):
            raise RunnerError(f'option "{name}" must be of type boolean')
    return runner_options(options)


def options_of(data: dict[str, Any]) -> dict[str, Any]:
    options = data.get("options")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise BadRequest("json: cannot unmarshal into Go struct field .options of type map")
    return options


def format_of(value: Any) -> tuple[bool, Any]:
    """(json_mode, schema) from Ollama's ``format``; neither for one format_error refuses."""
    if value == "json":
        return True, None
    if isinstance(value, dict):
        return False, value
    return False, None


def format_error(value: Any) -> str:
    """The runner's error for a ``format`` neither "json" nor a schema (llm/server.go
    Completion, once the model is loaded): Go's %q of the value's JSON; "" for a valid one."""
    if value is None or value == "" or value == "json" or isinstance(value, dict):
        return ""
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    quoted = json.dumps(raw, ensure_ascii=False)
    return f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'


def gen_request(
    spec: ModelSpec, prompt: str, data: dict[str, Any], options: dict[str, Any], **extra: Any
) -> GenRequest:
    check_options(options)
    return GenRequest(
        spec=spec,
        prompt=prompt,
        num_predict=option_int(options, "num_predict"),
        num_ctx=option_int(options, "num_ctx"),
        options=runner_options_of(options),
        seed=option_int(options, "seed"),
        keep_alive=keep_alive(data.get("keep_alive")),
        **extra,
    )


RUNNER_DIED = "llama runner process has terminated: exit status 2 (fault injected)"


async def request_faults(
    request: Request, host: Host, *, streaming: bool = False
) -> FaultSpec | None:
    """Apply busy/error/hang faults to an inference request; returns a ``drop`` or
    ``stream_error`` fault to apply while responding, if one hits (a reply not streamed fails
    at once with ``stream_error``, as a runner dying mid-reply shows there)."""
    spec = host.faults.draw("busy", "error", "hang", "drop", "stream_error")
    if spec is None:
        return None
    if spec.mode == "busy":
        host.stats.busy_rejections += 1
        raise ServerBusy()
    if spec.mode == "error" or (spec.mode == "stream_error" and not streaming):
        raise RunnerError(RUNNER_DIED)
    if spec.mode == "hang":
        await hang_until_disconnect(request)
        raise SimError("client went away during an injected hang")
    return spec


async def first_piece(
    request: Request, host: Host, req: GenRequest, metrics: Metrics
) -> tuple[Piece | None, AsyncGenerator[Piece, None]]:
    """Start generating and wait for the first piece, cancelling if the client leaves."""
    pieces = host.generate(req, metrics)

    async def first() -> Piece | None:
        try:
            return await anext(pieces)
        except StopAsyncIteration:
            return None

    return await until_disconnect(request, first()), pieces


async def collect(request: Request, host: Host, req: GenRequest, metrics: Metrics) -> list[Piece]:
    """Every piece of a non-streamed reply; the client leaving cancels the generation."""

    async def run() -> list[Piece]:
        return [piece async for piece in host.generate(req, metrics)]

    return await until_disconnect(request, run())


def stream(
    first: Piece | None,
    rest: AsyncGenerator[Piece, None],
    *,
    encode: Callable[[Piece], bytes | None],
    final: Callable[[], bytes],
    media_type: str,
    drop: FaultSpec | None,
    failed: Callable[[str], bytes] | None = None,
) -> Response:
    """A streamed reply; ``encode`` turns a piece into one framed chunk (None to skip it).
    ``drop`` is a fault to show mid-stream: ``drop`` cuts the connection; ``stream_error`` ends
    the stream with ``failed(message)`` (nothing when None) in place of the final chunk."""

    async def body() -> AsyncIterator[bytes]:
        sent, cut = 0, False
        async with contextlib.aclosing(rest):
            pieces: list[Piece] = [first] if first is not None else []
            while not cut:
                for piece in pieces:
                    if drop is not None and sent >= drop.after_chunks:
                        cut = True
                        break
                    chunk = encode(piece)
                    if chunk is not None:
                        sent += 1
                        yield chunk
                else:
                    try:
                        pieces = [await anext(rest)]
                    except StopAsyncIteration:
                        break
        if drop is None:
            yield final()
        elif drop.mode == "stream_error":
            if failed is not None:
                yield failed(RUNNER_DIED)
        else:
            where = "mid-stream" if cut else "before the final chunk"
            raise DropConnection(f"fault: connection dropped {where}")

    return StreamingResponse(body(), media_type=media_type)
