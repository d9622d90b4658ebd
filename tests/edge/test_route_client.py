"""The edge's Route stream client against an in-process control plane: picks go over the stream,
and a report queued when the stream breaks still reaches the control plane (by the unary call),
so no lease is left open."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from hops.v1 import router_pb2, router_pb2_grpc

from controlplane.server import ControlPlane, running
from controlplane.settings import ControlPlaneSettings
from edge import routestreams
from edge.cpclient import ControlPlaneClient
from edge.routestreams import RouteStream, StreamBroken
from tests.controlplane.builders import add_node
from tests.simfixtures import eventually


def _ok(lease_id: str) -> router_pb2.ReportRequest:
    return router_pb2.ReportRequest(
        lease_id=lease_id, node_id="solo", outcome=router_pb2.OUTCOME_OK
    )


async def _no_leases_left(plane: ControlPlane) -> None:
    async def none() -> bool:
        return len(plane.fleet.leases) == 0

    await eventually(none, 5.0)


async def test_a_report_queued_on_a_breaking_stream_is_sent_unary() -> None:
    settings = ControlPlaneSettings(listen=("127.0.0.1", 0), metrics_listen=None)
    async with running(settings) as plane:
        add_node(plane.fleet, "solo")
        cp = ControlPlaneClient((plane.address,), "edge-1", 5.0)
        try:
            picked, address = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            assert picked.status == router_pb2.PICK_STATUS_OK
            assert plane.router.metrics.route_streams._value.get() == 1  # it used the stream
            assert len(plane.fleet.leases) == 1
            stream = cp.planes[0].stream
            assert stream is not None
            report = router_pb2.ReportRequest(
                lease_id=picked.lease_id, node_id="solo", outcome=router_pb2.OUTCOME_OK
            )
            assert cp.report_on_stream(address, report)
            stream.close()  # before the writer could send it
            assert stream.broken and not cp.report_on_stream(address, report)

            async def released() -> bool:
                return len(plane.fleet.leases) == 0

            await eventually(released, 5.0)
            # Meanwhile picks go by the unary call, and a new stream is tried later.
            again, _ = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            assert again.status == router_pb2.PICK_STATUS_OK
        finally:
            await cp.close()


async def test_a_lease_granted_after_its_caller_gave_up_is_released() -> None:
    settings = ControlPlaneSettings(
        listen=("127.0.0.1", 0), metrics_listen=None, admission_wait=5.0
    )
    async with running(settings) as plane:
        add_node(plane.fleet, "solo", max_in_flight=1)
        channel = grpc.aio.insecure_channel(plane.address)
        stream = RouteStream(router_pb2_grpc.RouterServiceStub(channel).Route())
        try:
            request = router_pb2.PickRequest(edge_id="e", model="llama3.2")
            first = await stream.pick(request, 5.0)
            assert first.status == router_pb2.PICK_STATUS_OK
            # The host is full: the control plane holds this pick; its caller stops waiting.
            with pytest.raises(TimeoutError):
                await stream.pick(request, 0.2)
            stream.report(
                router_pb2.ReportRequest(
                    lease_id=first.lease_id, node_id="solo", outcome=router_pb2.OUTCOME_OK
                )
            )
            granted = plane.router.metrics.picks.labels("memory_aware", "ok")

            async def released() -> bool:
                # The held pick got the freed slot, and its lease is closed, not left to its TTL.
                return granted._value.get() == 2 and len(plane.fleet.leases) == 0

            await eventually(released, 5.0)
        finally:
            stream.close()
            await channel.close()


class _CountingCall:
    """Wraps the stream's call to count the messages written."""

    def __init__(self, call: object) -> None:
        self.call = call
        self.messages: list[int] = []

    async def write(self, message: router_pb2.RouteRequest) -> None:
        self.messages.append(len(message.calls))
        await self.call.write(message)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self.call, name)

    def __aiter__(self) -> object:
        return self.call.__aiter__()  # type: ignore[attr-defined]


