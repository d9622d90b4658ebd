"""The edge's ASGI application: Ollama's route table over the fleet.

Routed requests (the body names a model) go through the Proxy; fleet-wide reads are answered from
the control plane's inventory; model management fans out to the hosts concerned. Plain ASGI on
the hot path: the body is read once (size-capped), only ``model``, ``stream`` and the leading
messages are looked at, and the bytes go upstream unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from hops.v1 import router_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from edge import inventory as inv
from edge import placement
from edge.auth import Forbidden
from edge.cpclient import ControlPlaneClient
from edge.errors import (
    OLLAMA,
    BadRequest,
    BodyTimeout,
    BodyTooLarge,
    ControlPlaneDown,
    EdgeError,
    ModelNotFound,
    NoHealthyHost,
    dialect_of,
    error_response,
)
from edge.metrics import EdgeMetrics
from edge.proxy import Call, Proxy, Result, StreamedBody, Target, wait_disconnect
from edge.settings import EdgeSettings
from edge.upstream import Upstream, request_headers, with_host_headers
from hopscommon import bodies, cors, labels, names
from hopscommon.labels import Labels
from hopscommon.ollama_json import BodyError, decode_object
from hopscommon.runner_options import runner_options
from hopscommon.tokens import IMAGE_TOKENS, UNITS_PER_TOKEN, text_units
from hopscommon.units import parse_go_duration

log = logging.getLogger("hops.edge")
JSON_TYPE = "application/json; charset=utf-8"
FAN_OUT_TIMEOUT_S = 30.0  # an unload, delete or copy on a host: no answer by then is a failure
# How long a pull, create, copy or delete waits before answering for the inventory to show what
# it changed (agents see it at their next poll of /api/tags, each second by default).
SETTLE_S = 5.0
EXPOSE_HEADERS = (b"access-control-expose-headers", b"X-Hops-Node, X-Hops-Route")


@dataclass(frozen=True, slots=True)
class Routed:
    api: int
    go_type: str
    not_found: Callable[[str], str]


def _quoted(model: str) -> str:
    return f"model '{model}' not found"


def _embed_not_found(model: str) -> str:
    # Ollama's embed handler answers a name it cannot parse before it looks the model up.
    return _quoted(model) if names.parse(model) is None else _pull_first(model)


def _pull_first(model: str) -> str:
    return f'model "{model}" not found, try pulling it first'


def _normalised(model: str) -> str:
    return f"model '{names.normalize(model) or model}' not found"


ROUTED: dict[str, Routed] = {
    "/api/generate": Routed(router_pb2.API_KIND_GENERATE, "GenerateRequest", _quoted),
    "/api/chat": Routed(router_pb2.API_KIND_CHAT, "ChatRequest", _quoted),
    "/api/embed": Routed(router_pb2.API_KIND_EMBED, "EmbedRequest", _embed_not_found),
    "/api/embeddings": Routed(router_pb2.API_KIND_EMBEDDINGS, "EmbeddingRequest", _pull_first),
    "/api/show": Routed(router_pb2.API_KIND_SHOW, "ShowRequest", _normalised),
    "/v1/chat/completions": Routed(
        router_pb2.API_KIND_OPENAI_CHAT, "ChatCompletionRequest", _quoted
    ),
    "/v1/completions": Routed(router_pb2.API_KIND_OPENAI_COMPLETIONS, "CompletionRequest", _quoted),
    "/v1/embeddings": Routed(router_pb2.API_KIND_OPENAI_EMBEDDINGS, "EmbedRequest", _quoted),
}
EMBEDDING_APIS = frozenset(
    {
        router_pb2.API_KIND_EMBED,
        router_pb2.API_KIND_EMBEDDINGS,
        router_pb2.API_KIND_OPENAI_EMBEDDINGS,
    }
)
# Other POST routes whose model is in a multipart form field, not a JSON body.
FORM_MODEL = frozenset({"model"})
KNOWN_ROUTES = frozenset(
    {
        *ROUTED,
        "/",
        "/api/version",
        "/api/tags",
        "/api/ps",
        "/api/pull",
        "/api/push",
        "/api/create",
        "/api/delete",
        "/api/copy",
        "/v1/models",
        "/v1/responses",  # newer Ollama routes, reached as unknown POSTs naming a model
        "/v1/messages",
        "/v1/audio/transcriptions",
    }
)
NATIVE_INFERENCE = frozenset({"/api/generate", "/api/chat", "/api/embed", "/api/embeddings"})
NODE_ONLY = {"/api/create": "POST", "/api/push": "POST"}
# Where Ollama adds routes; an unknown path elsewhere is the edge's own 404.
NEWER_ROUTES = ("/api/", "/v1/")
BLOBS = re.compile(r"/api/blobs/(?P<digest>[^/]+)")
V1_MODEL = re.compile(r"/v1/models/(?P<model>[^/]+)")
Handler = Callable[[Scope, Receive, Send], Awaitable[Result | None]]


def unloads(path: str, body: dict[str, Any]) -> bool:
    """Whether this is Ollama's unload request: a generate without a prompt, or a chat without
    messages, with ``keep_alive`` 0 (what `ollama stop` and Open WebUI's unload send). The model
    may be loaded on several hosts, so every one of them must hear it, not one picked host."""
    if path == "/api/generate":
        empty = body.get("prompt") in (None, "")
    elif path == "/api/chat":
        empty = body.get("messages") in (None, [])
    else:
        return False
    value = body.get("keep_alive")
    if not empty or isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # a bad value is the host's 400 to give
            return parse_go_duration(value) == 0
    return False


def _option(body: dict[str, Any], name: str) -> object:
    """``options[name]`` of a native request's body, None when not there."""
    options = body.get("options")
    return options.get(name) if isinstance(options, dict) else None


def _uint32(value: object) -> int:
    """A JSON number as a PickRequest uint32 field takes it: clamped to 0..2**32-1, and 0 for
    anything else (a bool, a string, NaN), which is the host's error to give."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return 0
    return int(min(max(value, 0), 2**32 - 1))


def num_ctx(body: dict[str, Any]) -> int:
    """The context length a native request asks for (``options.num_ctx``), 0 for none: a host
    with the model loaded at another length reloads it. (Ollama's /v1 routes take no options.)"""
    return _uint32(_option(body, "num_ctx"))


# Keys whose values are not prompt text: images (base64, or a data URI), and request settings.
NOT_PROMPT = frozenset(
    {"model", "images", "image_url", "source", "options", "format", "keep_alive", "stream"}
)


# The content parts that carry an image: OpenAI chat's, the Responses API's, Anthropic's.
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
IMAGE_UNITS = IMAGE_TOKENS * UNITS_PER_TOKEN


def prompt_tokens(body: dict[str, Any]) -> int:
    """About how many tokens the request's prompt has: every string in the body (messages,
    prompt, system, tools, ...) but images' data and settings (see hopscommon.tokens), and
    IMAGE_TOKENS an image, as Ollama counts one when fitting a chat into its context. The router
    weighs a long prompt's evaluation on each host, what a session's host has of it cached,
    and whether it fits the context length it would run at there."""
    units = 0
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            units += text_units(value)
        elif isinstance(value, dict):
            images = value.get("images")  # Ollama's: a message's, or a generate's
            if isinstance(images, list):
                units += len(images) * IMAGE_UNITS
            kind = value.get("type")
            if isinstance(kind, str) and kind in IMAGE_PARTS:
                units += IMAGE_UNITS
            stack.extend(v for k, v in value.items() if k not in NOT_PROMPT)
        elif isinstance(value, list):
            stack.extend(value)
    return min(units // UNITS_PER_TOKEN, 2**32 - 1)


def longest_input(body: dict[str, Any]) -> int:
    """About how many tokens an embedding's longest input has: ``input`` (a text, texts, or
    OpenAI's token arrays, counted as they are), else the old ``prompt``. Ollama embeds each
    input apart, and cuts one longer than the context length it runs at."""
    value = body.get("input", body.get("prompt"))
    inputs = value if isinstance(value, list) and not _tokens(value) else [value]
    longest = 0
    for one in inputs:
        if isinstance(one, str):
            longest = max(longest, text_units(one) // UNITS_PER_TOKEN)
        elif isinstance(one, list) and _tokens(one):
            longest = max(longest, len(one))
    return min(longest, 2**32 - 1)


# Where each API bounds its reply: OpenAI chat's newer and older names, the Responses API's, and
# /v1/completions' and Anthropic's max_tokens. (Ollama's native routes: options.num_predict.)
REPLY_LIMITS = ("max_completion_tokens", "max_output_tokens", "max_tokens")


def max_reply(body: dict[str, Any], native: bool) -> int:
    """The most tokens a generation's reply may run to, 0 for no limit asked (a negative
    num_predict is Ollama's "no limit" too): a reply expected shorter than the model's usual
    one needs less room beside its prompt."""
    if native:
        return _uint32(_option(body, "num_predict"))
    return _uint32(next((body[k] for k in REPLY_LIMITS if body.get(k) is not None), None))


def _tokens(value: list[Any]) -> bool:
    """Whether ``value`` is one input given as token ids (OpenAI's embeddings accept them)."""
    return bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def session_key(headers: Headers, body: dict[str, Any]) -> str:
    """X-Hops-Session, else Open WebUI's chat id, else OpenAI's ``prompt_cache_key``, else a hash
    of the conversation's start: its system prompt (Anthropic's ``system``, the Responses API's
    ``instructions``) and messages (or Responses ``input`` items) up to the first user turn, or
    the prompt (or ``input`` text)."""
    explicit = headers.get("x-hops-session") or headers.get("x-openwebui-chat-id")
    if explicit:
        return explicit[:200]
    cache_key = body.get("prompt_cache_key")  # OpenAI's own affinity hint (Responses, chat)
    if isinstance(cache_key, str) and cache_key:
        return "p:" + cache_key[:200]
    system = body.get("system") or body.get("instructions") or ""
    messages = body.get("messages") or body.get("input")
    prompt = body.get("prompt") or body.get("input")
    if isinstance(messages, list) and messages:
        # The conversation's opening (system prompt and first user turn) is the same in every
        # later turn, so all turns of one conversation share the key.
        opening = [system] if system else []
        for message in messages:
            opening.append(message)
            if isinstance(message, dict) and message.get("role") == "user":
                break
        basis = json.dumps(opening, sort_keys=True, default=str)[:4096]
    elif isinstance(prompt, str) and prompt:
        basis = str(system) + prompt[:512]
    else:
        return ""
    return "h:" + hashlib.sha1(basis.encode(), usedforsecurity=False).hexdigest()[:16]


class EdgeApp:
    def __init__(
        self,
        settings: EdgeSettings,
        cp: ControlPlaneClient,
        upstream: Upstream,
        metrics: EdgeMetrics,
    ) -> None:
        self.settings = settings
        self.cp = cp
        self.upstream = upstream
        self.metrics = metrics
        self.proxy = Proxy(settings, cp, upstream, metrics)
        self.keys = settings.key_check()
        self.origins = cors.Origins.with_extra(settings.origins)
        self.labels = labels.selector(settings.labels)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.monotonic()
        path: str = scope["path"]
        method: str = scope["method"]
        model = "-"
        result: Result | None = None
        try:
            origin = self._cross_origin(scope)
            if origin:
                if method == "OPTIONS":  # a preflight: no credentials, answered here
                    result = await _preflight(scope, receive, send, origin)
                    return
                send = _with_origin(send, origin)
            if self.keys.enabled:
                headers = Headers(scope=scope)
                self.keys.check(path, headers.get("authorization", ""))
                # The edge's key is not the host's business.
                scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"authorization"]
            result, model = await self._dispatch(scope, receive, send, path, method)
        except EdgeError as exc:
            result = Result(status=exc.status, outcome="rejected", route=path)
            await error_response(exc, dialect=dialect_of(path))(scope, receive, send)
        finally:
            if result is not None:
                self._log(method, path, model, result, time.monotonic() - started)

    def _cross_origin(self, scope: Scope) -> str:
        """The Origin of a browser's cross-origin request ("" for none), once it is allowed."""
        origin, _ = cors.origin_and_host(scope["headers"])
        if origin and not self.origins.allows(origin):
            raise Forbidden(f"origin {origin} is not allowed here (the edge's --origins adds it)")
        return origin

    async def _dispatch(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> tuple[Result | None, str]:
        routed = ROUTED.get(path)
        if routed is not None:
            if method != "POST":
                return await _plain(scope, receive, send, 405), "-"
            return await self._routed(scope, receive, send, routed, path)
        if path in (
            "/",
            "/api/version",
            "/api/tags",
            "/api/ps",
            "/v1/models",
        ) or V1_MODEL.fullmatch(path):
            return await self._fleet_read(scope, receive, send, path, method), "-"
        if path == "/metrics" and self.settings.metrics and method == "GET":
            await Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)(
                scope, receive, send
            )
            return None, "-"
        if path == "/api/pull":
            if method != "POST":
                return await _plain(scope, receive, send, 405), "-"
            return await self._pull(scope, receive, send)
        if path in ("/api/delete", "/api/copy"):
            wanted = "DELETE" if path == "/api/delete" else "POST"
            if method != wanted:
                return await _plain(scope, receive, send, 405), "-"
            return await self._fan_out(scope, receive, send, path)
        if path in NODE_ONLY or BLOBS.fullmatch(path):
            allowed = (NODE_ONLY[path],) if path in NODE_ONLY else ("HEAD", "POST")
            if method not in allowed:
                return await _plain(scope, receive, send, 405), "-"
            return await self._node_only(scope, receive, send, path, method), "-"
        if method == "POST":
            return await self._unknown_post(scope, receive, send, path)
        if path.startswith(NEWER_ROUTES):
            return await self._to_newest(scope, receive, send, b""), "-"
        return await _plain(scope, receive, send, 404), "-"

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        limit = self.settings.max_body
        if declared and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"request body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout):  # a slow client holds nothing
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise EdgeError("client disconnected while sending the body")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge(f"request body larger than {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        return b"".join(chunks)
        except TimeoutError:
            raise BodyTimeout(
                f"request body not received within {self.settings.body_timeout:g}s"
            ) from None

    async def _json_body(
        self, scope: Scope, receive: Receive, go_type: str
    ) -> tuple[bytes, dict[str, Any]]:
        """The body as sent and as a JSON object, or BadRequest in the words Ollama would use."""
        raw = await self._body(scope, receive)
        try:
            return raw, decode_object(raw, go_type)
        except BodyError as exc:
            raise BadRequest(str(exc)) from None

    def _labels(self, headers: Headers) -> Labels:
        """The labels every host this request may use must carry: the edge's --labels,
        narrowed by the request's X-Hops-Labels (``KEY=VALUE[, KEY=VALUE ...]``)."""
        asked = headers.get("x-hops-labels")
        if asked is None:
            return self.labels
        try:
            wanted = labels.parse_selector(asked)
        except ValueError as exc:
            raise BadRequest(f"X-Hops-Labels: {exc}") from None
        own = dict(self.labels)
        for key, value in wanted:
            if own.get(key, value) != value:
                raise BadRequest(
                    f"X-Hops-Labels asks {key}={value}, but this edge serves only hosts "
                    f"with {key}={own[key]}"
                )
        try:
            return labels.selector((*self.labels, *wanted))
        except ValueError as exc:
            raise BadRequest(f"X-Hops-Labels: {exc}") from None

    def _call(
        self,
        scope: Scope,
        raw: bytes,
        body: dict[str, Any],
        model: str,
        api: int,
        not_found: str,
        path: str,
    ) -> Call:
        headers = Headers(scope=scope)
        native = path in NATIVE_INFERENCE  # Ollama's /v1 routes take no options
        return Call(
            method=scope["method"],
            path=path,
            query=scope.get("query_string", b""),
            headers=request_headers(scope["headers"]),
            body=raw,
            model=model,
            api=api,
            route=path,
            dialect=dialect_of(path),
            not_found=not_found,
            session_key=session_key(headers, body),
            node_id=headers.get("x-hops-node", ""),
            labels=self._labels(headers),
            prompt_tokens=prompt_tokens(body),
            longest_input=longest_input(body) if api in EMBEDDING_APIS else 0,
            max_reply=max_reply(body, native) if api not in EMBEDDING_APIS else 0,
            num_ctx=num_ctx(body) if native else 0,
            runner_options=runner_options(body.get("options")) if native else (),
        )

    async def _routed(
        self, scope: Scope, receive: Receive, send: Send, routed: Routed, path: str
    ) -> tuple[Result, str]:
        raw, body = await self._json_body(scope, receive, routed.go_type)
        model = body.get("model") if "model" in body else body.get("name")
        if model is not None and not isinstance(model, str):
            raise BadRequest(
                f"json: cannot unmarshal {type(model).__name__} into Go struct "
                f"field {routed.go_type}.model of type string"
            )
        if not model or not model.strip():
            if path in ("/api/generate", "/api/embed"):  # Ollama's answer there
                raise ModelNotFound(_quoted(model or ""))
            raise BadRequest("model is required")
        if unloads(path, body) and names.match_key(model) is not None:
            return await self._unload(scope, receive, send, raw, model, path), model
        call = self._call(scope, raw, body, model, routed.api, routed.not_found(model), path)
        return await self.proxy.handle(call, receive, send), model

    async def _unload(
        self, scope: Scope, receive: Receive, send: Send, raw: bytes, model: str, path: str
    ) -> Result:
        """Unload ``model`` everywhere: every connected host is asked, as the inventory may lag a
        load by a poll (where the model is not loaded Ollama answers the same and does nothing;
        a host without it answers 404). The reply is one host's own."""
        headers = Headers(scope=scope)
        current = await self.inventory(self._labels(headers))
        node_id = headers.get("x-hops-node", "")
        targets = [n for n in current.nodes if not node_id or n.node_id == node_id]
        done = await self._on_each(scope, targets, path, raw)
        if not done:
            raise ModelNotFound(_quoted(model))
        reply = done[0][1]
        content_type = reply.headers.get("content-type", JSON_TYPE)
        await Response(reply.content, media_type=content_type)(scope, receive, send)
        return Result(status=200, outcome="ok", route=path, node=_ids([n for n, _ in done]))

    async def _pull(self, scope: Scope, receive: Receive, send: Send) -> tuple[Result, str]:
        raw, body = await self._json_body(scope, receive, "PullRequest")
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model.strip():
            raise BadRequest("model is required")
        call = self._call(
            scope, raw, body, model, router_pb2.API_KIND_PULL, _quoted(model), "/api/pull"
        )
        call.settle = self._settle_on(model)
        return await self.proxy.handle(call, receive, send), model

    async def _unknown_post(
        self, scope: Scope, receive: Receive, send: Send, path: str
    ) -> tuple[Result | None, str]:
        """A POST route the edge has no entry for (newer Ollama routes: /v1/responses,
        /v1/messages, /v1/audio/transcriptions, ...) goes to a host with the model it names;
        without a model, to the newest Ollama (_to_newest). The bytes go upstream as they
        came."""
        raw = await self._body(scope, receive)
        body = self._readable(scope, raw)
        model = body.get("model") if body is not None else None
        if not isinstance(model, str) or not model.strip():
            if path.startswith(NEWER_ROUTES):
                return await self._to_newest(scope, receive, send, raw), "-"
            return await _plain(scope, receive, send, 404), "-"
        call = self._call(
            scope, raw, body or {}, model, router_pb2.API_KIND_OTHER, _quoted(model), path
        )
        return await self.proxy.handle(call, receive, send), model

    async def _to_newest(self, scope: Scope, receive: Receive, send: Send, raw: bytes) -> Result:
        """A route under /api/ or /v1/ the edge has no entry for and that names no model (a
        newer Ollama's /api/status, /api/experimental/web_search, ...): the newest Ollama in
        the fleet answers it, so a route any host has works through the edge, and one none has
        gets a host's own 404. The next newest is tried as for any request: when one cannot be
        reached, or answers 5xx."""
        current = await self.inventory(self._labels(Headers(scope=scope)))
        nodes = inv.newest_first(current)[: self.settings.max_attempts]
        if not nodes:
            return await _plain(scope, receive, send, 404)
        targets = [Target(n.node_id, n.ollama_url, "newest", n.headers) for n in nodes]
        return await self.proxy.handle(self._plain_call(scope, raw), receive, send, targets)

    def _readable(self, scope: Scope, raw: bytes) -> dict[str, Any] | None:
        """What the edge can read of an unknown route's body to route it: a JSON object (after
        zstd decoding, as Codex compresses /v1/responses), or a multipart form's fields."""
        headers = Headers(scope=scope)
        boundary = bodies.boundary_of(headers.get("content-type", ""))
        try:
            if boundary is not None:
                fields = bodies.form_fields(raw, boundary, FORM_MODEL)
                return {k: v.decode("utf-8", errors="replace") for k, v in fields.items()}
            limit = min(bodies.ZSTD_LIMIT, self.settings.max_body)
            raw = bodies.decoded(raw, headers.get("content-encoding", ""), limit)
        except bodies.DecodedTooLarge as exc:
            raise BodyTooLarge(str(exc)) from None
        except bodies.BodyDecodeError as exc:
            raise BadRequest(str(exc)) from None
        try:
            body = json.loads(raw) if raw.strip() else None
        except (ValueError, RecursionError):
            return None
        return body if isinstance(body, dict) else None

    async def inventory(self, wanted: Labels = ()) -> inv.Inventory:
        """The freshest usable inventory, or ControlPlaneDown; only the hosts carrying
        ``wanted``, when given (see _labels)."""
        current = self.cp.inventory
        if current is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.cp.connected.wait(), self.settings.pick_timeout)
            current = self.cp.inventory
        fresh = self.cp.connected.is_set() or (
            time.monotonic() - self.cp.last_contact <= self.settings.fail_open_for
        )
        if current is None or not fresh:
            raise ControlPlaneDown(
                "control plane unreachable and no usable inventory", retry_after=2.0
            )
        return current.only(wanted)

    async def _fleet_read(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> Result:
        allowed = ("GET", "HEAD") if path in ("/", "/api/version", "/api/tags") else ("GET",)
        if method not in allowed:
            return await _plain(scope, receive, send, 405)
        if path == "/":
            await PlainTextResponse("Ollama is running")(scope, receive, send)
            return Result(status=200, outcome="ok", route=path)
        current = await self.inventory(self._labels(Headers(scope=scope)))
        match = V1_MODEL.fullmatch(path)
        status = 200
        if path == "/api/version":
            payload: Any = {"version": inv.lowest_version(current)}
        elif path == "/api/tags":
            payload = inv.tags(current)
        elif path == "/api/ps":
            payload = inv.ps(current)
        elif path == "/v1/models":
            payload = inv.openai_models(current)
        else:
            assert match is not None
            raw = match.group("model")
            payload = inv.openai_model(current, raw)
            if payload is None:
                raise ModelNotFound(f'model "{raw}" not found')
        await _json(payload, status)(scope, receive, send)
        return Result(status=status, outcome="ok", route=path)

    async def _fan_out(
        self, scope: Scope, receive: Receive, send: Send, path: str
    ) -> tuple[Result, str]:
        """/api/delete and /api/copy: apply to every host that has the model.

        Every connected host is asked (the inventory may lag a just-made copy by a poll); a 404
        from a host only means it had no such model. 404 overall when no host had it.
        """
        go_type = "DeleteRequest" if path == "/api/delete" else "CopyRequest"
        raw, body = await self._json_body(scope, receive, go_type)
        if path == "/api/delete":
            model = body.get("model") or body.get("name")
            if not isinstance(model, str) or not model:
                raise BadRequest("model is required")
            missing = f"model '{model}' not found"
        else:
            model = body.get("source")
            if not isinstance(model, str) or not model or not body.get("destination"):
                raise BadRequest("source and destination are required")
            missing = f'model "{model}" not found'
        headers = Headers(scope=scope)
        current = await self.inventory(self._labels(headers))
        node_id = headers.get("x-hops-node", "")
        targets = [n for n in current.nodes if not node_id or n.node_id == node_id]
        done = await self._on_each(scope, targets, path, raw)
        if not done:
            raise ModelNotFound(missing)
        made, gone = (body.get("destination"), False) if path == "/api/copy" else (model, True)
        await self._settled((n.node_id for n, _ in done), str(made), gone=gone)
        await Response(b"", status_code=200)(scope, receive, send)
        return Result(status=200, outcome="ok", route=path, node=_ids([n for n, _ in done])), model

    async def _on_each(
        self, scope: Scope, nodes: list[inv.InventoryNode], path: str, raw: bytes
    ) -> list[tuple[inv.InventoryNode, httpx.Response]]:
        """Send the request to every node at once; the nodes that answered 200, with their
        replies. A 404 only means that host has no such model; any other answer, or a host not
        reached or silent for FAN_OUT_TIMEOUT_S (these are bookkeeping on the host, not
        inference), fails the whole request, naming each host that failed."""
        headers = request_headers(scope["headers"])
        query = scope.get("query_string", b"").decode("latin-1")
        replies = await asyncio.gather(
            *(
                self.upstream.client.request(
                    scope["method"],
                    node.ollama_url.rstrip("/") + path + ("?" + query if query else ""),
                    content=raw,
                    headers=with_host_headers(headers, node.headers),
                    timeout=httpx.Timeout(FAN_OUT_TIMEOUT_S, connect=self.settings.connect_timeout),
                )
                for node in nodes
            ),
            return_exceptions=True,
        )
        done, failures = [], []
        for node, reply in zip(nodes, replies, strict=True):
            if isinstance(reply, httpx.HTTPError):
                failures.append(f"{node.node_id}: {type(reply).__name__}")
            elif isinstance(reply, BaseException):
                raise reply
            elif reply.status_code == 200:
                done.append((node, reply))
            elif reply.status_code != 404:
                failures.append(f"{node.node_id}: {reply.status_code} {reply.text[:200]}")
        if failures:
            raise EdgeError(f"{path} failed on {len(failures)} hosts: " + "; ".join(failures))
        return done

    async def _node_only(
        self, scope: Scope, receive: Receive, send: Send, path: str, method: str
    ) -> Result:
        """/api/create, /api/push and blobs belong to one host: the one named by X-Hops-Node, or,
        when none is named, the one (or, for a create, each one) that has what they need."""
        headers = Headers(scope=scope)
        node_id = headers.get("x-hops-node", "")
        wanted = self._labels(headers)
        current = await self.inventory(wanted)
        blob = BLOBS.fullmatch(path)
        if not node_id:
            if blob is not None:
                return await self._blob(scope, receive, send, current, blob.group("digest"))
            return await self._placed(scope, receive, send, path, current)
        node = next((n for n in current.nodes if n.node_id == node_id), None)
        if node is None:
            everywhere = self.cp.inventory
            if wanted and everywhere and any(n.node_id == node_id for n in everywhere.nodes):
                shown = labels.shown(wanted)
                raise ModelNotFound(f"node '{node_id}' does not carry the labels {shown}")
            raise ModelNotFound(f"node '{node_id}' is not connected")
        streamed = blob is not None and method == "POST"
        body: bytes | Any = StreamedBody(receive) if streamed else await self._body(scope, receive)
        target = Target(node.node_id, node.ollama_url, "x-hops-node", node.headers)
        call = self._plain_call(scope, body)
        if path == "/api/create" and isinstance(body, bytes):
            call.settle = self._settle_on(_created(body))
        return await self.proxy.handle(call, receive, send, [target])

    def _settle_on(self, model: str) -> Callable[[str], Awaitable[None]]:
        """A Call.settle: until ``model`` shows installed on the host that made it."""

        async def settle(node_id: str) -> None:
            await self._settled((node_id,), model)

        return settle

    async def _settled(self, node_ids: Iterable[str], model: str, *, gone: bool = False) -> None:
        """Wait, at most SETTLE_S, until the inventory shows ``model`` installed on every host
        in ``node_ids`` (``gone``: on none of them). Ollama answers a pull, create, copy or
        delete once it is done, and its clients go on at once (`ollama run` asks a show first,
        and pulls the model when the show is 404): they must find what they just made."""
        key = names.match_key(model)
        wanted = set(node_ids)
        if key is None or not wanted or not self.cp.connected.is_set():
            return  # no control plane: no inventory to wait for

        def shown(current: inv.Inventory) -> bool:
            return all(n.has(key) != gone for n in current.nodes if n.node_id in wanted)

        if not await self.cp.until(shown, SETTLE_S):
            log.warning(
                "model %s still %s in the inventory of %s after %.0fs",
                key,
                "listed" if gone else "missing",
                ",".join(sorted(wanted)),
                SETTLE_S,
            )

    def _plain_call(self, scope: Scope, body: bytes | Any) -> Call:
        """A request for hosts given by the edge, not picked: no lease, Ollama's errors."""
        return Call(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b""),
            headers=request_headers(scope["headers"]),
            body=body,
            model="-",
            api=0,
            route=scope["path"],
            dialect=OLLAMA,
            not_found="",
        )

    async def _blob(
        self, scope: Scope, receive: Receive, send: Send, current: inv.Inventory, digest: str
    ) -> Result:
        """HEAD: whether any host has the blob. POST: nothing to do if one has it, else it goes
        to the blob home, where the create that uses it will find it."""
        routable = [n for n in current.nodes if n.routable]
        holders = await placement.blob_holders(
            self.upstream.client, routable, digest, request_headers(scope["headers"])
        )
        method = scope["method"]
        if method == "HEAD" or holders:
            status = 200 if holders else 404
            await Response(b"", status_code=status)(scope, receive, send)
            return Result(status=status, outcome="ok", route=scope["path"], node=_ids(holders))
        home = placement.blob_home(current)
        if home is None:
            raise NoHealthyHost("no host can take the blob now", retry_after=2.0)
        target = Target(home.node_id, home.ollama_url, "blob-home", home.headers)
        call = self._plain_call(scope, StreamedBody(receive))
        return await self.proxy.handle(call, receive, send, [target])

    async def _placed(
        self, scope: Scope, receive: Receive, send: Send, path: str, current: inv.Inventory
    ) -> Result:
        """A create goes to every routable host that has its ``from`` model and blobs (one
        streams its progress; several are made one after another and answered together); a
        push to the first routable host that has the model."""
        go_type = "CreateRequest" if path == "/api/create" else "PushRequest"
        raw, body = await self._json_body(scope, receive, go_type)
        routable = [n for n in current.nodes if n.routable]
        if path == "/api/push":
            model = body.get("model") or body.get("name")
            key = names.match_key(model) if isinstance(model, str) else None
            targets = [n for n in routable if key and n.has(key)]
            if not targets:
                raise ModelNotFound(f"model '{model}' not found")
        else:
            targets = await self._create_targets(scope, body, routable)
        found = [Target(n.node_id, n.ollama_url, "has-model", n.headers) for n in targets]
        call = self._plain_call(scope, raw)
        if path == "/api/push":
            return await self.proxy.handle(call, receive, send, found)
        call.settle = self._settle_on(_created(raw))
        if len(found) == 1:
            return await self.proxy.handle(call, receive, send, found)
        return await self._create_on_each(scope, receive, send, raw, targets, call.settle)

    async def _create_targets(
        self, scope: Scope, body: dict[str, Any], routable: list[inv.InventoryNode]
    ) -> list[inv.InventoryNode]:
        source, digests = placement.create_needs(body)
        if source:
            routable = [n for n in routable if n.has(source)]
            if not routable:
                raise ModelNotFound(f"model '{body.get('from')}' not found")
        elif not digests:
            raise BadRequest("neither 'from' nor 'files' was specified")
        headers = request_headers(scope["headers"])
        for digest in digests:
            routable = await placement.blob_holders(self.upstream.client, routable, digest, headers)
        if not routable:
            raise BadRequest(
                "no host has every blob this model is made from (upload them first, or name "
                "the host that has them with X-Hops-Node)"
            )
        return routable

    async def _create_on_each(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw: bytes,
        nodes: list[inv.InventoryNode],
        settle: Callable[[str], Awaitable[None]],
    ) -> Result:
        """The same create on several hosts, one after another; the client gets the first
        host's answer if every host succeeded (once the inventory shows the model on each, by
        ``settle``), else an error naming those that failed. A client that leaves stops it: the
        host creating now sees its request closed, the rest are not asked."""
        headers = request_headers(scope["headers"])

        async def make_each() -> tuple[list[httpx.Response], list[str]]:
            answers, failures = [], []
            for node in nodes:
                try:
                    response = await self.upstream.client.post(
                        node.ollama_url.rstrip("/") + "/api/create",
                        content=raw,
                        headers=with_host_headers(headers, node.headers),
                    )
                except httpx.HTTPError as exc:
                    failures.append(f"{node.node_id}: {type(exc).__name__}")
                    continue
                error = placement.progress_error(response)
                if error:
                    failures.append(f"{node.node_id}: {error}")
                else:
                    answers.append(response)
            if not failures:
                await asyncio.gather(*(settle(node.node_id) for node in nodes))
            return answers, failures

        work = asyncio.ensure_future(make_each())
        gone = asyncio.ensure_future(wait_disconnect(receive))  # the body is read: only a leave
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
        if work.cancelled():
            return Result(outcome="client_cancelled", route="/api/create", node=_ids(nodes))
        answers, failures = work.result()
        if failures:
            raise EdgeError(
                f"create failed on {len(failures)} of {len(nodes)} hosts: " + "; ".join(failures)
            )
        first = answers[0]
        await Response(
            first.content,
            status_code=first.status_code,
            media_type=first.headers.get("content-type"),
        )(scope, receive, send)
        return Result(status=first.status_code, outcome="ok", route="/api/create", node=_ids(nodes))

    def _log(self, method: str, path: str, model: str, result: Result, elapsed: float) -> None:
        log.info(
            "request method=%s path=%s model=%s node=%s status=%s ttfb_ms=%.1f duration_ms=%.1f "
            "attempts=%d outcome=%s route=%s",
            method,
            path,
            model,
            result.node,
            result.status,
            result.ttfb * 1000,
            elapsed * 1000,
            result.attempts,
            result.outcome,
            ";".join(result.reasons) or "-",
        )
        route = _route_label(path)
        # A name no host has is the client's to make up: one label for all of them.
        shown = model if result.status != 404 else "-"
        self.metrics.requests.labels(route, shown, result.node, str(result.status)).inc()
        if result.ttfb:
            self.metrics.ttfb.labels(route).observe(result.ttfb)
        self.metrics.duration.labels(route).observe(elapsed)


def _ids(nodes: list[inv.InventoryNode]) -> str:
    return ",".join(n.node_id for n in nodes) or "-"


def _route_label(path: str) -> str:
    """The route as a metrics label: a known route, else "other" (a label per path a client
    makes up would grow the metrics without bound)."""
    if path in KNOWN_ROUTES:
        return path
    if BLOBS.fullmatch(path):
        return "/api/blobs/{digest}"
    if V1_MODEL.fullmatch(path):
        return "/v1/models/{model}"
    return "other"


def _json(payload: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(payload, separators=(",", ":")).encode(),
        status_code=status,
        media_type=JSON_TYPE,
    )


async def _preflight(scope: Scope, receive: Receive, send: Send, origin: str) -> Result:
    await cors.preflight(origin, "X-Hops-Session,X-Hops-Node,X-Hops-Labels")(scope, receive, send)
    return Result(status=204, outcome="ok", route=scope["path"])


def _with_origin(send: Send, origin: str) -> Send:
    """``send`` adding the allowed origin to the response headers, and letting the page's script
    read X-Hops-Node and X-Hops-Route."""
    return cors.adding(send, [*cors.allowed_origin_headers(origin), EXPOSE_HEADERS])


def _created(raw: bytes) -> str:
    """The model a create request makes ("" when its body names none)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return ""
    model = body.get("model") or body.get("name") if isinstance(body, dict) else ""
    return model if isinstance(model, str) else ""


async def _plain(scope: Scope, receive: Receive, send: Send, status: int) -> Result:
    text = "404 page not found" if status == 404 else "405 method not allowed"
    await PlainTextResponse(text, status_code=status)(scope, receive, send)
    return Result(status=status, outcome="rejected", route=scope["path"])
