"""The edge's end of a control plane's route socket (controlplane/route_socket.py): the Route
stream's messages as frames on one TCP connection, behind the same small surface as a gRPC
stream-stream call (``write``, async iteration, ``cancel``), so RouteStream drives either."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from hops.v1 import router_pb2

from hopscommon import frames


class SocketRefused(Exception):
    """The control plane would not open a route socket for this edge."""


class SocketCall:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, hello: router_pb2.RouteHello) -> SocketCall:
        """Connect and say hello; raises OSError, FrameError or SocketRefused (the caller bounds
        the time)."""
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(frames.encode(hello))
            welcome = await frames.read(reader, router_pb2.RouteWelcome)
        except BaseException:  # cancelled by the caller's timeout, too: never leave it open
            writer.close()
            raise
        if welcome is None or welcome.error:
            writer.close()
            raise SocketRefused(welcome.error if welcome else "closed before its welcome")
        return cls(reader, writer)

    async def write(self, request: router_pb2.RouteRequest) -> None:
        self.writer.write(frames.encode(request))
        await self.writer.drain()

    def __aiter__(self) -> AsyncIterator[router_pb2.RouteResponse]:
        return self._responses()

    async def _responses(self) -> AsyncIterator[router_pb2.RouteResponse]:
        while (response := await frames.read(self.reader, router_pb2.RouteResponse)) is not None:
            yield response

    def cancel(self) -> bool:
        with contextlib.suppress(RuntimeError):  # the loop is already closing
            self.writer.close()
        return True
