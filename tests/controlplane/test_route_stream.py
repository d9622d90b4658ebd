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


def pick(request_id: int, model: str) -> router_pb2.RouteCall:
    return router_pb2.RouteCall(
        request_id=request_id, pick=router_pb2.PickRequest(edge_id="e", model=model)
    )


def message(*calls: router_pb2.RouteCall) -> router_pb2.RouteRequest:
    return router_pb2.RouteRequest(calls=calls)


def one_answer(response: router_pb2.RouteResponse) -> router_pb2.RouteAnswer:
    assert len(response.answers) == 1, response
    return response.answers[0]


async def test_picks_answered_by_id_reports_close_leases_and_waits_do_not_block() -> None:
    settings = ControlPlaneSettings(
        listen=("127.0.0.1", 0), metrics_listen=None, admission_wait=5.0
    )
    async with running(settings) as plane:
        add_node(plane.fleet, "solo", ["llama3.2:latest", "qwen2.5:7b"], max_in_flight=1)
        async with grpc.aio.insecure_channel(plane.address) as channel:
            call = router_pb2_grpc.RouterServiceStub(channel).Route()

            await call.write(message(pick(7, "llama3.2")))
            first = one_answer(await call.read())
            assert first.request_id == 7
            assert first.pick.status == router_pb2.PICK_STATUS_OK
            assert len(plane.fleet.leases) == 1

            # The host is now full: this pick waits for a slot, the stream goes on.
            await call.write(message(pick(8, "qwen2.5:7b")))
            await call.write(
                message(router_pb2.RouteCall(request_id=9, pick=router_pb2.PickRequest()))
            )
            invalid = one_answer(await call.read())
            assert (invalid.request_id, invalid.invalid) == (9, "model is required")

            await call.write(
                message(
                    router_pb2.RouteCall(
                        report=router_pb2.ReportRequest(
                            lease_id=first.pick.lease_id,
                            node_id="solo",
                            outcome=router_pb2.OUTCOME_OK,
                        )
                    )
                )
            )
            waited = one_answer(await asyncio.wait_for(call.read(), 5))
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
            await call.write(message(router_pb2.RouteCall(request_id=1, pick=odd)))
            assert one_answer(await call.read()).invalid == "unknown api kind 99"
            bad_report = router_pb2.ReportRequest(outcome=42)  # type: ignore[arg-type]  # no lease
            await call.write(message(router_pb2.RouteCall(report=bad_report)))
            await call.write(message(pick(2, "llama3.2")))
            answer = one_answer(await call.read())  # the stream survived both
            assert answer.request_id == 2 and answer.pick.status == router_pb2.PICK_STATUS_OK
            await call.done_writing()


async def test_calls_sent_together_are_handled_in_order_and_answered_together() -> None:
    settings = ControlPlaneSettings(listen=("127.0.0.1", 0), metrics_listen=None)
    async with running(settings) as plane:
        add_node(plane.fleet, "solo", max_in_flight=1)
        async with grpc.aio.insecure_channel(plane.address) as channel:
            call = router_pb2_grpc.RouterServiceStub(channel).Route()
            await call.write(message(pick(1, "llama3.2")))
            first = one_answer(await call.read())
            done = router_pb2.ReportRequest(
                lease_id=first.pick.lease_id, node_id="solo", outcome=router_pb2.OUTCOME_OK
            )
            # The host holds one request at a time: the second pick only gets a slot at once
            # because the report before it in the same message freed it; the empty call and
            # the invalid pick are answered too, in the same message.
            await call.write(
                message(
                    router_pb2.RouteCall(report=done),
                    pick(2, "llama3.2"),
                    router_pb2.RouteCall(request_id=3),
                    router_pb2.RouteCall(request_id=4, pick=router_pb2.PickRequest()),
                )
            )
            response = await asyncio.wait_for(call.read(), 5)
            assert [a.request_id for a in response.answers] == [2, 3, 4]
            second, empty, invalid = response.answers
            assert second.pick.status == router_pb2.PICK_STATUS_OK
            assert second.pick.lease_id
            assert (empty.invalid, invalid.invalid) == ("empty call", "model is required")
            assert len(plane.fleet.leases) == 1
            await call.done_writing()
            assert await call.read() == grpc.aio.EOF
