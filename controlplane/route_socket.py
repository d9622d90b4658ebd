"""The route socket: the Route stream's picks and reports as frames on a plain TCP connection.

Why: a Pick is on every request's path, and through gRPC's asyncio stack each message hops
between gRPC's threads and the event loop on both sides. The same messages as length-prefixed
frames (hopscommon.frames) cost a fraction of that (bench/README.md). Semantics are the Route
stream's, and the same code decides each call. Each connection is an asyncio Protocol: the
calls in the bytes that arrive are decided in that callback and their answers written at once
(one frame per batch), with no task switch between a pick arriving and its answer leaving.
The hello carries the edge token; nothing else is served here.

With --tls-cert the socket speaks TLS with the same certificate (and client CA) as gRPC.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
from typing import cast

from google.protobuf.message import DecodeError
from hops.v1 import router_pb2

from controlplane import convert
from controlplane.model import RouteRequest
from controlplane.router import PickOutcome
from controlplane.router_service import RouterServicer
from hopscommon import frames

log = logging.getLogger("hops.controlplane")
HELLO_TIMEOUT_S = 5.0  # a peer that connects and says nothing is dropped after this
MAX_UNSENT = 16 * 1024 * 1024  # answers the edge has not read; beyond, it is not reading: close


class RouteSocket:
    """Serves route socket connections with ``servicer``'s Route handling."""

    def __init__(self, servicer: RouterServicer, token: str) -> None:
        self.servicer = servicer
        self.token = token.encode()
        self.server: asyncio.Server | None = None
        self.connections: set[_Connection] = set()

    async def start(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> int:
        """Listen on ``host:port`` (0 = any free port); returns the port."""
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), host, port, ssl=tls)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
        if self.server is not None:
            await self.server.wait_closed()


class _Connection(asyncio.Protocol):
    def __init__(self, socket: RouteSocket) -> None:
        self.socket = socket
        self.servicer = socket.servicer
        self.transport: asyncio.Transport | None = None
        self.peer: object = None
        self.frames = frames.FrameBuffer()
        self.welcomed = False
        self.waiting: set[asyncio.Task[None]] = set()
        self.hello_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.peer = transport.get_extra_info("peername")
        self.socket.connections.add(self)
        self.hello_timer = asyncio.get_running_loop().call_later(
            HELLO_TIMEOUT_S, self.close, f"no hello in {HELLO_TIMEOUT_S}s"
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self.socket.connections.discard(self)
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        if self.welcomed:
            self.servicer.router.metrics.route_streams.dec()
        for task in self.waiting:  # nobody is left to answer
            task.cancel()

    def close(self, why: str) -> None:
        if self.transport is not None and not self.transport.is_closing():
            log.warning("route socket from %s closed: %s", self.peer, why)
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        answers: list[router_pb2.RouteAnswer] = []
        try:
            for payload in self.frames.feed(data):
                if not self.welcomed:
                    if not self._hello(payload):
                        return
                    continue
                request = router_pb2.RouteRequest.FromString(payload)
                for call in request.calls:
                    self.servicer.route_call(call, answers.append, self.waiting, self._wait)
            self.frames.check()
        except (frames.FrameError, DecodeError) as exc:
            # The picks before the bad frame hold leases: their answers go out first.
            self._send(answers)
            self.close(f"bad frame: {exc}")
            return
        if answers:
            self._send(answers)

    def _hello(self, payload: bytes) -> bool:
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        try:
            hello = router_pb2.RouteHello.FromString(payload)
        except DecodeError as exc:
            self.close(f"undecodable RouteHello frame: {exc}")
            return False
        token = self.socket.token
        assert self.transport is not None
        if token and not hmac.compare_digest(hello.token.encode(), token):
            log.warning("route socket from %s refused: wrong edge token", self.peer)
            self.transport.write(frames.encode(router_pb2.RouteWelcome(error="wrong edge token")))
            self.transport.close()
            return False
        self.transport.write(frames.encode(router_pb2.RouteWelcome()))
        self.welcomed = True
        self.servicer.router.metrics.route_streams.inc()
        log.info("route socket opened edge=%s", hello.edge_id)
        return True

    async def _wait(
        self, request_id: int, request: RouteRequest, first: PickOutcome | None
    ) -> None:
        outcome = await self.servicer.admission.wait(request, first)
        answer = router_pb2.RouteAnswer(request_id=request_id, pick=convert.pick_response(outcome))
        self._send([answer])

    def _send(self, answers: list[router_pb2.RouteAnswer]) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(frames.encode(router_pb2.RouteResponse(answers=answers)))
        if transport.get_write_buffer_size() > MAX_UNSENT:
            self.close("the edge does not read its answers")
