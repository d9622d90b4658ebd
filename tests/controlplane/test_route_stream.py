"""RouterService.Route: picks and reports as messages on one stream, against an in-process
control plane whose fleet is built directly."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from hops.v1 import router_pb2, router_pb2_grpc

from controlplane.server import running
from controlplane.settings import ControlPlaneSettings
from tests.controlplane.builders import add_node


async def test_picks_answered_by_id_reports_close_leases_and_waits_do_not_block() -> None:
    settings = ControlPlaneSettings(
        listen=("127.0.0.1", 0), metrics_listen=None, admission_wait=5.0
    )
    async with running(settings) as plane:
        add_node(plane.fleet, "solo", ["llama3.2:latest", "qwen2.5:7b"], max_in_flight=1)
        async with grpc.aio.insecure_channel(plane.address) as channel:
            call = router_pb2_grpc.RouterServiceStub(channel).Route()

            def pick(request_id: int, model: str) -> router_pb2.RouteRequest:
                return router_pb2.RouteRequest(
                    request_id=request_id, pick=router_pb2.PickRequest(edge_id="e", model=model)
                )

            await call.write(pick(7, "llama3.2"))
            first = await call.read()
            assert first.request_id == 7
            assert first.pick.status == router_pb2.PICK_STATUS_OK
            assert len(plane.fleet.leases) == 1

            # The host is now full: this pick waits for a slot, the stream goes on.
            await call.write(pick(8, "qwen2.5:7b"))
            await call.write(router_pb2.RouteRequest(request_id=9, pick=router_pb2.PickRequest()))
            invalid = await call.read()
            assert (invalid.request_id, invalid.invalid) == (9, "model is required")

            await call.write(
                router_pb2.RouteRequest(
                    report=router_pb2.ReportRequest(
                        lease_id=first.pick.lease_id,
                        node_id="solo",
                        outcome=router_pb2.OUTCOME_OK,
                    )
                )
            )
            waited = await asyncio.wait_for(call.read(), 5)
            assert waited.request_id == 8
            assert waited.pick.status == router_pb2.PICK_STATUS_OK
            assert waited.pick.candidates[0].reason.startswith("queued")
            assert len(plane.fleet.leases) == 1  # the first closed by its report, this one open
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF


async def test_unknown_enum_values_are_refused_clearly_on_both_paths() -> None:
    settings = ControlPlaneSettings(listen=("127.0.0.1", 0), metrics_listen=None)
    async with running(settings) as plane:
        add_node(plane.fleet, "solo")
        async with grpc.aio.insecure_channel(plane.address) as channel:
            stub = router_pb2_grpc.RouterServiceStub(channel)
            odd = router_pb2.PickRequest(edge_id="e", model="llama3.2", api=99)  # type: ignore[arg-type]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Pick(odd)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details() == "unknown api kind 99"
            call = stub.Route()
            await call.write(router_pb2.RouteRequest(request_id=1, pick=odd))
            assert (await call.read()).invalid == "unknown api kind 99"
            bad_report = router_pb2.ReportRequest(lease_id="x", outcome=42)  # type: ignore[arg-type]
            await call.write(router_pb2.RouteRequest(report=bad_report))
            await call.write(
                router_pb2.RouteRequest(
                    request_id=2, pick=router_pb2.PickRequest(edge_id="e", model="llama3.2")
                )
            )
            answer = await call.read()  # the stream survived both
            assert answer.request_id == 2 and answer.pick.status == router_pb2.PICK_STATUS_OK
            await call.done_writing()
