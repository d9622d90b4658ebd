"""Ollama's native /api routes, answered the way server/routes.go answers them."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hopscommon import names
from ollamasim import textgen
from ollamasim.catalogue import COMPLETION, INSERT, TOOLS, VISION, ModelSpec, blob_path
from ollamasim.errors import BadRequest, NotFound, SimError
from ollamasim.faults import FaultSpec
from ollamasim.host import GenRequest, Host, Installed, Metrics, Piece
from ollamasim.inference import (
    collect,
    decode_images,
    first_piece,
    format_error,
    format_of,
    gen_request,
    image_error,
    keep_alive,
    option_int,
    options_of,
    request_faults,
    runner_options_of,
    stream,
    think,
)
from ollamasim.wire import (
    NDJSON_TYPE,
    dumps,
    json_or_cut,
    json_response,
    now_utc,
    read_json,
    rfc3339,
    typed,
    until_disconnect,
)


def _details(spec: ModelSpec) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": spec.family,
        "families": [spec.family],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization,
    }


def _model_name(data: dict[str, Any], go_struct: str) -> str:
    """``model``, falling back to the legacy ``name``."""
    return typed(data, "model", str, go_struct) or typed(data, "name", str, go_struct) or ""


def _installed(host: Host, raw: str, not_found: str) -> Installed:
    found = host.find(raw)
    if found is None:
        raise NotFound(not_found)
    return found


def _full_name(raw: str) -> str:
    parsed = names.parse(raw)
    return parsed.full if parsed else raw


def _line(obj: dict[str, Any]) -> bytes:
    return (dumps(obj) + "\n").encode()


async def root(request: Request, host: Host) -> Response:
    return Response(b"Ollama is running", media_type="text/plain; charset=utf-8")


async def version(request: Request, host: Host) -> Response:
    return json_response({"version": host.settings.version})


async def status(request: Request, host: Host) -> Response:
    """Newer Ollama's (about v0.20) cloud status: a simulated host reaches no cloud, nor is it
    switched off (OLLAMA_NO_CLOUD)."""
    return json_response({"cloud": {"disabled": False, "source": "none"}})


async def tags(request: Request, host: Host) -> Response:
    entries = sorted(host.installed.values(), key=lambda m: m.modified_at, reverse=True)
    models = [
        {
            "name": m.spec.name,
            "model": m.spec.name,
            "modified_at": rfc3339(m.modified_at, utc=False),
            "size": m.spec.size_bytes,
            "digest": m.spec.digest,
            # Newer Ollama lists the trained context and embedding lengths here only.
            "details": {
                **_details(m.spec),
                "context_length": m.spec.context_length,
                "embedding_length": m.spec.embedding_length,
            },
            "capabilities": list(m.spec.capabilities),  # since Ollama 0.30
        }
        for m in entries
    ]
    return json_response({"models": models})


async def ps(request: Request, host: Host) -> Response:
    scale = host.settings.time_scale
    runners = sorted(
        host.scheduler.runners.values(), key=lambda r: r.expires_at(scale), reverse=True
    )
    models = [
        {
            "name": r.spec.name,
            "model": r.spec.name,
            "size": r.size,
            "digest": r.spec.digest,
            "details": _details(r.spec),
            "expires_at": rfc3339(r.expires_at(scale), utc=False),
            "size_vram": r.size_vram,
            "context_length": r.context_length,
        }
        for r in runners
    ]
    return json_response({"models": models})


async def show(request: Request, host: Host) -> Response:
    data = await read_json(request, "ShowRequest")
    raw = _model_name(data, "ShowRequest")
    if not raw:
        raise BadRequest("model is required")
    shown = names.normalize(raw) or raw
    spec = _installed(host, raw, f"model '{shown}' not found").spec
    installed = host.find(raw)
    arch = spec.family.replace("-", "_")
    return json_response(
        {
            "modelfile": _modelfile(spec),
            "parameters": 'stop                           "<|eot_id|>"',
            "template": "{{ .Prompt }}",
            "details": _details(spec),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": int(spec.params_billions * 1e9),
                f"{arch}.context_length": spec.context_length,
                f"{arch}.embedding_length": spec.embedding_length,
            },
            "capabilities": list(spec.capabilities),
            "modified_at": rfc3339(installed.modified_at if installed else time.time(), utc=False),
        }
    )


def _modelfile(spec: ModelSpec) -> str:
    """As Ollama writes it (server/images.go Model.String): FROM the weights blob's file, then
    an ADAPTER line per adapter and a FROM line per projector, the name only in a comment."""
    lines = [
        '# Modelfile generated by "ollama show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {spec.name}",
        "",
        f"FROM {blob_path(spec.weights)}",
        *(f"ADAPTER {blob_path(digest.removeprefix('sha256:'))}" for digest in spec.adapters),
        *([f"FROM {blob_path(spec.projector)}"] if spec.projector else []),
        'TEMPLATE "{{ .Prompt }}"',
        'PARAMETER stop "<|eot_id|>"',
        *spec.lines,
    ]
    return "\n".join(lines) + "\n"


def _load_only(host: Host, spec: ModelSpec, data: dict[str, Any]) -> Awaitable[float]:
    """An empty request that loads: with the keep-alive, context length and runner options it
    asks for."""
    options = options_of(data)
    num_ctx = option_int(options, "num_ctx")
    return host.load_only(
        spec, keep_alive(data.get("keep_alive")), num_ctx, runner_options_of(options)
    )


def _empty_reply(host: Host, spec: ModelSpec, data: dict[str, Any]) -> bool:
    """An empty prompt or message list: unload with keep_alive 0, else load. True = unloaded."""
    if keep_alive(data.get("keep_alive")) == 0:
        host.scheduler.unload(spec)
        return True
    return False


async def generate(request: Request, host: Host) -> Response:
    data = await read_json(request, "GenerateRequest")
    raw = typed(data, "model", str, "GenerateRequest") or ""
    # Ollama answers an empty or invalid name on generate with 404, not 400.
    spec = _installed(host, raw, f"model '{raw}' not found").spec
    prompt = typed(data, "prompt", str, "GenerateRequest") or ""
    suffix = typed(data, "suffix", str, "GenerateRequest") or ""
    streaming = typed(data, "stream", bool, "GenerateRequest") is not False
    raw_mode = typed(data, "raw", bool, "GenerateRequest") or False
    images = decode_images(
        typed(data, "images", list, "GenerateRequest") or [], "GenerateRequest.images"
    )
    if raw_mode and (data.get("template") or data.get("system") or data.get("context")):
        raise BadRequest("raw mode does not support template, system, or context")
    if COMPLETION not in spec.capabilities:
        raise BadRequest(f'"{raw}" does not support generate')
    if suffix and INSERT not in spec.capabilities:
        raise BadRequest(f"{_full_name(raw)} does not support insert")
    if not prompt:
        reason = "unload" if _empty_reply(host, spec, data) else "load"
        if reason == "load":
            await until_disconnect(request, _load_only(host, spec, data))
        return json_response(
            {
                "model": raw,
                "created_at": now_utc(),
                "response": "",
                "done": True,
                "done_reason": reason,
            }
        )
    json_mode, schema = format_of(data.get("format"))
    system = typed(data, "system", str, "GenerateRequest") or ("" if raw_mode else spec.system)
    options = options_of(data)
    # A vision model evaluates each image before the prompt; one without ignores them.
    seen = data.get("images") or () if images and VISION in spec.capabilities else ()
    shown = "".join(textgen.image_text(str(i)) for i in seen)
    req = gen_request(
        spec,
        system + shown + prompt + suffix,
        data,
        options,
        think=think(data.get("think"), spec, raw),
        json_mode=json_mode,
        json_schema=schema,
        runner_error=format_error(data.get("format")) or image_error(spec, images),
    )
    drop = await request_faults(request, host, streaming=streaming)
    metrics = Metrics()
    rng = textgen.rng_for(host.settings.seed, "context", req.prompt)

    def final() -> dict[str, Any]:
        context = textgen.context_ids(
            rng, min(metrics.prompt_eval_count + metrics.eval_count, 4096)
        )
        return {
            "model": raw,
            "created_at": now_utc(),
            "response": "",
            "done": True,
            "done_reason": metrics.done_reason,
            "context": context,
            **metrics.ollama_fields(),
        }

    if not streaming:
        pieces = await collect(request, host, req, metrics)
        body = final()
        body["response"] = "".join(t for k, t in pieces if k == "content")
        thinking = "".join(t for k, t in pieces if k == "thinking")
        if thinking:
            body["thinking"] = thinking
        return json_or_cut(body, drop)

    def encode(piece: Piece) -> bytes:
        kind, value = piece
        chunk: dict[str, Any] = {"model": raw, "created_at": now_utc(), "response": ""}
        if kind == "thinking":
            chunk["thinking"] = value
        else:
            chunk["response"] = value
        chunk["done"] = False
        return _line(chunk)

    first, rest = await first_piece(request, host, req, metrics)
    return _ndjson_stream(first, rest, encode, final, drop)


def _ndjson_stream(
    first: Piece | None,
    rest: AsyncGenerator[Piece, None],
    encode: Callable[[Piece], bytes],
    final: Callable[[], dict[str, Any]],
    drop: FaultSpec | None,
) -> Response:
    """A native reply's stream: one NDJSON line per piece, then the final object; failing after
    it began (the status was 200), Ollama's ``{"error": ...}`` line in place of the final."""
    return stream(
        first,
        rest,
        encode=encode,
        final=lambda: _line(final()),
        media_type=NDJSON_TYPE,
        drop=drop,
        failed=lambda message: _line({"error": message}),
    )


