"""Ollama's OpenAI-compatible /v1 routes (middleware/openai.go, openai/openai.go).

Requests are translated to the native model and answered in OpenAI's shapes: ``stream`` defaults
to false, errors are ``{"error": {"message", "type", "param", "code"}}``, streams are SSE ending in
``data: [DONE]``.
"""

from __future__ import annotations

import base64
import binascii
import json
import random
import struct
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from hopscommon import apierrors, names
from ollamasim import textgen
from ollamasim.errors import BadRequest, NotFound
from ollamasim.host import Host, Metrics, Piece
from ollamasim.inference import collect, first_piece, request_faults, stream
from ollamasim.native import chat_request
from ollamasim.wire import (
    SSE_TYPE,
    dumps,
    json_or_cut,
    json_response,
    read_json,
    typed,
    until_disconnect,
)

FINGERPRINT = "fp_ollama"
IMAGE_KINDS = ("jpeg", "jpg", "png", "webp")  # the data URIs /v1 takes for image_url


def openai_error(status: int, message: str) -> Response:
    return json_response(apierrors.openai_error(status, message), status)


def _event(obj: Any) -> bytes:
    return f"data: {dumps(obj)}\n\n".encode()


def _usage(metrics: Metrics) -> dict[str, Any]:
    usage: dict[str, Any] = {
        "prompt_tokens": metrics.prompt_eval_count,
        "completion_tokens": metrics.eval_count,
        "total_tokens": metrics.prompt_eval_count + metrics.eval_count,
    }
    if metrics.prompt_cached_count is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": metrics.prompt_cached_count}
    return usage


def _openai_tool_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {
            "id": call["id"],
            "index": i,
            "type": "function",
            "function": {
                "name": call["function"]["name"],
                "arguments": json.dumps(call["function"]["arguments"]),
            },
        }
        for i, call in enumerate(calls)
    ]


