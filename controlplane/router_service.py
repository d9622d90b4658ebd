"""RouterService: what edges ask per request, and the inventory pushed down edge sessions."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator

import grpc
from hops.v1 import router_pb2, router_pb2_grpc

from controlplane import convert
from controlplane.admission import Admission
from controlplane.router import Router
from controlplane.settings import ControlPlaneSettings

log = logging.getLogger("hops.controlplane")

# After a change, wait this long before pushing inventory, so a burst becomes one frame.
INVENTORY_DEBOUNCE_S = 0.05
Context = grpc.aio.ServicerContext[object, object]


class RouterServicer(router_pb2_grpc.RouterServiceServicer):
    def __init__(
        self, router: Router, admission: Admission, settings: ControlPlaneSettings
    ) -> None:
        self.router = router
        self.admission = admission
        self.settings = settings
        self.sessions: Counter[str] = Counter()

    async def Pick(
        self, request: router_pb2.PickRequest, context: Context
    ) -> router_pb2.PickResponse:
        if not request.model.strip() and request.api != router_pb2.API_KIND_PULL:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model is required")
        outcome = await self.admission.pick(convert.route_request(request))
        return convert.pick_response(outcome)

    async def Report(
        self, request: router_pb2.ReportRequest, context: Context
    ) -> router_pb2.ReportResponse:
        if not request.lease_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "lease_id is required")
        return router_pb2.ReportResponse(lease_found=self.router.report(convert.report(request)))

    async def GetInventory(
        self, request: router_pb2.GetInventoryRequest, context: Context
    ) -> router_pb2.GetInventoryResponse:
        return router_pb2.GetInventoryResponse(inventory=convert.inventory(self.router.fleet))

    async def EdgeSession(
        self, request: router_pb2.EdgeSessionRequest, context: Context
    ) -> AsyncIterator[router_pb2.EdgeSessionResponse]:
        edge_id = request.edge_id.strip()
        if not edge_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "edge_id is required")
        fleet = self.router.fleet
        self.sessions[edge_id] += 1
        log.info("edge session opened edge=%s", edge_id)
        try:
            seen = -1
            while True:
                if fleet.version != seen:
                    seen = fleet.version
                    yield router_pb2.EdgeSessionResponse(inventory=convert.inventory(fleet))
                await fleet.wait_changed(seen, timeout=self.settings.keepalive_interval)
                await asyncio.sleep(INVENTORY_DEBOUNCE_S)
        finally:
            self.sessions[edge_id] -= 1
            if self.sessions[edge_id] <= 0:
                del self.sessions[edge_id]
                released = self.router.release_edge(edge_id)
                log.info("edge session closed edge=%s leases_released=%d", edge_id, released)