async def test_calls_made_while_a_message_is_written_share_the_next_one() -> None:
    settings = ControlPlaneSettings(listen=("127.0.0.1", 0), metrics_listen=None)
    async with running(settings) as plane:
        add_node(plane.fleet, "solo", num_parallel=32)  # room for every pick at once
        channel = grpc.aio.insecure_channel(plane.address)
        lost: list[router_pb2.ReportRequest] = []
        stream = RouteStream(router_pb2_grpc.RouterServiceStub(channel).Route(), lost.append)
        counting = _CountingCall(stream.call)
        stream.call = counting  # type: ignore[assignment]
        try:
            answers = await asyncio.gather(
                *(
                    stream.pick(router_pb2.PickRequest(edge_id="e", model="llama3.2"), 5.0)
                    for _ in range(20)
                )
            )
            assert all(a.status == router_pb2.PICK_STATUS_OK for a in answers)
            assert len({a.lease_id for a in answers}) == 20  # each answer went to its own pick
            assert sum(counting.messages) == 20
            assert len(counting.messages) < 20  # the picks queued behind a write went together
            for a in answers:
                stream.report(_ok(a.lease_id))
            await _no_leases_left(plane)
            assert lost == []
            stream.close()
            late = router_pb2.ReportRequest(lease_id="late", outcome=router_pb2.OUTCOME_OK)
            stream.report(late)  # on a closed stream: handed on, not dropped
            assert lost == [late]
        finally:
            stream.close()
            await channel.close()


@contextlib.asynccontextmanager
async def _route_stream(plane: ControlPlane) -> AsyncIterator[RouteStream]:
    """A Route stream by gRPC to ``plane``, closed with its channel on exit."""
    channel = grpc.aio.insecure_channel(plane.address)
    stream = RouteStream(router_pb2_grpc.RouterServiceStub(channel).Route())
    try:
        yield stream
    finally:
        stream.close()
        await channel.close()


async def test_a_report_with_no_pick_in_flight_goes_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Waiting for a pick to ride with would make the next request's pick carry the report, and
    # the control plane would apply it while that pick waits for its answer.
    monkeypatch.setattr(routestreams, "REPORT_DELAY_S", 60.0)
    settings = ControlPlaneSettings(listen=("127.0.0.1", 0), metrics_listen=None)
    async with running(settings) as plane, _route_stream(plane) as stream:
        add_node(plane.fleet, "solo")
        picked = await stream.pick(router_pb2.PickRequest(edge_id="e", model="llama3.2"), 5.0)
        assert len(plane.fleet.leases) == 1
        stream.report(_ok(picked.lease_id))
        await _no_leases_left(plane)


