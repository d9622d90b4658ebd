"""The simulator's ASGI application: Ollama's route table with its exact 404/405 fallbacks, error
mapping in one place, and the /_sim control routes."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from hopscommon import cors
from ollamasim import control, create, native, newer_api, openai_api
from ollamasim.errors import SimError
from ollamasim.host import Host
from ollamasim.settings import SimSettings
from ollamasim.wire import ClientGone, error_response

Handler = Callable[[Request, Host], Awaitable[Response]]
ErrorShape = Callable[[int, str], Response]
log = logging.getLogger("ollamasim")


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    error: ErrorShape = error_response  # the API's error shape: Ollama's, OpenAI's, Anthropic's
    control: bool = False


OPENAI = openai_api.openai_error


def _table() -> dict[str, dict[str, Route]]:
    get_head = ("GET", "HEAD")
    table: dict[str, dict[str, Route]] = {
        "/": {m: Route(native.root) for m in get_head},
        "/api/version": {m: Route(native.version) for m in get_head},
        "/api/status": {"GET": Route(native.status)},
        "/api/tags": {m: Route(native.tags) for m in get_head},
        "/api/ps": {"GET": Route(native.ps)},
        "/api/show": {"POST": Route(native.show)},
        "/api/generate": {"POST": Route(native.generate)},
        "/api/chat": {"POST": Route(native.chat)},
        "/api/embed": {"POST": Route(native.embed)},
        "/api/embeddings": {"POST": Route(native.embeddings)},
        "/api/pull": {"POST": Route(native.pull)},
        "/api/delete": {"DELETE": Route(native.delete)},
        "/api/copy": {"POST": Route(native.copy)},
        "/api/create": {"POST": Route(create.create)},
        "/v1/chat/completions": {"POST": Route(openai_api.chat_completions, OPENAI)},
        "/v1/completions": {"POST": Route(openai_api.completions, OPENAI)},
        "/v1/embeddings": {"POST": Route(openai_api.embeddings, OPENAI)},
        "/v1/models": {"GET": Route(openai_api.models, OPENAI)},
        "/v1/responses": {"POST": Route(newer_api.responses, OPENAI)},
        "/v1/audio/transcriptions": {"POST": Route(newer_api.transcriptions, OPENAI)},
        "/v1/messages": {"POST": Route(newer_api.messages, newer_api.anthropic_error)},
        "/_sim/stats": {"GET": Route(control.stats, control=True)},
        "/_sim/stats/reset": {"POST": Route(control.reset_stats, control=True)},
        "/_sim/config": {"GET": Route(control.config, control=True)},
        "/_sim/fault": {
            "GET": Route(control.get_fault, control=True),
            "PUT": Route(control.put_fault, control=True),
            "DELETE": Route(control.delete_fault, control=True),
        },
    }
    return table


_PATTERNS: list[tuple[re.Pattern[str], dict[str, Route]]] = [
    (re.compile(r"/v1/models/(?P<model>[^/]+)"), {"GET": Route(openai_api.model, OPENAI)}),
    (
        re.compile(r"/api/blobs/(?P<digest>[^/]+)"),
        {"HEAD": Route(create.blob_exists), "POST": Route(create.upload_blob)},
    ),
]


class SimApp:
    """ASGI app for one simulated host. ``control_port``, when set, serves only /_sim routes."""

    def __init__(self, settings: SimSettings) -> None:
        self.host = Host(settings)
        self.routes = _table()
        self.control_port: int | None = None
        self.origins = cors.Origins.with_extra(settings.origins)
        self.check_host = _loopback(settings.listen[0])

    def _resolve(self, path: str) -> tuple[dict[str, Route] | None, dict[str, str]]:
        methods = self.routes.get(path)
        if methods is not None:
            return methods, {}
        for pattern, table in _PATTERNS:
            match = pattern.fullmatch(path)
            if match:
                return table, match.groupdict()
        return None, {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.startswith("/_sim/"):
            checked = await self._browser_checks(scope, receive, send)
            if checked is None:
                return
            send = checked
        methods, params = self._resolve(path)
        on_control_port = (
            self.control_port is not None
            and (scope.get("server") or (None, 0))[1] == self.control_port
        )
        if methods is None or (on_control_port and not path.startswith("/_sim/")):
            response: Response = PlainTextResponse("404 page not found", status_code=404)
            await response(scope, receive, send)
            return
        route = methods.get(scope["method"])
        if route is None:
            response = PlainTextResponse("405 method not allowed", status_code=405)
            await response(scope, receive, send)
            return
        scope["path_params"] = params
        request = Request(scope, receive)
        if not route.control:
            self.host.stats.requests[path if not params else path.rsplit("/", 1)[0] + "/{}"] += 1
        try:
            response = await route.handler(request, self.host)
        except SimError as exc:
            response = route.error(exc.status, exc.message)
        except ClientGone:
            response = Response(b"", status_code=499)  # nobody is listening; Ollama logs 499
        await response(scope, receive, send)

    async def _browser_checks(self, scope: Scope, receive: Receive, send: Send) -> Send | None:
        """Ollama's CORS and Host checks, in its order: None when they answered the request,
        else the ``send`` to answer it with (adding the allowed origin to the headers)."""
        origin, host = cors.origin_and_host(scope["headers"])
        if origin and not self.origins.allows(origin):
            await Response(b"", status_code=403)(scope, receive, send)
            return None
        if origin and scope["method"] == "OPTIONS":
            await cors.preflight(origin)(scope, receive, send)
            return None
        if self.check_host and not cors.local_host(host):
            await Response(b"", status_code=403)(scope, receive, send)
            return None
        return cors.adding(send, cors.allowed_origin_headers(origin)) if origin else send


def _loopback(host: str) -> bool:
    """Whether the API listens on loopback only, where Ollama checks the Host header."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_app(settings: SimSettings) -> SimApp:
    return SimApp(settings)
