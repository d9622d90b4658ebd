"""Ollama's newer compatibility routes: OpenAI's Responses API (``/v1/responses``, whose body may
be zstd-compressed, as Codex sends it), Anthropic's Messages API (``/v1/messages``) and OpenAI's
audio transcriptions (``/v1/audio/transcriptions``, a multipart form). Each is translated into a
native chat, as Ollama's middleware does, and answered in its API's shapes.

Simplifications: a transcription is generated text (no model here hears audio) and no audio
capability is asked of the model; a Responses or Messages request thinks only when asked to
(``reasoning`` / ``thinking``).
"""

from __future__ import annotations

import json
import random
import secrets
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response

from hopscommon import apierrors, bodies
from ollamasim.errors import BadRequest, SimError
from ollamasim.host import Host, Metrics, Piece
from ollamasim.inference import collect, first_piece, request_faults, stream
from ollamasim.native import chat_request
from ollamasim.openai_api import lookup
from ollamasim.wire import SSE_TYPE, dumps, json_or_cut, json_response


class TooLarge(SimError):
    status = 413


def anthropic_error(status: int, message: str) -> Response:
    return json_response(apierrors.anthropic_error(status, message), status)


def _sse(event: str, obj: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {dumps({'type': event, **obj})}\n\n".encode()


def _model(data: dict[str, Any]) -> str:
    model = data.get("model")
    return model if isinstance(model, str) else ""


def _text(content: Any, kinds: tuple[str, ...]) -> str:
    """A message's text: a string, or the text of its parts of the given types."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", ""))
            for p in content
            if isinstance(p, dict) and p.get("type") in kinds
        )
    return ""


def _native_tools(tools: Any, name_key: str, schema_key: str) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        return []
    return [
        {
            "type": "function",
            "function": {
                "name": t.get(name_key, ""),
                "description": t.get("description", ""),
                "parameters": t.get(schema_key) or {"type": "object", "properties": {}},
            },
        }
        for t in tools
        if isinstance(t, dict) and t.get(name_key)
    ]


def _native(options: dict[str, Any], think: bool, tools: list[dict[str, Any]]) -> dict[str, Any]:
    """A native chat body's settings: these routes think only when asked to."""
    native: dict[str, Any] = {"options": options, "think": think}
    if tools:
        native["tools"] = tools
    return native


def _arguments(call: dict[str, Any]) -> dict[str, Any]:
    args = call.get("function", {}).get("arguments", {})
    return args if isinstance(args, dict) else {}


# --- /v1/responses ---------------------------------------------------------------------------


async def _json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object (decompressed first when zstd, as Codex sends Responses)."""
    try:
        raw = bodies.decoded(await request.body(), request.headers.get("content-encoding", ""))
    except bodies.DecodedTooLarge as exc:
        raise TooLarge(str(exc)) from None
    except bodies.BodyDecodeError as exc:
        raise BadRequest(str(exc)) from None
    try:
        data = json.loads(raw) if raw.strip() else None
    except (ValueError, RecursionError):
        raise BadRequest("invalid JSON body") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


def _responses_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = data.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    value = data.get("input")
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
    elif isinstance(value, list):
        for item in value:
            if not isinstance(item, dict):
                raise BadRequest("invalid input item")
            if item.get("type") == "function_call_output":
                messages.append({"role": "tool", "content": str(item.get("output", ""))})
            elif "role" in item:
                kinds = ("input_text", "output_text", "text")
                messages.append(
                    {"role": str(item["role"]), "content": _text(item.get("content"), kinds)}
                )
    if not any(m["role"] != "system" for m in messages):
        raise BadRequest("input is required")
    return messages


def _responses_native(data: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    limit = data.get("max_output_tokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        options["num_predict"] = limit
    reasoning = data.get("reasoning")
    think = isinstance(reasoning, dict) and reasoning.get("effort") not in (None, "none")
    return _native(options, think, _native_tools(data.get("tools"), "name", "parameters"))


class _ResponseItems:
    """The output items of one Responses reply, built as pieces arrive, with the stream events
    that announce them: a reasoning item, a message item, a function_call item per tool call."""

    def __init__(self, base: dict[str, Any]) -> None:
        self.base = base
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being written, until the next kind

    def event(self, kind: str, **fields: Any) -> bytes:
        self.seq += 1
        return _sse(kind, {"sequence_number": self.seq, **fields})

    def response(self, status: str, metrics: Metrics | None) -> dict[str, Any]:
        out = {**self.base, "status": status, "output": self.output}
        if metrics is not None:
            out["usage"] = {
                "input_tokens": metrics.prompt_eval_count,
                "output_tokens": metrics.eval_count,
                "total_tokens": metrics.prompt_eval_count + metrics.eval_count,
            }
            if metrics.prompt_cached_count is not None:
                out["usage"]["input_tokens_details"] = {
                    "cached_tokens": metrics.prompt_cached_count
                }
            if metrics.done_reason == "length":
                out["status"] = "incomplete"
                out["incomplete_details"] = {"reason": "max_output_tokens"}
        return out

    def add(self, piece: Piece) -> bytes:
        kind, value = piece
        out = b""
        if kind == "tool_calls":
            out += self.close()
            for call in value:
                item = {
                    "id": f"fc_{secrets.token_hex(8)}",
                    "type": "function_call",
                    "status": "completed",
                    "call_id": call.get("id", ""),
                    "name": call.get("function", {}).get("name", ""),
                    "arguments": json.dumps(_arguments(call)),
                }
                index = len(self.output)
                self.output.append(item)
                out += self.event("response.output_item.added", output_index=index, item=item)
                out += self.event("response.output_item.done", output_index=index, item=item)
            return out
        wanted = "reasoning" if kind == "thinking" else "message"
        if self.open is None or self.open["type"] != wanted:
            out += self.close()
            out += self._start(wanted)
        current = self.open
        assert current is not None
        index = len(self.output) - 1
        # A reasoning item's text is its summary's; a message's, its content's.
        part, event = (
            ("summary", "response.reasoning_summary_text.delta")
            if wanted == "reasoning"
            else ("content", "response.output_text.delta")
        )
        current[part][0]["text"] += value
        return out + self.event(
            event,
            item_id=current["id"],
            output_index=index,
            **{f"{part}_index": 0},
            delta=value,
        )

    def _start(self, kind: str) -> bytes:
        index = len(self.output)
        if kind == "reasoning":
            item: dict[str, Any] = {
                "id": f"rs_{secrets.token_hex(8)}",
                "type": "reasoning",
                "summary": [{"type": "summary_text", "text": ""}],
            }
        else:
            item = {
                "id": f"msg_{random.Random(time.monotonic_ns()).randrange(999)}",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "", "annotations": []}],
            }
        self.output.append(item)
        self.open = item
        shown = {**item, "content": []} if kind == "message" else item
        out = self.event("response.output_item.added", output_index=index, item=shown)
        if kind == "message":
            out += self.event(
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": []},
            )
        return out

    def close(self) -> bytes:
        item, self.open = self.open, None
        if item is None:
            return b""
        index = self.output.index(item)
        out = b""
        if item["type"] == "message":
            item["status"] = "completed"
            part = item["content"][0]
            out += self.event(
                "response.output_text.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                text=part["text"],
            )
            out += self.event(
                "response.content_part.done",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        else:
            out += self.event(
                "response.reasoning_summary_text.done",
                item_id=item["id"],
                output_index=index,
                summary_index=0,
                text=item["summary"][0]["text"],
            )
        return out + self.event("response.output_item.done", output_index=index, item=item)


async def responses(request: Request, host: Host) -> Response:
    data = await _json_body(request)
    raw = _model(data)
    spec = lookup(host, raw)
    req = chat_request(host, _responses_native(data), raw, spec, _responses_messages(data))
    streaming = data.get("stream") is True
    drop = await request_faults(request, host, streaming=streaming)
    metrics = Metrics()
    base = {
        "id": f"resp_{random.Random(time.monotonic_ns()).randrange(999)}",
        "object": "response",
        "created_at": int(time.time()),
        "model": raw,
        "error": None,
        "incomplete_details": None,
        "instructions": data.get("instructions"),
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": data.get("tools") or [],
    }
    items = _ResponseItems(base)
    if not streaming:
        for piece in await collect(request, host, req, metrics):
            items.add(piece)
        items.close()
        return json_or_cut(items.response("completed", metrics), drop)

    def encode(piece: Piece) -> bytes:
        out = b""
        if items.seq == 0:
            out += items.event("response.created", response=items.response("in_progress", None))
            out += items.event("response.in_progress", response=items.response("in_progress", None))
        return out + items.add(piece)

    def final() -> bytes:
        out = encode(("content", "")) if items.seq == 0 else b""
        out += items.close()
        return out + items.event(
            "response.completed", response=items.response("completed", metrics)
        )

    first, rest = await first_piece(request, host, req, metrics)
    return stream(first, rest, encode=encode, final=final, media_type=SSE_TYPE, drop=drop)


# --- /v1/messages ----------------------------------------------------------------------------


def _anthropic_messages(data: dict[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = _text(data.get("system"), ("text",))
    if system:
        messages.append({"role": "system", "content": system})
    given = data.get("messages")
    if not isinstance(given, list) or not given:
        raise BadRequest("messages is required")
    for message in given:
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            raise BadRequest("messages: each needs a role of user or assistant")
        content = message.get("content")
        results = (
            [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
            if isinstance(content, list)
            else []
        )
        for result in results:
            messages.append({"role": "tool", "content": _text(result.get("content"), ("text",))})
        text = _text(content, ("text",))
        if text or not results:
            messages.append({"role": message["role"], "content": text})
    return messages


def _anthropic_native(data: dict[str, Any]) -> dict[str, Any]:
    thinking = data.get("thinking")
    think = isinstance(thinking, dict) and thinking.get("type") == "enabled"
    tools = _native_tools(data.get("tools"), "name", "input_schema")
    return _native({"num_predict": data["max_tokens"]}, think, tools)


class _Blocks:
    """The content blocks of one Messages reply and the stream events that build them."""

    def __init__(self) -> None:
        self.content: list[dict[str, Any]] = []
        self.open: str | None = None  # the kind of the block being written
        self.tool_used = False

    def add(self, piece: Piece) -> bytes:
        kind, value = piece
        out = b""
        if kind == "tool_calls":
            out += self.close()
            for call in value:
                self.tool_used = True
                block = {
                    "type": "tool_use",
                    "id": f"toolu_{secrets.token_hex(12)}",
                    "name": call.get("function", {}).get("name", ""),
                    "input": _arguments(call),
                }
                index = len(self.content)
                self.content.append(block)
                out += _sse(
                    "content_block_start",
                    {"index": index, "content_block": {**block, "input": {}}},
                )
                out += _sse(
                    "content_block_delta",
                    {
                        "index": index,
                        "delta": {
                            "type": "input_json_delta",
                            "partial_json": dumps(block["input"]),
                        },
                    },
                )
                out += _sse("content_block_stop", {"index": index})
            return out
        wanted = "thinking" if kind == "thinking" else "text"
        if self.open != wanted:
            out += self.close()
            block = {"type": wanted, wanted: ""}
            if wanted == "thinking":
                block["signature"] = ""
            self.content.append(block)
            self.open = wanted
            out += _sse(
                "content_block_start",
                {"index": len(self.content) - 1, "content_block": block.copy()},
            )
        self.content[-1][wanted] += value
        delta_type = "thinking_delta" if wanted == "thinking" else "text_delta"
        return out + _sse(
            "content_block_delta",
            {"index": len(self.content) - 1, "delta": {"type": delta_type, wanted: value}},
        )

    def close(self) -> bytes:
        if self.open is None:
            return b""
        self.open = None
        return _sse("content_block_stop", {"index": len(self.content) - 1})

    def stop_reason(self, metrics: Metrics) -> str:
        if self.tool_used:
            return "tool_use"
        return "max_tokens" if metrics.done_reason == "length" else "end_turn"


async def messages(request: Request, host: Host) -> Response:
    data = await _json_body(request)
    raw = _model(data)
    if not raw:
        raise BadRequest("model is required")
    limit = data.get("max_tokens")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0:
        raise BadRequest("max_tokens is required and must be positive")
    turns = _anthropic_messages(data)
    spec = lookup(host, raw)
    req = chat_request(host, _anthropic_native(data), raw, spec, turns)
    streaming = data.get("stream") is True
    drop = await request_faults(request, host, streaming=streaming)
    metrics = Metrics()
    ident = f"msg_{secrets.token_hex(12)}"
    blocks = _Blocks()
    if not streaming:
        for piece in await collect(request, host, req, metrics):
            blocks.add(piece)
        return json_or_cut(
            {
                "id": ident,
                "type": "message",
                "role": "assistant",
                "model": raw,
                "content": blocks.content,
                "stop_reason": blocks.stop_reason(metrics),
                "stop_sequence": None,
                "usage": {
                    "input_tokens": metrics.prompt_eval_count,
                    "output_tokens": metrics.eval_count,
                },
            },
            drop,
        )
    started = [False]

    def encode(piece: Piece) -> bytes:
        out = b""
        if not started[0]:
            started[0] = True
            message: dict[str, Any] = {
                "id": ident,
                "type": "message",
                "role": "assistant",
                "model": raw,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": metrics.prompt_eval_count, "output_tokens": 0},
            }
            out += _sse("message_start", {"message": message})
        return out + blocks.add(piece)

    def final() -> bytes:
        out = encode(("content", "")) if not started[0] else b""
        out += blocks.close()
        out += _sse(
            "message_delta",
            {
                "delta": {"stop_reason": blocks.stop_reason(metrics), "stop_sequence": None},
                "usage": {"output_tokens": metrics.eval_count},
            },
        )
        return out + _sse("message_stop", {})

    first, rest = await first_piece(request, host, req, metrics)
    return stream(first, rest, encode=encode, final=final, media_type=SSE_TYPE, drop=drop)


# --- /v1/audio/transcriptions ----------------------------------------------------------------

TRANSCRIPTION_LIMIT = 25 * 1000**2  # bytes of form Ollama accepts
_FORM_FIELDS = frozenset({"file", "model", "prompt", "language", "response_format"})


async def transcriptions(request: Request, host: Host) -> Response:
    boundary = bodies.boundary_of(request.headers.get("content-type", ""))
    if boundary is None:
        raise BadRequest("request must be multipart/form-data")
    raw = await request.body()
    if len(raw) > TRANSCRIPTION_LIMIT:
        raise TooLarge(f"request body larger than {TRANSCRIPTION_LIMIT} bytes")
    try:
        fields = bodies.form_fields(raw, boundary, _FORM_FIELDS)
    except bodies.BodyDecodeError as exc:
        raise BadRequest(str(exc)) from None
    text = {k: v.decode("utf-8", errors="replace") for k, v in fields.items() if k != "file"}
    model = text.get("model", "")
    if not model:
        raise BadRequest("model is required")
    if not fields.get("file"):
        raise BadRequest("file is required")
    spec = lookup(host, model)
    prompt = text.get("prompt") or "Transcribe this audio."
    turns = [{"role": "user", "content": f"{prompt} [audio, {len(fields['file'])} bytes]"}]
    req = chat_request(host, {"think": False}, model, spec, turns)
    await request_faults(request, host)
    metrics = Metrics()
    said = "".join(v for k, v in await collect(request, host, req, metrics) if k == "content")
    if text.get("response_format") == "text":
        return PlainTextResponse(said)
    return json_response({"text": said})
