"""The edge's link to the control plane(s): Pick and Report, and an EdgeSession that keeps the
fleet inventory current (and, by staying open, lets the control plane release this edge's leases
if the edge dies).

Picks and reports travel as messages on one Route stream per control plane (edge.routestreams:
several times cheaper for both sides than a unary call each); while a stream is broken, the unary
Pick and Report calls carry them, and a new stream is tried after a pause.

Control planes are tried in order; the one that answers is used until it fails. When none
answers, the edge may route from its last inventory for ``fail_open_for`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import grpc
from hops.v1 import router_pb2, router_pb2_grpc

from edge.inventory import Inventory, InventoryNode
from edge.routesocket import SocketCall, SocketRefused
from edge.routestreams import (
    RouteStream,
    SocketRouteStream,
    StreamBroken,
    abandon_calls,
)
from hopscommon import fleet_convert, frames

log = logging.getLogger("hops.edge")
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


Metadata = tuple[tuple[str, str], ...] | None
STREAM_RETRY_S = 1.0  # after a Route stream broke, use unary calls this long before a new one
SOCKET_CONNECT_S = 1.0  # to connect to a route socket and be welcomed
SOCKET_RETRY_S, SOCKET_RETRY_MAX_S = 1.0, 60.0  # backoff after a route socket failed or broke


class ControlPlaneUnavailable(Exception):
    """No control plane answered."""


@dataclass(slots=True)
class _Plane:
    address: str
    channel: grpc.aio.Channel
    stub: router_pb2_grpc.RouterServiceAsyncStub  # the .pyi's name for the aio stub
    stream: RouteStream | SocketRouteStream | None = None
    stream_broke_at: float = field(default=-STREAM_RETRY_S)
    route_port: int = 0  # its route socket's, told in its edge session; 0 = none offered
    opening: asyncio.Task[None] | None = None  # a route socket being opened
    socket_failures: int = 0  # in a row, for the backoff
    socket_retry_at: float = 0.0
    abandoned: list[int] = field(default_factory=list)  # picks whose answers were lost
    abandoning: asyncio.Task[None] | None = None  # telling the plane about them

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    def route_stream(
        self, open_stream: Callable[[], RouteStream]
    ) -> RouteStream | SocketRouteStream | None:
        """The plane's Route stream, opened now if it is time; None: use the unary calls."""
        if self.stream is not None and self.stream.broken:
            if self.stream.on_socket:
                self.socket_failed()
            self.stream, self.stream_broke_at = None, time.monotonic()
        if self.stream is None and time.monotonic() - self.stream_broke_at >= STREAM_RETRY_S:
            self.stream = open_stream()
        return self.stream

    def socket_failed(self) -> None:
        self.socket_failures += 1
        backoff = SOCKET_RETRY_S * 2 ** min(self.socket_failures - 1, 6)
        self.socket_retry_at = time.monotonic() + min(backoff, SOCKET_RETRY_MAX_S)


def to_inventory(msg: router_pb2.Inventory) -> Inventory:
    nodes = tuple(
        InventoryNode(
            node_id=n.node_id,
            ollama_url=n.ollama_url,
            routable=n.routable,
            ollama_version=n.ollama_version,
            installed=tuple(fleet_convert.installed(m) for m in n.installed),
            loaded=tuple(fleet_convert.loaded(m) for m in n.loaded),
            headers=tuple(
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in sorted(n.upstream_headers.items())
            ),
            labels=tuple(sorted(n.labels.items())),
        )
        for n in msg.nodes
    )
    return Inventory(
        version=msg.version,
        nodes=nodes,
        host_headers={n.node_id: n.headers for n in nodes if n.headers},
    )


