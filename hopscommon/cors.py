"""Ollama's browser-facing checks, shared by the edge (which must answer browsers as Ollama does)
and the simulator (which must refuse what Ollama refuses).

Origins: a request with an ``Origin`` header is allowed when the origin is the server itself, one
of Ollama's defaults (localhost and loopback on any port, ``app://``, ``file://``, ``tauri://``,
VS Code webviews) or one added with ``OLLAMA_ORIGINS`` (``*`` wildcards); any other gets 403
with an empty body. An ``OPTIONS`` request from an allowed origin is a preflight: 204 with the
allowed methods and headers. Other allowed requests get ``Access-Control-Allow-Origin`` back.

Hosts: a server listening on loopback accepts only local ``Host`` values (loopback, private or
unspecified addresses, ``localhost``, this machine's name, ``*.localhost``, ``*.local``,
``*.internal``), against DNS rebinding; any other gets 403 with an empty body.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.responses import Response
from starlette.types import Message, Send

DEFAULT_ORIGINS: tuple[str, ...] = (
    *(
        f"{scheme}://{host}{port}"
        for host in ("localhost", "127.0.0.1", "0.0.0.0")
        for port in ("", ":*")
        for scheme in ("http", "https")
    ),
    "app://*",
    "file://*",
    "tauri://*",
    "vscode-webview://*",
    "vscode-file://*",
)
ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
ALLOW_HEADERS = ",".join(
    (
        "Authorization",
        "Content-Type",
        "User-Agent",
        "Accept",
        "X-Requested-With",
        # OpenAI's clients
        "OpenAI-Beta",
        "x-stainless-arch",
        "x-stainless-async",
        "x-stainless-custom-poll-interval",
        "x-stainless-helper-method",
        "x-stainless-lang",
        "x-stainless-os",
        "x-stainless-package-version",
        "x-stainless-poll-helper",
        "x-stainless-retry-count",
        "x-stainless-runtime",
        "x-stainless-runtime-version",
        "x-stainless-timeout",
    )
)
MAX_AGE_S = 12 * 3600
LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


@dataclass(frozen=True, slots=True)
class Origins:
    """The origins a server answers, as ``OLLAMA_ORIGINS`` plus Ollama's defaults."""

    patterns: tuple[str, ...] = DEFAULT_ORIGINS

    @classmethod
    def with_extra(cls, extra: Iterable[str]) -> Origins:
        added = tuple(o.strip().lower() for o in extra if o.strip())
        return cls(added + DEFAULT_ORIGINS)

    def allows(self, origin: str) -> bool:
        origin = origin.lower()
        return any(_matches(pattern, origin) for pattern in self.patterns)


def origin_and_host(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str]:
    """From a request's (ASGI) headers: the origin of a cross-origin request, "" when there is
    none (no ``Origin``, or the server's own page), and the ``Host`` it was sent to."""
    origin = host = ""
    for key, value in headers:
        if key == b"origin":
            origin = value.decode("latin-1")
        elif key == b"host":
            host = value.decode("latin-1")
    if origin.lower() in (f"http://{host.lower()}", f"https://{host.lower()}"):
        origin = ""
    return origin, host


def adding(send: Send, headers: list[tuple[bytes, bytes]]) -> Send:
    """``send`` with ``headers`` added to the response's."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *headers]}
        await send(message)

    return sending


def _matches(pattern: str, origin: str) -> bool:
    """Exact, or with one ``*`` standing for any text (gin-contrib/cors wildcards)."""
    head, star, tail = pattern.partition("*")
    if not star:
        return origin == pattern
    long_enough = len(origin) >= len(head) + len(tail)
    return long_enough and origin.startswith(head) and origin.endswith(tail)


def preflight(origin: str, more_headers: str = "") -> Response:
    """The answer to an allowed origin's preflight: 204 with what it may send (Ollama's request
    headers, and ``more_headers``, comma-separated)."""
    allowed = f"{ALLOW_HEADERS},{more_headers}" if more_headers else ALLOW_HEADERS
    response = Response(b"", status_code=204)
    response.raw_headers.extend(
        [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-allow-methods", ALLOW_METHODS.encode()),
            (b"access-control-allow-headers", allowed.encode()),
            (b"access-control-max-age", str(MAX_AGE_S).encode()),
            (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"),
        ]
    )
    return response


def allowed_origin_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


def local_host(host_header: str) -> bool:
    """Whether a loopback server accepts this ``Host`` (Ollama's allowedHostsMiddleware)."""
    host = host_header
    if host.startswith("["):  # [::1]:11434
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    host = host.lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return address.is_loopback or address.is_private or address.is_unspecified
    if host in ("", "localhost") or host == socket.gethostname().lower():
        return True
    return host.endswith(LOCAL_SUFFIXES)
