"""Talking to hosts: one pooled httpx.AsyncClient, header hygiene, and the failure taxonomy.

Requests are sent with the body bytes exactly as the client sent them; the host's own address goes
in ``Host`` (Ollama on loopback answers other Host values with an empty 403), hop-by-hop headers
and a browser's ``Origin`` are dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass

import httpx

from edge.hostclient import HostClient, HostHeaders, HostResponse
from edge.settings import EdgeSettings

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "origin",
        "expect",  # the edge has the whole body; an interim 100 from the host would confuse
        "x-hops-node",
        "x-hops-session",
    }
)
RESPONSE_DROP = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "upgrade",
        "trailer",
        "date",
        "server",
    }
)


def request_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in raw if k.lower().decode("latin-1") not in HOP_BY_HOP]


def with_host_headers(
    headers: list[tuple[bytes, bytes]], host: tuple[tuple[bytes, bytes], ...]
) -> list[tuple[bytes, bytes]]:
    """The client's headers with the host's own (lower-case names) replacing same-named ones."""
    if not host:
        return headers
    names = {k for k, _ in host}
    return [(k, v) for k, v in headers if k.lower() not in names] + list(host)


@dataclass(slots=True)
class ReadReply:
    """A 5xx reply read whole before anything went to the client, relayed as it came."""

    status_code: int
    headers: httpx.Headers | HostHeaders
    body: bytes
    upstream: httpx.Response | HostResponse

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        yield self.body

    async def aclose(self) -> None:
        await self.upstream.aclose()


Reply = httpx.Response | HostResponse | ReadReply  # what a host answered, as relayed


def response_headers(response: Reply) -> list[tuple[bytes, bytes]]:
    return [
        (k, v) for k, v in response.headers.raw if k.lower().decode("latin-1") not in RESPONSE_DROP
    ]


class Upstream:
    """The edge's one HTTP client to every host."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(
                connect=settings.connect_timeout,
                read=settings.first_byte_timeout,
                write=settings.first_byte_timeout,
                pool=settings.connect_timeout,
            ),
            limits=httpx.Limits(
                max_connections=None, max_keepalive_connections=2000, keepalive_expiry=30.0
            ),
            follow_redirects=False,
        )

        # Routed POSTs (the hot path) go through the lean client; the rest through httpx.
        self.fast = HostClient(settings.connect_timeout, settings.first_byte_timeout)

    async def close(self) -> None:
        await self.fast.close()
        await self.client.aclose()

    async def send(
        self,
        base_url: str,
        method: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes | AsyncIterator[bytes],
    ) -> httpx.Response | HostResponse:
        """Send and return once response headers arrive (the body is read by the caller).

        Raises httpx.TransportError subclasses: ConnectError/ConnectTimeout (not reached),
        ReadTimeout (no first byte in time), RemoteProtocolError/ReadError (dropped).
        """
        if method == "POST" and isinstance(body, bytes):
            return await self.fast.post(base_url, path, query, headers, body)
        url = base_url.rstrip("/") + path + (("?" + query.decode("latin-1")) if query else "")
        request = self.client.build_request(method, url, headers=headers, content=body)
        return await self.client.send(request, stream=True)
