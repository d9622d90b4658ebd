"""The edge's lean upstream client against raw loopback servers that misbehave on purpose."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from edge.hostclient import HostClient

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


@contextlib.asynccontextmanager
async def server(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A loopback server; yields its URL and a list that counts accepted connections."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with srv:
        yield f"http://127.0.0.1:{port}", accepted


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await reader.readexactly(length)


async def post(client: HostClient, url: str, body: bytes = b"{}") -> tuple[int, bytes]:
    response = await client.post(url, "/api/generate", b"", [(b"x-test", b"1")], body)
    try:
        return response.status_code, await response.aread()
    finally:
        await response.aclose()


async def test_keep_alive_connections_are_reused_and_requests_sent_as_given() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            seen.append(await read_request(reader))
            writer.write(OK)

    async with server(handler) as (url, accepted):
        client = HostClient(1.0, 5.0)
        for _ in range(3):
            assert await post(client, url, b'{"model":"m"}') == (200, b"{}")
        await client.close()
    assert len(accepted) == 1
    host = url.removeprefix("http://").encode()
    assert seen[0] == (
        b"POST /api/generate HTTP/1.1\r\nHost: " + host + b"\r\nx-test: 1\r\n"
        b"Content-Length: 13\r\n\r\n" + b'{"model":"m"}'
    )


async def test_a_pooled_connection_the_host_closed_is_replaced_transparently() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)  # keep-alive promised, then the host closes it anyway
        await writer.drain()

    async with server(handler) as (url, accepted):
        client = HostClient(1.0, 5.0)
        assert await post(client, url) == (200, b"{}")
        await asyncio.sleep(0.05)  # the close reaches us (or not yet: both must work)
        assert await post(client, url) == (200, b"{}")
        await client.close()
    assert len(accepted) == 2


async def test_a_streamed_body_arrives_whole_in_order() -> None:
    parts = [b'{"response":"%d","done":false}\n' % i for i in range(200)]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n")
        writer.write(b"Transfer-Encoding: chunked\r\n\r\n")
        for part in parts:
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
            await writer.drain()
        writer.write(b"0\r\n\r\n")

    async with server(handler) as (url, _):
        client = HostClient(1.0, 5.0)
        response = await client.post(url, "/api/generate", b"", [], b"{}")
        assert response.headers.get("content-type") == "application/x-ndjson"
        assert await response.aread() == b"".join(parts)
        await response.aclose()
        await client.close()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", httpx.RemoteProtocolError),
        (b"", httpx.RemoteProtocolError),  # closed before answering, on a fresh connection
    ],
)
async def test_broken_answers_raise_the_proxy_taxonomy(
    reply: bytes, error: type[Exception]
) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(reply)

    async with server(handler) as (url, _):
        client = HostClient(1.0, 5.0)
        with pytest.raises(error):
            await post(client, url)
        await client.close()


async def test_cut_mid_body_is_an_error_not_a_short_body() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-ten!!")

    async with server(handler) as (url, _):
        client = HostClient(1.0, 5.0)
        response = await client.post(url, "/api/generate", b"", [], b"{}")
        with pytest.raises(httpx.RemoteProtocolError):
            await response.aread()
        await response.aclose()
        await client.close()


async def test_refused_and_silent_hosts() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)  # never answers; the client gives up first

    async with server(silent) as (url, _):
        client = HostClient(1.0, 0.2)
        with pytest.raises(httpx.ReadTimeout):
            await post(client, url)
        await client.close()
    with pytest.raises(httpx.ConnectError):
        await post(HostClient(1.0, 1.0), url)  # the server is gone: refused