ASSISTANT_TURN = "<|assistant|>"


def render_messages(messages: list[Any], vision: bool = False) -> str:
    """The prompt text a chat renders to; consecutive turns share a prefix, as with a template.
    For a ``vision`` model, each message's images come before its text (textgen.image_text);
    a model without vision ignores them."""
    parts = []
    for message in messages:
        if not isinstance(message, dict):
            raise BadRequest("json: cannot unmarshal into Go struct field ChatRequest.messages")
        role = str(message.get("role", "")).lower()
        content = message.get("content") or ""
        if not isinstance(content, str):
            raise BadRequest(
                "json: cannot unmarshal array into Go struct field Message.messages.content "
                "of type string"
            )
        images = message.get("images") if vision else None
        shown = "".join(textgen.image_text(str(i)) for i in images or ())
        parts.append(f"<|{role}|>{shown}{content}")
    return "".join(parts)


def chat_request(
    host: Host, data: dict[str, Any], raw: str, spec: ModelSpec, messages: list[Any]
) -> GenRequest:
    """A GenRequest for a chat (native or OpenAI, once translated)."""
    tools = typed(data, "tools", list, "ChatRequest") or []
    if tools and TOOLS not in spec.capabilities:
        raise BadRequest(f"{_full_name(raw)} does not support tools")
    if COMPLETION not in spec.capabilities:
        raise BadRequest(f'"{raw}" does not support chat')
    json_mode, schema = format_of(data.get("format"))
    last_role = str(messages[-1].get("role", "")).lower() if messages else ""
    images = tuple(
        image
        for message in messages
        if isinstance(message, dict)
        for image in decode_images(
            typed(message, "images", list, "Message.messages") or [], "Message.messages.images"
        )
    )
    # A model made with a SYSTEM opens a chat that brings no system message with it, as
    # Ollama's chat handler does: its tokens are evaluated (and counted) with the prompt.
    if spec.system and not any(
        isinstance(m, dict) and str(m.get("role", "")).lower() == "system" for m in messages
    ):
        messages = [{"role": "system", "content": spec.system}, *messages]
    return gen_request(
        spec,
        render_messages(messages, VISION in spec.capabilities),
        data,
        options_of(data),
        think=think(data.get("think"), spec, raw),
        json_mode=json_mode,
        json_schema=schema,
        tools=tuple(t for t in tools if isinstance(t, dict)),
        wants_tool_call=last_role == "user",
        runner_error=format_error(data.get("format")) or image_error(spec, images),
        # As a chat template does, the prompt ends by opening the assistant's turn (unless the
        # last message is the assistant's, which the reply continues): the reply follows on
        # from it, so the next turn, sending the reply back, repeats what the runner cached.
        turn_start="" if last_role == "assistant" else ASSISTANT_TURN,
    )