class ControlPlaneClient:
    """Owned by the edge's event loop."""

    def __init__(
        self,
        addresses: tuple[str, ...],
        edge_id: str,
        pick_timeout: float,
        token: str = "",
        credentials: grpc.ChannelCredentials | None = None,
        tls: ssl.SSLContext | None = None,  # for the route socket, as credentials for gRPC
    ) -> None:
        self.edge_id = edge_id
        self.pick_timeout = pick_timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
        self.hello = router_pb2.RouteHello(edge_id=edge_id, token=token)
        self.tls = tls
        self.planes = []
        for address in addresses:
            channel = (
                grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
                if credentials is not None
                else grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
            )
            self.planes.append(_Plane(address, channel, router_pb2_grpc.RouterServiceStub(channel)))
        self.current = 0
        self.inventory: Inventory | None = None
        self._fresh = asyncio.Event()  # set, and replaced, on each inventory received
        self.connected = asyncio.Event()
        self.last_contact = 0.0
        self._session: asyncio.Task[None] | None = None
        self._reports: set[asyncio.Task[None]] = set()
        self.ids = itertools.count(1)  # request ids, unique across this edge's streams
        self._closing = False

    def start(self) -> None:
        self._session = asyncio.create_task(self._keep_session())

    def update(self, inventory: Inventory) -> None:
        """A new inventory: the current one from now on, and those waiting in ``until`` look."""
        self.inventory = inventory
        self._fresh.set()
        self._fresh = asyncio.Event()

    async def until(self, check: Callable[[Inventory], bool], within: float) -> bool:
        """Wait, at most ``within`` seconds, for an inventory for which ``check`` holds."""
        deadline = time.monotonic() + within
        while self.inventory is None or not check(self.inventory):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                async with asyncio.timeout(left):
                    await self._fresh.wait()
            except TimeoutError:
                return False
        return True

    async def close(self) -> None:
        self._closing = True
        if self._session is not None:
            self._session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._session
        for plane in self.planes:
            if plane.opening is not None:
                plane.opening.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await plane.opening
            if plane.stream is not None:
                plane.stream.close()
            if plane.abandoning is not None:
                plane.abandoning.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await plane.abandoning
            await plane.channel.close()

    def _order(self) -> list[_Plane]:
        return self.planes[self.current :] + self.planes[: self.current]

    async def pick(self, request: router_pb2.PickRequest) -> tuple[router_pb2.PickResponse, str]:
        """Ask the control planes in turn; returns the answer and who gave it."""
        request.edge_id = self.edge_id
        for plane in self._order():
            try:
                stream = plane.route_stream(functools.partial(self._grpc_stream, plane))
                self._open_socket(plane)
                response = None
                if stream is not None:
                    with contextlib.suppress(StreamBroken):
                        response = await stream.pick(request, self.pick_timeout)
                if response is None:
                    response = await plane.stub.Pick(
                        request, timeout=self.pick_timeout, metadata=self.metadata
                    )
            except TimeoutError:
                log.warning(
                    "control plane %s: no answer within %.0fs", plane.address, self.pick_timeout
                )
                continue
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                log.warning("control plane %s: %s", plane.address, exc.code().name)
                continue
            self.current = self.planes.index(plane)
            self.last_contact = time.monotonic()
            return response, plane.address
        raise ControlPlaneUnavailable("no control plane answered")

    def _plane(self, address: str) -> _Plane | None:
        return next((p for p in self.planes if p.address == address), None)

    def send_report(self, address: str, request: router_pb2.ReportRequest) -> None:
        """Report to the plane that gave the lease: down its Route stream, else by the unary
        call in the background."""
        if not self.report_on_stream(address, request):
            self._report_later(address, request)

    def _lost_report(self, plane: _Plane) -> Callable[[router_pb2.ReportRequest], None]:
        return functools.partial(self._report_later, plane.address)

    def _grpc_stream(self, plane: _Plane) -> RouteStream:
        stream = RouteStream(plane.stub.Route(metadata=self.metadata), *self._hooks(plane))
        self._send_abandoned(plane, stream)
        return stream

    def _hooks(
        self, plane: _Plane
    ) -> tuple[
        Callable[[router_pb2.ReportRequest], None], Iterator[int], Callable[[list[int]], None]
    ]:
        """What a stream to ``plane`` hands on: reports it could not deliver, request ids (the
        edge's own), and picks whose answers it lost."""
        return self._lost_report(plane), self.ids, functools.partial(self._abandoned, plane)

    def _abandoned(self, plane: _Plane, request_ids: list[int]) -> None:
        """A stream to ``plane`` broke before these picks were answered. An answer lost with it
        opened a lease that would hold a host's slot until this edge's session ends or the lease
        outlives its TTL: tell the plane now, on a Route stream of their own (if that fails,
        the plane's next stream tells it)."""
        plane.abandoned.extend(request_ids)
        if not self._closing and plane.abandoning is None:
            plane.abandoning = asyncio.create_task(self._tell_abandoned(plane))

    async def _tell_abandoned(self, plane: _Plane) -> None:
        try:
            while plane.abandoned:
                lost = list(plane.abandoned)
                plane.abandoned.clear()
                calls = abandon_calls(lost, self.edge_id)
                call = plane.stub.Route(metadata=self.metadata)
                try:
                    async with asyncio.timeout(self.pick_timeout):
                        await call.write(router_pb2.RouteRequest(calls=calls))
                        await call.done_writing()
                        async for _ in call:  # none expected; the end says all was read
                            pass
                except (grpc.aio.AioRpcError, TimeoutError) as exc:
                    call.cancel()
                    plane.abandoned[:0] = lost
                    log.warning(
                        "control plane %s: %d lost answers not told (%s); its next stream will",
                        plane.address,
                        len(lost),
                        type(exc).__name__,
                    )
                    return
        finally:
            plane.abandoning = None

    def _send_abandoned(self, plane: _Plane, stream: RouteStream | SocketRouteStream) -> None:
        """A new stream first tells the plane which answers the broken ones never delivered."""
        if plane.abandoned:
            lost = list(plane.abandoned)
            plane.abandoned.clear()  # in place: broken streams hold its extend
            stream.abandon(lost, self.edge_id)

    def _open_socket(self, plane: _Plane) -> None:
        """Start opening the plane's route socket, when it offers one and none is open or being
        opened; picks keep using the gRPC stream until it is ready, so none waits for it."""
        if (
            not plane.route_port
            or plane.opening is not None
            or (plane.stream is not None and plane.stream.on_socket and not plane.stream.broken)
            or time.monotonic() < plane.socket_retry_at
        ):
            return
        plane.opening = asyncio.create_task(self._connect_socket(plane, plane.route_port))

    async def _connect_socket(self, plane: _Plane, port: int) -> None:
        try:
            async with asyncio.timeout(SOCKET_CONNECT_S):
                call = await SocketCall.open(plane.host, port, self.hello, self.tls)
        except (OSError, TimeoutError, frames.FrameError, SocketRefused) as exc:
            log.warning(
                "route socket %s:%d not opened (%s); picks go by gRPC",
                plane.host,
                port,
                str(exc) or type(exc).__name__,
            )
            plane.socket_failed()
            return
        finally:
            plane.opening = None
        plane.socket_failures = 0
        old, plane.stream = (
            plane.stream,
            SocketRouteStream(call, *self._hooks(plane)),
        )
        self._send_abandoned(plane, plane.stream)
        if old is not None and not old.broken:
            old.retire()
        log.info("route socket %s:%d open", plane.host, port)

    def _report_later(self, address: str, request: router_pb2.ReportRequest) -> None:
        if self._closing:  # the session's end releases every lease this edge holds
            return
        task = asyncio.create_task(self.report(address, request))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    def report_on_stream(self, address: str, request: router_pb2.ReportRequest) -> bool:
        """Send a report down that plane's Route stream; False when there is none to use."""
        plane = self._plane(address)
        if plane is None or plane.stream is None or plane.stream.broken:
            return False
        plane.stream.report(request)
        return True

    async def report(self, address: str, request: router_pb2.ReportRequest) -> None:
        """The unary Report call."""
        plane = self._plane(address)
        if plane is None:
            return
        try:
            await plane.stub.Report(request, timeout=self.pick_timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as exc:
            log.warning("report to %s failed: %s", address, exc.code().name)

    async def _keep_session(self) -> None:
        delay = 0.1
        while True:
            plane = self.planes[self.current]
            try:
                call = plane.stub.EdgeSession(
                    router_pb2.EdgeSessionRequest(edge_id=self.edge_id), metadata=self.metadata
                )
                async for frame in call:
                    self.update(to_inventory(frame.inventory))
                    plane.route_port = frame.route_port
                    self._open_socket(plane)
                    self.last_contact = time.monotonic()
                    self.connected.set()
                    delay = 0.1
            except grpc.aio.AioRpcError as exc:
                log.info("edge session with %s ended: %s", plane.address, exc.code().name)
            self.connected.clear()
            self.current = (self.current + 1) % len(self.planes)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
