"""RouterService: what edges ask per request, and the inventory pushed down edge sessions."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import grpc
from hops.v1 import router_pb2, router_pb2_grpc

from controlplane import convert
from controlplane.admission import Admission
from controlplane.errors import InvalidRequest
from controlplane.model import RouteRequest
from controlplane.router import PickOutcome, Router
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
        self.route_port = 0  # the route socket's, told to edges; 0 = none

    async def Pick(
        self, request: router_pb2.PickRequest, context: Context
    ) -> router_pb2.PickResponse:
        try:
            route = convert.route_request(request)
        except InvalidRequest as exc:
            await context.abort(exc.code, str(exc))
        outcome = await self.admission.pick(route)
        return convert.pick_response(outcome)

    async def Report(
        self, request: router_pb2.ReportRequest, context: Context
    ) -> router_pb2.ReportResponse:
        try:
            report = convert.report(request)
        except InvalidRequest as exc:
            await context.abort(exc.code, str(exc))
        return router_pb2.ReportResponse(lease_found=self.router.report(report))

    async def Route(
        self, requests: AsyncIterator[router_pb2.RouteRequest], context: Context
    ) -> AsyncIterator[router_pb2.RouteResponse]:
        """Picks and reports on one stream. A pick is answered at once unless it must wait for a
        slot; then it waits in a task of its own and the stream goes on. Answers decided while
        the previous message was being written go out together in the next. (The route socket
        handles each call with ``route_call`` too.)"""
        answers: list[router_pb2.RouteAnswer] = []
        ready = asyncio.Event()
        reading = True
        waiting: set[asyncio.Task[None]] = set()

        def answer(item: router_pb2.RouteAnswer) -> None:
            answers.append(item)
            ready.set()

        async def wait_then_answer(
            request_id: int, request: RouteRequest, first: PickOutcome | None
        ) -> None:
            outcome = await self.admission.wait(request, first)
            answer(
                router_pb2.RouteAnswer(request_id=request_id, pick=convert.pick_response(outcome))
            )

        async def read() -> None:
            nonlocal reading
            try:
                async for message in requests:
                    for call in message.calls:
                        self.route_call(call, answer, waiting, wait_then_answer)
            finally:
                reading = False
                ready.set()

        reader = asyncio.create_task(read())
        self.router.metrics.route_streams.inc()
        try:
            while reading or answers:
                await ready.wait()
                ready.clear()
                if answers:
                    batch, answers = answers, []
                    yield router_pb2.RouteResponse(answers=batch)
            await asyncio.gather(*waiting)  # the edge closed its side: answer what waits
            if answers:
                yield router_pb2.RouteResponse(answers=answers)
        finally:
            self.router.metrics.route_streams.dec()
            reader.cancel()
            for task in waiting:
                task.cancel()

    def route_call(
        self,
        call: router_pb2.RouteCall,
        answer: Callable[[router_pb2.RouteAnswer], None],
        waiting: set[asyncio.Task[None]],
        wait_then_answer: Callable[
            [int, RouteRequest, PickOutcome | None], Coroutine[Any, Any, None]
        ],
    ) -> None:
        """Handle one call of a Route stream or route socket: a report or an abandoned pick is
        applied, a pick is answered through ``answer`` now, or later by a ``wait_then_answer``
        task kept in ``waiting`` when it must wait for a slot."""
        kind = call.WhichOneof("kind")
        if kind == "report":
            try:
                self.router.report(convert.report(call.report))
            except InvalidRequest as exc:  # no answer to send: say it here
                log.warning("route stream report refused: %s", exc)
            return
        if kind == "abandon":
            self.router.abandon(call.abandon.edge_id, call.request_id)
            return
        if kind is None:
            answer(router_pb2.RouteAnswer(request_id=call.request_id, invalid="empty call"))
            return
        try:
            request = convert.route_request(call.pick, call.request_id)
        except InvalidRequest as exc:
            answer(router_pb2.RouteAnswer(request_id=call.request_id, invalid=str(exc)))
            return
        outcome, wait = self.admission.admit(request)
        if wait:
            task = asyncio.create_task(wait_then_answer(call.request_id, request, outcome))
            waiting.add(task)
            task.add_done_callback(waiting.discard)
            return
        assert outcome is not None
        answer(
            router_pb2.RouteAnswer(request_id=call.request_id, pick=convert.pick_response(outcome))
        )

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
                    yield router_pb2.EdgeSessionResponse(
                        inventory=convert.inventory(fleet), route_port=self.route_port
                    )
                await fleet.wait_changed(seen, timeout=self.settings.keepalive_interval)
                await asyncio.sleep(INVENTORY_DEBOUNCE_S)
        finally:
            self.sessions[edge_id] -= 1
            if self.sessions[edge_id] <= 0:
                del self.sessions[edge_id]
                released = self.router.release_edge(edge_id)
                log.info("edge session closed edge=%s leases_released=%d", edge_id, released)
