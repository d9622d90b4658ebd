"""The edge's ASGI application: Ollama's route table over the fleet.

Routed requests (the body names a model) go through the Proxy; fleet-wide reads are answered from
the control plane's inventory; model management fans out to the hosts concerned (edge.management).
Plain ASGI on the hot path: the body is read once (size-capped), only what routing needs is
looked at (edge.reading), and the bytes go upstream unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hops.v1 import router_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import Headers
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from edge import inventory as inv
from edge.auth import Forbidden
from edge.cpclient import ControlPlaneClient
from edge.errors import (
    JSON_TYPE,
    BadRequest,
    BodyTooLarge,
    ControlPlaneDown,
    EdgeError,
    ModelNotFound,
    dialect_of,
    error_response,
)
from edge.management import BLOBS, Management
from edge.metrics import EdgeMetrics
from edge.proxy import EMBEDDING_APIS, Call, Proxy, Result, Target
from edge.reading import (
    RequestReader,
    longest_input,
    max_reply,
    num_ctx,
    prompt_tokens,
    session_key,
    unloads,
)
from edge.settings import EdgeSettings
from edge.upstream import Upstream, request_headers
from hopscommon import bodies, cors, names
from hopscommon.labels import Labels
from hopscommon.runner_options import runner_options

log = logging.getLogger("hops.edge")
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
V1_MODEL = re.compile(r"/v1/models/(?P<model>[^/]+)")


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
        self.metrics = metrics
        self.proxy = Proxy(settings, cp, upstream, metrics)
        self.reader = RequestReader(settings)
        self.management = Management(
            settings, cp, upstream, self.proxy, self.reader, self.inventory
        )
        self.keys = settings.key_check()
        self.origins = cors.Origins.with_extra(settings.origins)

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
            return await self.management.fan_out(scope, receive, send, path)
        if path in NODE_ONLY or BLOBS.fullmatch(path):
            allowed = (NODE_ONLY[path],) if path in NODE_ONLY else ("HEAD", "POST")
            if method not in allowed:
                return await _plain(scope, receive, send, 405), "-"
            return await self.management.node_only(scope, receive, send, path, method), "-"
        if method == "POST":
            return await self._unknown_post(scope, receive, send, path)
        if path.startswith(NEWER_ROUTES):
            return await self._to_newest(scope, receive, send, b""), "-"
        return await _plain(scope, receive, send, 404), "-"

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
            labels=self.reader.labels_of(headers),
            prompt_tokens=prompt_tokens(body),
            longest_input=longest_input(body) if api in EMBEDDING_APIS else 0,
            max_reply=max_reply(body, native) if api not in EMBEDDING_APIS else 0,
            num_ctx=num_ctx(body) if native else 0,
            runner_options=runner_options(body.get("options")) if native else (),
        )

    async def _routed(
        self, scope: Scope, receive: Receive, send: Send, routed: Routed, path: str
    ) -> tuple[Result, str]:
        raw, body = await self.reader.json_body(scope, receive, routed.go_type)
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
            return await self.management.unload(scope, receive, send, raw, model, path), model
        call = self._call(scope, raw, body, model, routed.api, routed.not_found(model), path)
        return await self.proxy.handle(call, receive, send), model

    async def _pull(self, scope: Scope, receive: Receive, send: Send) -> tuple[Result, str]:
        raw, body = await self.reader.json_body(scope, receive, "PullRequest")
        model = body.get("model") or body.get("name")
        if not isinstance(model, str) or not model.strip():
            raise BadRequest("model is required")
        call = self._call(
            scope, raw, body, model, router_pb2.API_KIND_PULL, _quoted(model), "/api/pull"
        )
        call.settle = self.management.settle_on(model)
        return await self.proxy.handle(call, receive, send), model

    async def _unknown_post(
        self, scope: Scope, receive: Receive, send: Send, path: str
    ) -> tuple[Result | None, str]:
        """A POST route the edge has no entry for (newer Ollama routes: /v1/responses,
        /v1/messages, /v1/audio/transcriptions, ...) goes to a host with the model it names;
        without a model, to the newest Ollama (_to_newest). The bytes go upstream as they
        came."""
        raw = await self.reader.body(scope, receive)
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
        current = await self.inventory(self.reader.labels_of(Headers(scope=scope)))
        nodes = inv.newest_first(current)[: self.settings.max_attempts]
        if not nodes:
            return await _plain(scope, receive, send, 404)
        targets = [Target(n.node_id, n.ollama_url, "newest", n.headers) for n in nodes]
        return await self.proxy.handle(Call.given(scope, raw), receive, send, targets)

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
        ``wanted``, when given (see RequestReader.labels_of)."""
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
        current = await self.inventory(self.reader.labels_of(Headers(scope=scope)))
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


async def _plain(scope: Scope, receive: Receive, send: Send, status: int) -> Result:
    text = "404 page not found" if status == 404 else "405 method not allowed"
    await PlainTextResponse(text, status_code=status)(scope, receive, send)
    return Result(status=status, outcome="rejected", route=scope["path"])
