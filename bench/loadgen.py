"""A cheap HTTP/1.1 load generator for streaming endpoints (raw asyncio sockets, no client library),
so that on a 2-core machine the generator costs far less CPU than the server it measures."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class StreamResult:
    status: int = 0
    chunks: int = 0
    done: bool = False
    error: str = ""
    ttfb: float = 0.0
    total: float = 0.0


@dataclass
class RunSummary:
    results: list[StreamResult] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def chunks(self) -> int:
        return sum(r.chunks for r in self.results)

    @property
    def errors(self) -> int:
        return sum(1 for r in self.results if r.error or r.status != 200 or not r.done)


async def stream_once(
    url: str,
    path: str,
    body: Mapping[str, object],
    under_way: Callable[[], None] | None = None,
) -> StreamResult:
    """POST ``body`` and read an NDJSON stream to the end, counting chunks (``"done":`` keys).
    ``under_way`` is called once, when the first body bytes (the first token) arrive."""
    parts = urlsplit(url)
    result = StreamResult()
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {parts.hostname}:{parts.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + payload
    start = time.perf_counter()
    try:
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    except OSError as exc:
        result.error = f"connect: {exc}"
        return result
    try:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        result.ttfb = time.perf_counter() - start
        result.status = int(head.split(b" ", 2)[1])
        tail = b""
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if under_way is not None:
                under_way()
                under_way = None
            window = tail + data
            result.chunks += window.count(b'"done":false')
            if b'"done":true' in window:
                result.done = True
            tail = data[-16:]
            # a marker split across reads is counted once: drop matches fully inside the tail
            result.chunks -= tail.count(b'"done":false')
        result.chunks += tail.count(b'"done":false')
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        writer.close()
    result.total = time.perf_counter() - start
    return result


async def run_streams(
    url: str, path: str, body: Mapping[str, object], concurrency: int, total: int
) -> RunSummary:
    """``total`` streams, ``concurrency`` open at once."""
    summary = RunSummary()
    queue = iter(range(total))

    async def worker() -> None:
        for _ in queue:
            summary.results.append(await stream_once(url, path, body))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    summary.elapsed = time.perf_counter() - start
    return summary
