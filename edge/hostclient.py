"""A minimal HTTP/1.1 client for the edge's hot path: POST a body to a host, stream the response.

Why not httpx here: its connection pool rescans every pooled connection (and polls each socket)
on every request, which made the pool, not the proxying, the edge's main CPU cost under
concurrency (bench/README.md). This client keeps idle keep-alive connections per host in a list
(LIFO, O(1) take and give back), parses responses with httptools (the parser uvicorn uses), and
hands body bytes over as they arrive, coalescing whatever is queued into one chunk. Failures are
raised as httpx's exception types, so the proxy keeps one failure taxonomy for both clients.

Only what the proxy needs: a bytes body (Content-Length), a streamed response, connect and
first-byte timeouts, back-pressure, and one transparent retry when a pooled connection turns out
to have been closed by the host before it answered anything.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools
import httpx

HIGH_WATER = 1024 * 1024  # pause reading from the host when this much is waiting
LOW_WATER = 256 * 1024
MAX_IDLE_PER_HOST = 512


class _Connection(asyncio.Protocol):
    """One TCP connection to a host; one request at a time."""

    def __init__(self, key: tuple[str, str, int]) -> None:
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = 0.0
        self._reset()

    def _reset(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.keep_alive = False
        self.complete = False
        self.received_any = False
        self.error: Exception | None = None
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.paused = False
        self.headers_ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiter: asyncio.Future[None] | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            self._fail(
                httpx.ReadError(f"connection lost: {exc}")
                if exc
                else httpx.RemoteProtocolError("server disconnected without a complete response")
            )

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        self.keep_alive = self.parser.should_keep_alive()
        if not self.headers_ready.done():
            self.headers_ready.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.paused and self.transport is not None:
            self.transport.pause_reading()
            self.paused = True
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

    def _fail(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        if not self.headers_ready.done():
            self.headers_ready.set_exception(error)
            self.headers_ready.exception()  # retrieved: no "never retrieved" warning
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def reusable(self) -> bool:
        return (
            self.complete
            and self.keep_alive
            and self.error is None
            and not self.closed
            and self.transport is not None
            and not self.transport.is_closing()
        )


class HostHeaders:
    """The slice of httpx.Headers the proxy uses: raw pairs and a case-insensitive get."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    def get(self, name: str, default: str = "") -> str:
        wanted = name.lower().encode("latin-1")
        for k, v in self.raw:
            if k.lower() == wanted:
                return v.decode("latin-1")
        return default


class HostResponse:
    """A response whose body is read as it arrives; aclose() gives the connection back."""

    def __init__(self, connection: _Connection, client: HostClient) -> None:
        self._conn = connection
        self._client = client
        self.status_code = connection.status
        self.headers = HostHeaders(connection.raw_headers)
        self._released = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        loop = asyncio.get_running_loop()
        while True:
            if conn.body:
                chunk = conn.body.popleft() if len(conn.body) == 1 else b"".join(conn.body)
                conn.body.clear()
                conn.buffered = 0
                if conn.paused and conn.transport is not None:
                    conn.transport.resume_reading()
                    conn.paused = False
                yield chunk
            elif conn.complete:
                return
            elif conn.error is not None:
                raise conn.error
            else:
                conn.waiter = loop.create_future()
                try:
                    await conn.waiter
                finally:
                    conn.waiter = None

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        if not self._released:
            self._released = True
            self._client.release(self._conn)


class HostClient:
    def __init__(self, connect_timeout: float, first_byte_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.first_byte_timeout = first_byte_timeout
        self.idle_expiry = 30.0
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl: ssl.SSLContext | None = None

    async def close(self) -> None:
        for connections in self._idle.values():
            for conn in connections:
                conn.close()
        self._idle.clear()

    def release(self, conn: _Connection) -> None:
        if not conn.reusable():
            conn.close()
            return
        idle = self._idle.setdefault(conn.key, [])
        if len(idle) >= MAX_IDLE_PER_HOST:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def _take(self, key: tuple[str, str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        cutoff = time.monotonic() - self.idle_expiry
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if conn.closed or transport is None or transport.is_closing():
                continue
            if conn.idle_since < cutoff or conn.error is not None:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, key: tuple[str, str, int]) -> _Connection:
        scheme, host, port = key
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(key), host, port, ssl=context
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connect to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(f"connect to {host}:{port}: {exc}") from None
        return protocol

    async def post(
        self,
        base_url: str,
        path: str,
        query: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> HostResponse:
        """Send; return once the response's headers arrived (the body is read by the caller)."""
        parts = urlsplit(base_url)
        scheme = parts.scheme or "http"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if scheme == "https" else 80)
        key = (scheme, host, port)
        target = (parts.path.rstrip("/") + path).encode("latin-1")
        if query:
            target += b"?" + query
        authority = parts.netloc.rpartition("@")[2].encode("latin-1")
        head = [b"POST ", target, b" HTTP/1.1\r\nHost: ", authority, b"\r\n"]
        for k, v in headers:
            head += [k, b": ", v, b"\r\n"]
        head += [b"Content-Length: ", str(len(body)).encode(), b"\r\n\r\n", body]
        message = b"".join(head)
        conn = self._take(key)
        if conn is not None:
            try:
                return await self._exchange(conn, message)
            except (httpx.RemoteProtocolError, httpx.ReadError):
                if conn.received_any:
                    raise
                # A pooled connection the host had already closed: nothing reached it.
        return await self._exchange(await self._connect(key), message)

    async def _exchange(self, conn: _Connection, message: bytes) -> HostResponse:
        conn._reset()
        assert conn.transport is not None
        conn.transport.write(message)
        try:
            async with asyncio.timeout(self.first_byte_timeout):
                await conn.headers_ready
        except TimeoutError:
            conn.close()
            raise httpx.ReadTimeout(f"no response within {self.first_byte_timeout:.0f}s") from None
        except BaseException:
            conn.close()
            raise
        return HostResponse(conn, self)
