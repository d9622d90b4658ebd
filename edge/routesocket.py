"""The edge's end of a control plane's route socket (controlplane/route_socket.py): the Route
stream's messages as frames on one TCP connection, written as they are made and handled as
their bytes arrive, with no task in between (routestreams.SocketRouteStream drives it)."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import cast

from google.protobuf.message import DecodeError
from hops.v1 import router_pb2

from hopscommon import frames

log = logging.getLogger("hops.edge")
MAX_UNSENT = 16 * 1024 * 1024  # calls the control plane has not read; beyond, it is stuck


class SocketRefused(Exception):
    """The control plane would not open a route socket for this edge."""


def _unasked(message: router_pb2.RouteResponse) -> None:
    log.warning("route socket: %d answers before anything was asked", len(message.answers))


class SocketCall(asyncio.Protocol):
    """One route socket connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.frames = frames.FrameBuffer()
        self.welcome: asyncio.Future[router_pb2.RouteWelcome] = (
            asyncio.get_running_loop().create_future()
        )
        self.on_message: Callable[[router_pb2.RouteResponse], None] = _unasked
        self.on_end: Callable[[str], None] = lambda _: None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        hello: router_pb2.RouteHello,
        tls: ssl.SSLContext | None = None,
    ) -> SocketCall:
        """Connect (with ``tls``, checking the certificate is for ``host``) and say hello;
        raises OSError (ssl.SSLError too), FrameError or SocketRefused (the caller bounds the
        time)."""
        _, call = await asyncio.get_running_loop().create_connection(
            cls, host, port, ssl=tls, server_hostname=host if tls else None
        )
        try:
            call.send(hello)
            welcome = await call.welcome
        except BaseException:  # cancelled by the caller's timeout, too: never leave it open
            call.cancel()
            raise
        if welcome.error:
            call.cancel()
            raise SocketRefused(welcome.error)
        return call

    def listen(
        self,
        on_message: Callable[[router_pb2.RouteResponse], None],
        on_end: Callable[[str], None],
    ) -> None:
        """Hand each answer message to ``on_message``, and why it ended to ``on_end``."""
        self.on_message, self.on_end = on_message, on_end

    def send(self, message: router_pb2.RouteRequest | router_pb2.RouteHello) -> None:
        """Write a frame now; ConnectionError when the socket is closed or the control plane
        has stopped reading."""
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionError("route socket closed")
        transport.write(frames.encode(message))
        if transport.get_write_buffer_size() > MAX_UNSENT:
            raise ConnectionError("the control plane does not read")

    def cancel(self) -> bool:
        if self.transport is not None:
            self.transport.close()
        return True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"lost: {exc}" if exc else "closed by the control plane"
        self._end(why)

    def data_received(self, data: bytes) -> None:
        try:
            for payload in self.frames.feed(data):
                if not self.welcome.done():
                    self.welcome.set_result(router_pb2.RouteWelcome.FromString(payload))
                else:
                    self.on_message(router_pb2.RouteResponse.FromString(payload))
            self.frames.check()
        except (frames.FrameError, DecodeError) as exc:
            self._end(f"bad frame: {exc}")
            self.cancel()

    def _end(self, why: str) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(frames.FrameError(f"no welcome: {why}"))
            return
        self.on_end(why)