async def test_a_report_made_while_a_pick_is_in_flight_rides_with_the_next_pick(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(routestreams, "REPORT_DELAY_S", 60.0)
    settings = ControlPlaneSettings(
        listen=("127.0.0.1", 0), metrics_listen=None, admission_wait=5.0
    )
    async with running(settings) as plane, _route_stream(plane) as stream:
        add_node(plane.fleet, "solo", max_in_flight=1)
        counting = _CountingCall(stream.call)
        stream.call = counting  # type: ignore[assignment]
        request = router_pb2.PickRequest(edge_id="e", model="llama3.2")
        first = await stream.pick(request, 5.0)
        held = asyncio.create_task(stream.pick(request, 5.0))  # the host is full: it waits

        async def held_there() -> bool:
            return sum(plane.admission.waiting.values()) == 1

        await eventually(held_there, 5.0)
        stream.report(_ok(first.lease_id))
        for _ in range(5):  # turns of the loop in which a report sent alone would go out
            await asyncio.sleep(0.01)
        assert counting.messages == [1, 1]  # the report waits for a pick to ride with
        third = asyncio.create_task(stream.pick(request, 5.0))
        second = await held  # freed by the report, which went out with the third pick
        assert second.status == router_pb2.PICK_STATUS_OK
        assert counting.messages == [1, 1, 2]
        third.cancel()


class _SilentCall:
    """A Route call that takes every message and never answers."""

    def __init__(self) -> None:
        self.written: list[router_pb2.RouteRequest] = []
        self.never = asyncio.Event()

    async def write(self, message: router_pb2.RouteRequest) -> None:
        self.written.append(message)

    def cancel(self) -> bool:
        return True

    def __aiter__(self) -> _SilentCall:
        return self

    async def __anext__(self) -> router_pb2.RouteResponse:
        await self.never.wait()
        raise StopAsyncIteration


async def test_a_broken_stream_names_the_picks_it_has_no_answers_for() -> None:
    lost: list[int] = []
    call = _SilentCall()
    stream = RouteStream(call, abandoned=lost.extend)
    request = router_pb2.PickRequest(edge_id="e", model="llama3.2")
    with pytest.raises(TimeoutError):
        await stream.pick(request, 0.05)  # its caller gave up; the answer may still come
    waiting = asyncio.create_task(stream.pick(request, 5.0))
    for _ in range(100):
        if len(call.written) == 2:
            break
        await asyncio.sleep(0.01)
    sent = [c.request_id for m in call.written for c in m.calls]
    assert len(sent) == 2
    stream.close()
    with pytest.raises(StreamBroken):
        await waiting
    assert sorted(lost) == sorted(sent)


class _ScriptedCall(_SilentCall):
    """A Route call whose answers (or failure) the test hands it."""

    def __init__(self) -> None:
        super().__init__()
        self.answers: asyncio.Queue[router_pb2.RouteResponse | Exception] = asyncio.Queue()

    async def __anext__(self) -> router_pb2.RouteResponse:
        item = await self.answers.get()
        if isinstance(item, Exception):
            raise item
        return item


async def _written(call: _SilentCall, calls: int) -> list[router_pb2.RouteCall]:
    for _ in range(100):
        sent = [c for m in call.written for c in m.calls]
        if len(sent) >= calls:
            return sent
        await asyncio.sleep(0.01)
    raise AssertionError(f"{calls} calls not written")


async def test_reports_not_known_to_be_read_go_again_when_the_stream_breaks() -> None:
    # The control plane handles a stream's calls in order: an answer to a pick written after a
    # report says the report was applied. Reports written after the last such answer may have
    # been lost with the stream, so they go again by the unary call (a lost one held its lease
    # until the edge's session ended); moves do not (one applied twice would count twice).
    lost: list[router_pb2.ReportRequest] = []
    call = _ScriptedCall()
    stream = RouteStream(call, lost.append)
    ok = router_pb2.OUTCOME_OK
    applied = router_pb2.ReportRequest(lease_id="a", node_id="n1", outcome=ok)
    stream.report(applied)
    picking = asyncio.create_task(stream.pick(router_pb2.PickRequest(model="m"), 5.0))
    sent = await _written(call, 2)
    assert sent[0].HasField("report") and sent[1].HasField("pick")
    answer = router_pb2.PickResponse(status=router_pb2.PICK_STATUS_OK, lease_id="b")
    await call.answers.put(
        router_pb2.RouteResponse(
            answers=[router_pb2.RouteAnswer(request_id=sent[1].request_id, pick=answer)]
        )
    )
    assert (await picking).lease_id == "b"
    unread = router_pb2.ReportRequest(lease_id="b", node_id="n1", outcome=ok)
    stream.report(unread)
    move = router_pb2.ReportRequest(
        lease_id="c", node_id="n1", outcome=router_pb2.OUTCOME_BUSY, retry_node_id="n2"
    )
    stream.report(move)
    await _written(call, 4)
    await call.answers.put(ConnectionResetError("the control plane went away"))
    for _ in range(100):
        if stream.broken:
            break
        await asyncio.sleep(0.01)
    assert stream.broken and lost == [unread]
