"""The edge's link to the control plane(s): Pick and Report, and an EdgeSession that keeps the
fleet inventory current (and, by staying open, lets the control plane release this edge's leases
if the edge dies).

Control planes are tried in order; the one that answers is used until it fails. When none
answers, the edge may route from its last inventory for ``fail_open_for`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc
from hops.v1 import router_pb2, router_pb2_grpc

from edge.inventory import Inventory, InventoryNode
from hopscommon import fleet_convert

log = logging.getLogger("hops.edge")
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class ControlPlaneUnavailable(Exception):
    """No control plane answered."""


@dataclass(slots=True)
class _Plane:
    address: str
    channel: grpc.aio.Channel
    stub: router_pb2_grpc.RouterServiceAsyncStub  # the .pyi's name for the aio stub


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
        )
        for n in msg.nodes
    )
    return Inventory(version=msg.version, nodes=nodes, any_headers=any(n.headers for n in nodes))


class ControlPlaneClient:
    """Owned by the edge's event loop."""

    def __init__(
        self,
        addresses: tuple[str, ...],
        edge_id: str,
        pick_timeout: float,
        token: str = "",
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self.edge_id = edge_id
        self.pick_timeout = pick_timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None
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
        self.connected = asyncio.Event()
        self.last_contact = 0.0
        self._session: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._session = asyncio.create_task(self._keep_session())

    async def close(self) -> None:
        if self._session is not None:
            self._session.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._session
        for plane in self.planes:
            await plane.channel.close()

    def _order(self) -> list[_Plane]:
        return self.planes[self.current :] + self.planes[: self.current]

    async def pick(self, request: router_pb2.PickRequest) -> tuple[router_pb2.PickResponse, str]:
        """Ask the control planes in turn; returns the answer and who gave it."""
        request.edge_id = self.edge_id
        for plane in self._order():
            try:
                response = await plane.stub.Pick(
                    request, timeout=self.pick_timeout, metadata=self.metadata
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise
                log.warning("control plane %s: %s", plane.address, exc.code().name)
                continue
            self.current = self.planes.index(plane)
            self.last_contact = time.monotonic()
            return response, plane.address
        raise ControlPlaneUnavailable("no control plane answered")

    async def report(self, address: str, request: router_pb2.ReportRequest) -> None:
        plane = next((p for p in self.planes if p.address == address), None)
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
                    self.inventory = to_inventory(frame.inventory)
                    self.last_contact = time.monotonic()
                    self.connected.set()
                    delay = 0.1
            except grpc.aio.AioRpcError as exc:
                log.info("edge session with %s ended: %s", plane.address, exc.code().name)
            self.connected.clear()
            self.current = (self.current + 1) % len(self.planes)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