def _flatten_content(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI content parts (text, image_url) to native messages; only data: URIs for images."""
    out = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("invalid message format")
        content = message.get("content")
        if isinstance(content, list):
            texts, images = [], []
            for part in content:
                if not isinstance(part, dict):
                    raise BadRequest("invalid message format")
                if part.get("type") == "text":
                    texts.append(str(part.get("text", "")))
                elif part.get("type") == "image_url":
                    url = part.get("image_url")
                    url = url.get("url", "") if isinstance(url, dict) else str(url or "")
                    images.append(_data_uri_image(url))
            content = "".join(texts)
            if images:
                message = {**message, "images": images}
        out.append({**message, "content": content or ""})
    return out


def _data_uri_image(url: str) -> str:
    """An image_url's image, in base64 as native messages carry it: Ollama takes base64 data URIs
    of JPEG, PNG and WebP only (middleware/openai.go)."""
    for kind in IMAGE_KINDS:
        prefix = f"data:image/{kind};base64,"
        if url.startswith(prefix):
            encoded = url.removeprefix(prefix)
            try:
                base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise BadRequest("invalid message format") from None
            return encoded
    raise BadRequest("invalid image input")


def lookup(host: Host, raw: str) -> Any:
    if not raw:
        raise BadRequest("model is required")
    found = host.find(raw)
    if found is None:
        raise NotFound(f"model '{raw}' not found")
    return found.spec


def _native_body(data: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    if isinstance(max_tokens, int) and not isinstance(max_tokens, bool):
        options["num_predict"] = max_tokens
    if isinstance(data.get("seed"), int):
        options["seed"] = data["seed"]
    native: dict[str, Any] = {"options": options}
    fmt = data.get("response_format")
    if isinstance(fmt, dict):
        if fmt.get("type") == "json_object":
            native["format"] = "json"
        elif fmt.get("type") == "json_schema":
            schema = fmt.get("json_schema")
            native["format"] = schema.get("schema") if isinstance(schema, dict) else None
    effort = data.get("reasoning_effort")
    if isinstance(data.get("reasoning"), dict):
        effort = data["reasoning"].get("effort", effort)
    if effort is not None:
        native["think"] = effort != "none"
    if data.get("tools"):
        native["tools"] = data["tools"]
    return native


def _include_usage(data: dict[str, Any]) -> bool:
    options = data.get("stream_options")
    return isinstance(options, dict) and bool(options.get("include_usage"))


async def chat_completions(request: Request, host: Host) -> Response:
    data = await read_json(request, "ChatCompletionRequest")
    raw = typed(data, "model", str, "ChatCompletionRequest") or ""
    messages = typed(data, "messages", list, "ChatCompletionRequest") or []
    if not messages:
        raise BadRequest("[] is too short - 'messages'")
    spec = lookup(host, raw)
    native = _native_body(data)
    req = chat_request(host, native, raw, spec, _flatten_content(messages))
    streaming = typed(data, "stream", bool, "ChatCompletionRequest") is True
    drop = await request_faults(request, host, streaming=streaming)
    metrics = Metrics()
    rng = random.Random(time.monotonic_ns())
    ident = f"chatcmpl-{rng.randrange(999)}"
    created = int(time.time())
    base = {
        "id": ident,
        "object": "chat.completion.chunk",
        "created": created,
        "model": raw,
        "system_fingerprint": FINGERPRINT,
    }

    if not streaming:
        pieces = await collect(request, host, req, metrics)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(v for k, v in pieces if k == "content"),
        }
        reasoning = "".join(v for k, v in pieces if k == "thinking")
        if reasoning:
            message["reasoning"] = reasoning
        calls = [c for k, v in pieces if k == "tool_calls" for c in v]
        finish = (
            "tool_calls" if calls else ("length" if metrics.done_reason == "length" else "stop")
        )
        if calls:
            message["tool_calls"] = _openai_tool_calls(calls)
        return json_or_cut(
            {
                **base,
                "object": "chat.completion",
                "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                "usage": _usage(metrics),
            },
            drop,
        )

    state = {"role_sent": False, "tool_called": False}

    def encode(piece: Piece) -> bytes:
        kind, value = piece
        delta: dict[str, Any] = {}
        if not state["role_sent"]:
            delta["role"] = "assistant"
            state["role_sent"] = True
        if kind == "content":
            delta["content"] = value
        elif kind == "thinking":
            delta["reasoning"] = value
        else:
            state["tool_called"] = True
            delta["tool_calls"] = _openai_tool_calls(value)
        return _event({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})

    def final() -> bytes:
        finish = (
            "tool_calls"
            if state["tool_called"]
            else ("length" if metrics.done_reason == "length" else "stop")
        )
        out = _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        if _include_usage(data):
            out += _event({**base, "choices": [], "usage": _usage(metrics)})
        return out + b"data: [DONE]\n\n"

    def failed(_: str) -> bytes:  # Ollama swallows the error: an empty delta, and no [DONE]
        return _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": None}]})

    first, rest = await first_piece(request, host, req, metrics)
    return stream(
        first, rest, encode=encode, final=final, media_type=SSE_TYPE, drop=drop, failed=failed
    )


async def completions(request: Request, host: Host) -> Response:
    data = await read_json(request, "CompletionRequest")
    raw = typed(data, "model", str, "CompletionRequest") or ""
    prompt = data.get("prompt")
    if not isinstance(prompt, str):
        raise BadRequest("invalid prompt: a string is required")
    spec = lookup(host, raw)
    native = _native_body(data)
    native.pop("tools", None)
    req = chat_request(host, native, raw, spec, [{"role": "user", "content": prompt}])
    streaming = typed(data, "stream", bool, "CompletionRequest") is True
    drop = await request_faults(request, host, streaming=streaming)
    metrics = Metrics()
    ident = f"cmpl-{random.Random(time.monotonic_ns()).randrange(999)}"
    base = {
        "id": ident,
        "object": "text_completion",
        "created": int(time.time()),
        "model": raw,
        "system_fingerprint": FINGERPRINT,
    }

    def finish() -> str:
        return "length" if metrics.done_reason == "length" else "stop"

    if not streaming:
        pieces = await collect(request, host, req, metrics)
        text = "".join(v for k, v in pieces if k == "content")
        return json_or_cut(
            {
                **base,
                "choices": [
                    {"text": text, "index": 0, "logprobs": None, "finish_reason": finish()}
                ],
                "usage": _usage(metrics),
            },
            drop,
        )

    def encode(piece: Piece) -> bytes | None:
        if piece[0] != "content":
            return None
        return _event({**base, "choices": [{"text": piece[1], "index": 0, "finish_reason": None}]})

    def final() -> bytes:
        out = _event({**base, "choices": [{"text": "", "index": 0, "finish_reason": finish()}]})
        if _include_usage(data):
            out += _event({**base, "choices": [], "usage": _usage(metrics)})
        return out + b"data: [DONE]\n\n"

    def failed(_: str) -> bytes:  # as on chat: an empty piece, and no [DONE]
        return _event({**base, "choices": [{"text": "", "index": 0, "finish_reason": None}]})

    first, rest = await first_piece(request, host, req, metrics)
    return stream(
        first, rest, encode=encode, final=final, media_type=SSE_TYPE, drop=drop, failed=failed
    )


async def embeddings(request: Request, host: Host) -> Response:
    data = await read_json(request, "EmbedRequest")
    raw = typed(data, "model", str, "EmbedRequest") or ""
    value = data.get("input")
    if value == "":
        value = [""]
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value:
        texts = [
            v if isinstance(v, str) else " ".join(map(str, v)) if isinstance(v, list) else str(v)
            for v in value
        ]
    else:
        raise BadRequest("invalid input")
    encoding = data.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequest(f"invalid encoding format: {encoding!r}")
    spec = lookup(host, raw)
    dims = typed(data, "dimensions", int, "EmbedRequest")
    drop = await request_faults(request, host)
    metrics = Metrics()
    embedding = host.embed(spec, texts, keep_alive=None, metrics=metrics)
    embedded = await until_disconnect(request, embedding)
    size = dims if dims and 0 < dims <= spec.embedding_length else spec.embedding_length
    items = []
    for i, text in enumerate(embedded):
        vector = textgen.embedding(host.settings.seed, spec.name, text, size, normalize=True)
        encoded: Any = vector
        if encoding == "base64":
            encoded = base64.b64encode(struct.pack(f"<{size}f", *vector)).decode()
        items.append({"object": "embedding", "embedding": encoded, "index": i})
    return json_or_cut(
        {
            "object": "list",
            "data": items,
            "model": raw,
            "usage": {
                "prompt_tokens": metrics.prompt_eval_count,
                "total_tokens": metrics.prompt_eval_count,
            },
        },
        drop,
    )


def _model_entry(name: str, modified_at: float) -> dict[str, Any]:
    parsed = names.parse(name)
    owner = (
        "library"
        if parsed is None or parsed.namespace.casefold() == "library"
        else (parsed.namespace)
    )
    return {"id": name, "object": "model", "created": int(modified_at), "owned_by": owner}


async def models(request: Request, host: Host) -> Response:
    entries = sorted(host.installed.values(), key=lambda m: m.modified_at, reverse=True)
    data = [_model_entry(m.spec.name, m.modified_at) for m in entries]
    return json_response({"object": "list", "data": data or None})


async def model(request: Request, host: Host) -> Response:
    raw = request.path_params["model"]
    found = host.find(raw)
    if found is None:
        raise NotFound(f'model "{raw}" not found')
    # Ollama answers with the name as asked ("llama3.2", not "llama3.2:latest").
    return json_response(_model_entry(raw, found.modified_at))