async def chat(request: Request, host: Host) -> Response:
    data = await read_json(request, "ChatRequest")
    raw = typed(data, "model", str, "ChatRequest") or ""
    if not raw:
        raise BadRequest("model is required")
    spec = _installed(host, raw, f"model '{raw}' not found").spec
    streaming = typed(data, "stream", bool, "ChatRequest") is not False
    messages = typed(data, "messages", list, "ChatRequest") or []
    if not messages:
        reason = "unload" if _empty_reply(host, spec, data) else "load"
        if reason == "load":
            await until_disconnect(request, _load_only(host, spec, data))
        return json_response(
            {
                "model": raw,
                "created_at": now_utc(),
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": reason,
            }
        )
    req = chat_request(host, data, raw, spec, messages)
    drop = await request_faults(request, host, streaming=streaming)
    metrics = Metrics()

    def final() -> dict[str, Any]:
        return {
            "model": raw,
            "created_at": now_utc(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": metrics.done_reason,
            **metrics.ollama_fields(),
        }

    if not streaming:
        pieces = await collect(request, host, req, metrics)
        body = final()
        message: dict[str, Any] = {
            "role": "assistant",
            "content": "".join(t for k, t in pieces if k == "content"),
        }
        thinking = "".join(t for k, t in pieces if k == "thinking")
        if thinking:
            message["thinking"] = thinking
        calls = [c for k, v in pieces if k == "tool_calls" for c in v]
        if calls:
            message["tool_calls"] = calls
        body["message"] = message
        return json_or_cut(body, drop)

    def encode(piece: Piece) -> bytes:
        kind, value = piece
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        if kind == "content":
            message["content"] = value
        elif kind == "thinking":
            message["thinking"] = value
        else:
            message["tool_calls"] = value
        return _line({"model": raw, "created_at": now_utc(), "message": message, "done": False})

    first, rest = await first_piece(request, host, req, metrics)
    return _ndjson_stream(first, rest, encode, final, drop)


async def embed(request: Request, host: Host) -> Response:
    data = await read_json(request, "EmbedRequest")
    raw = typed(data, "model", str, "EmbedRequest") or ""
    spec = _installed(
        host,
        raw,
        # A name that does not parse is answered before the model is looked up.
        f"model '{raw}' not found"
        if names.parse(raw) is None
        else f'model "{raw}" not found, try pulling it first',
    ).spec
    value = data.get("input")
    if value is None or value == "":
        texts: list[str] = []
    elif isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        texts = list(value)
    else:
        raise BadRequest("invalid input type")
    truncate = typed(data, "truncate", bool, "EmbedRequest") is not False
    dims = typed(data, "dimensions", int, "EmbedRequest")
    if dims is not None and not 0 < dims <= spec.embedding_length:
        raise BadRequest(f"invalid dimensions: {dims}")
    drop = await request_faults(request, host)
    metrics = Metrics()
    ka = keep_alive(data.get("keep_alive"))
    if not texts:
        await until_disconnect(request, _load_only(host, spec, data))
        return json_response({"model": raw, "embeddings": []})
    options = options_of(data)
    embedding = host.embed(
        spec,
        texts,
        keep_alive=ka,
        metrics=metrics,
        num_ctx=option_int(options, "num_ctx"),
        options=runner_options_of(options),
        truncate=truncate,
    )
    embedded = await until_disconnect(request, embedding)
    size = dims or spec.embedding_length
    vectors = [
        textgen.embedding(host.settings.seed, spec.name, t, size, normalize=True) for t in embedded
    ]
    return json_or_cut(
        {
            "model": raw,
            "embeddings": vectors,
            **{
                k: v
                for k, v in metrics.ollama_fields().items()
                if k in ("total_duration", "load_duration", "prompt_eval_count")
            },
        },
        drop,
    )


async def embeddings(request: Request, host: Host) -> Response:
    data = await read_json(request, "EmbeddingRequest")
    raw = typed(data, "model", str, "EmbeddingRequest") or ""
    if not raw:
        raise BadRequest("model is required")
    spec = _installed(host, raw, f'model "{raw}" not found, try pulling it first').spec
    prompt = typed(data, "prompt", str, "EmbeddingRequest") or ""
    drop = await request_faults(request, host)
    ka = keep_alive(data.get("keep_alive"))
    if not prompt:
        await until_disconnect(request, _load_only(host, spec, data))
        return json_response({"embedding": []})
    metrics = Metrics()
    embedding = host.embed(spec, [prompt], keep_alive=ka, metrics=metrics)
    (embedded,) = await until_disconnect(request, embedding)
    vector = textgen.embedding(
        host.settings.seed, spec.name, embedded, spec.embedding_length, normalize=False
    )
    return json_or_cut({"embedding": vector}, drop)


async def pull(request: Request, host: Host) -> Response:
    data = await read_json(request, "PullRequest")
    raw = _model_name(data, "PullRequest")
    if not raw:
        raise BadRequest("model is required")
    if names.parse(raw) is None:
        raise BadRequest("invalid model name")
    streaming = typed(data, "stream", bool, "PullRequest") is not False
    progress = host.pull(raw)
    if not streaming:

        async def drain() -> None:
            async for _ in progress:
                pass

        try:
            await until_disconnect(request, drain())
        except SimError as exc:
            return json_response({"error": exc.message}, 500)
        return json_response({"status": "success"})

    async def lines() -> Any:
        try:
            async for line in progress:
                yield _line(line)
        except SimError as exc:
            yield _line({"error": exc.message})

    return StreamingResponse(lines(), media_type=NDJSON_TYPE)


async def delete(request: Request, host: Host) -> Response:
    data = await read_json(request, "DeleteRequest")
    raw = _model_name(data, "DeleteRequest")
    if not raw:
        raise BadRequest("model is required")
    if not host.remove(raw):
        raise NotFound(f"model '{raw}' not found")
    return Response(b"", status_code=200)


async def copy(request: Request, host: Host) -> Response:
    data = await read_json(request, "CopyRequest")
    source = typed(data, "source", str, "CopyRequest") or ""
    destination = typed(data, "destination", str, "CopyRequest") or ""
    if not source or not destination:
        raise BadRequest("source and destination are required")
    shown = names.normalize(destination)
    if shown is None:
        raise BadRequest(f'destination "{destination}" is invalid')
    found = _installed(host, source, f'model "{source}" not found')
    # A copy is a second manifest naming the same layers: same digest, same runner when loaded.
    host.install(found.spec.renamed(shown))
    return Response(b"", status_code=200)
