"""The route socket against an in-process control plane: the edge moves its picks onto it once
its session tells the port, falls back to gRPC when it breaks, and the control plane refuses
wrong tokens and junk without changing anything."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from pathlib import Path

import pytest
from hops.v1 import router_pb2

from controlplane import route_socket
from controlplane.server import ControlPlane, running
from controlplane.settings import ControlPlaneSettings
from edge import cpclient
from edge.cpclient import ControlPlaneClient
from edge.routesocket import SocketCall, SocketRefused
from hopscommon import frames
from hopscommon.tls import channel_credentials, client_ssl_context
from tests import tlscerts
from tests.controlplane.builders import add_node
from tests.simfixtures import eventually


def _settings(**overrides: object) -> ControlPlaneSettings:
    return ControlPlaneSettings(
        listen=("127.0.0.1", 0),
        metrics_listen=None,
        **overrides,  # type: ignore[arg-type]
    )


async def _on_socket(cp: ControlPlaneClient) -> None:
    async def moved() -> bool:
        stream = cp.planes[0].stream
        return stream is not None and stream.on_socket and not stream.broken

    await eventually(moved, 5.0)


def _ok(picked: router_pb2.PickResponse) -> router_pb2.ReportRequest:
    assert picked.status == router_pb2.PICK_STATUS_OK
    return router_pb2.ReportRequest(
        lease_id=picked.lease_id,
        node_id=picked.candidates[0].node_id,
        outcome=router_pb2.OUTCOME_OK,
    )


async def test_the_edge_moves_its_picks_to_the_route_socket() -> None:
    async with running(_settings()) as plane:
        add_node(plane.fleet, "solo")
        assert plane.router_servicer.route_port > 0
        cp = ControlPlaneClient((plane.address,), "edge-1", 5.0)
        cp.start()
        try:
            await _on_socket(cp)  # the session told the port; the socket opened by itself
            assert cp.planes[0].route_port == plane.router_servicer.route_port
            assert len(plane.route_socket.connections) == 1
            picked, address = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            assert len(plane.fleet.leases) == 1
            assert cp.report_on_stream(address, _ok(picked))

            async def closed() -> bool:
                return len(plane.fleet.leases) == 0

            await eventually(closed, 5.0)  # the report went down the socket
        finally:
            await cp.close()
        await _gone(plane)  # the edge's close ends the connection on both sides


async def _gone(plane: ControlPlane) -> None:
    async def none_left() -> bool:
        return not plane.route_socket.connections

    await eventually(none_left, 5.0)


async def test_the_grpc_stream_hands_over_only_once_its_picks_are_answered() -> None:
    async with running(_settings(admission_wait=5.0)) as plane:
        add_node(plane.fleet, "solo", max_in_flight=1)
        cp = ControlPlaneClient((plane.address,), "edge-1", 5.0)
        try:
            first, address = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            grpc_stream = cp.planes[0].stream
            assert grpc_stream is not None and not grpc_stream.on_socket
            # The host is full: this pick waits in the control plane's queue, on gRPC.
            held = asyncio.create_task(cp.pick(router_pb2.PickRequest(model="llama3.2")))

            async def queued() -> bool:
                return bool(grpc_stream.pending) and len(plane.admission.queue) > 0

            await eventually(queued, 5.0)
            cp.start()  # the session tells the port; the socket takes over new picks
            await _on_socket(cp)
            assert grpc_stream.retired and not grpc_stream.broken  # it still carries one
            assert cp.report_on_stream(address, _ok(first))  # frees the slot, by the socket
            second, _ = await held  # answered on the old stream, which then ends
            assert second.status == router_pb2.PICK_STATUS_OK
            assert grpc_stream.broken
            assert len(plane.fleet.leases) == 1  # the held pick's, nothing leaked
        finally:
            await cp.close()


async def test_route_listen_off_keeps_picks_on_grpc() -> None:
    async with running(_settings(route_listen="off")) as plane:
        add_node(plane.fleet, "solo")
        cp = ControlPlaneClient((plane.address,), "edge-1", 5.0)
        cp.start()
        try:
            await asyncio.wait_for(cp.connected.wait(), 5.0)
            picked, _ = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            assert picked.status == router_pb2.PICK_STATUS_OK
            stream = cp.planes[0].stream
            assert stream is not None and not stream.on_socket
            assert cp.planes[0].route_port == 0 and cp.planes[0].opening is None
        finally:
            await cp.close()


async def test_a_broken_socket_falls_back_to_grpc_and_is_reopened_later() -> None:
    async with running(_settings()) as plane:
        add_node(plane.fleet, "solo", num_parallel=8)
        cp = ControlPlaneClient((plane.address,), "edge-1", 5.0)
        cp.start()
        try:
            await _on_socket(cp)
            for connection in list(plane.route_socket.connections):
                connection.close("dropped by the test")  # the control plane drops it

            async def broken() -> bool:
                stream = cp.planes[0].stream
                return stream is not None and stream.broken

            await eventually(broken, 5.0)
            picked, _ = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            assert picked.status == router_pb2.PICK_STATUS_OK  # answered by gRPC meanwhile
            assert cp.planes[0].socket_failures == 1
            for _ in range(100):  # after the backoff (1 s) a pick opens a new socket
                again, address = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
                await cp.report(address, _ok(again))
                stream = cp.planes[0].stream
                if stream is not None and stream.on_socket:
                    break
                await asyncio.sleep(0.05)
            await _on_socket(cp)
            assert cp.planes[0].socket_failures == 0
        finally:
            await cp.close()


async def test_an_unreachable_socket_costs_no_pick_its_connect() -> None:
    async with running(_settings()) as plane:
        add_node(plane.fleet, "solo", num_parallel=8)
        await plane.route_socket.stop()  # offered in the session, but nothing listens
        cp = ControlPlaneClient((plane.address,), "edge-1", 5.0)
        cp.start()
        try:
            await asyncio.wait_for(cp.connected.wait(), 5.0)

            async def failed() -> bool:
                return cp.planes[0].socket_failures >= 1

            await eventually(failed, 5.0)
            picked, _ = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            assert picked.status == router_pb2.PICK_STATUS_OK
            stream = cp.planes[0].stream
            assert stream is not None and not stream.on_socket
        finally:
            await cp.close()


async def test_a_wrong_token_is_refused() -> None:
    async with running(_settings(edge_token="s3cret")) as plane:
        add_node(plane.fleet, "solo")
        port = plane.router_servicer.route_port
        with pytest.raises(SocketRefused, match="wrong edge token"):
            await SocketCall.open("127.0.0.1", port, router_pb2.RouteHello(edge_id="e"))
        call = await SocketCall.open(
            "127.0.0.1", port, router_pb2.RouteHello(edge_id="e", token="s3cret")
        )
        got: list[router_pb2.RouteResponse] = []
        call.listen(got.append, lambda _: None)
        try:
            pick = router_pb2.RouteCall(request_id=7, pick=router_pb2.PickRequest(model="llama3.2"))
            call.send(router_pb2.RouteRequest(calls=[pick]))

            async def answered() -> bool:
                return bool(got)

            await eventually(answered, 5.0)
            assert got[0].answers[0].request_id == 7
            assert got[0].answers[0].pick.status == router_pb2.PICK_STATUS_OK
        finally:
            call.cancel()


@pytest.mark.parametrize(
    "junk",
    [
        struct.pack("!I", frames.MAX_FRAME + 1),  # a frame too big to buffer
        frames.encode(router_pb2.RouteHello(edge_id="e")) + b"\x00\x00\x00\x04\xff\xff\xff\xff",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",  # not a route socket client at all
    ],
    ids=["oversized", "undecodable-request", "http"],
)
async def test_junk_closes_the_socket_and_changes_nothing(
    junk: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(route_socket, "HELLO_TIMEOUT_S", 2.0)
    async with running(_settings()) as plane:
        add_node(plane.fleet, "solo")
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", plane.router_servicer.route_port
        )
        try:
            writer.write(junk)
            # Whatever came before, the connection ends (a welcome may precede it).
            async with asyncio.timeout(5.0):
                while await reader.read(1024):
                    pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        assert len(plane.fleet.leases) == 0
        await _gone(plane)
        call = await SocketCall.open(  # and the socket still serves well-behaved edges
            "127.0.0.1", plane.router_servicer.route_port, router_pb2.RouteHello(edge_id="e")
        )
        call.cancel()


@pytest.mark.parametrize(
    "junk",
    [b"\x00\x00\x00\x04\xff\xff\xff\xff", struct.pack("!I", frames.MAX_FRAME + 1)],
    ids=["undecodable", "oversized"],
)
async def test_picks_before_a_bad_frame_are_answered_before_the_socket_closes(
    junk: bytes,
) -> None:
    async with running(_settings()) as plane:
        add_node(plane.fleet, "solo")
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", plane.router_servicer.route_port
        )
        pick = router_pb2.RouteCall(request_id=3, pick=router_pb2.PickRequest(model="llama3.2"))
        writer.write(  # one write: hello, a good pick, then junk
            frames.encode(router_pb2.RouteHello(edge_id="e"))
            + frames.encode(router_pb2.RouteRequest(calls=[pick]))
            + junk
        )
        received = bytearray()
        try:
            async with asyncio.timeout(5.0):
                while chunk := await reader.read(1024):
                    received += chunk
        finally:
            writer.close()
        welcome, answered = frames.FrameBuffer().feed(bytes(received))
        assert not router_pb2.RouteWelcome.FromString(welcome).error
        answer = router_pb2.RouteResponse.FromString(answered).answers[0]
        assert answer.request_id == 3 and answer.pick.status == router_pb2.PICK_STATUS_OK
        assert len(plane.fleet.leases) == 1 and plane.fleet.leases.get(answer.pick.lease_id)


async def test_a_silent_peer_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(route_socket, "HELLO_TIMEOUT_S", 0.2)
    async with running(_settings()) as plane:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", plane.router_servicer.route_port
        )
        try:
            async with asyncio.timeout(5.0):
                assert await reader.read(1024) == b""  # closed without a word
        finally:
            writer.close()


def test_route_listen_settings() -> None:
    assert _settings().route_address() == ("127.0.0.1", 0)
    assert _settings(route_listen="off").route_address() is None
    assert _settings(route_listen="127.0.0.1:6000").route_address() == ("127.0.0.1", 6000)


async def test_with_tls_the_socket_speaks_tls_and_wants_a_client_certificate(
    tmp_path: Path,
) -> None:
    certs = tlscerts.make(tmp_path)
    settings = _settings(
        tls_cert=certs.server_cert, tls_key=certs.server_key, tls_client_ca=certs.ca
    )
    async with running(settings) as plane:
        add_node(plane.fleet, "solo")
        port = plane.router_servicer.route_port
        hello = router_pb2.RouteHello(edge_id="e")
        address = f"localhost:{plane.port}"  # the name the server certificate carries
        cp = ControlPlaneClient(
            (address,),
            "edge-1",
            5.0,
            credentials=channel_credentials(certs.ca, certs.client_cert, certs.client_key),
            tls=client_ssl_context(certs.ca, certs.client_cert, certs.client_key),
        )
        cp.start()
        try:
            await _on_socket(cp)
            picked, _ = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            assert picked.status == router_pb2.PICK_STATUS_OK
        finally:
            await cp.close()
        with pytest.raises(frames.FrameError):  # plaintext gets no welcome
            await SocketCall.open("127.0.0.1", port, hello)
        with pytest.raises((OSError, frames.FrameError)):  # nor TLS without a certificate
            await SocketCall.open("localhost", port, hello, client_ssl_context(certs.ca))


async def _route_socket(plane: ControlPlane) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", plane.router_servicer.route_port)
    writer.write(frames.encode(router_pb2.RouteHello(edge_id="e")))
    return reader, writer


async def test_a_pick_whose_answer_was_lost_is_abandoned_and_its_lease_closed() -> None:
    async with running(_settings()) as plane:
        add_node(plane.fleet, "solo")
        _, writer = await _route_socket(plane)
        pick = router_pb2.RouteCall(
            request_id=7, pick=router_pb2.PickRequest(edge_id="e", model="llama3.2")
        )
        writer.write(frames.encode(router_pb2.RouteRequest(calls=[pick])))

        async def opened() -> bool:
            return len(plane.fleet.leases) == 1

        await eventually(opened, 5.0)
        writer.close()  # the answer is never read: the connection broke first
        await _gone(plane)
        assert len(plane.fleet.leases) == 1  # the control plane cannot know it was lost
        reader, writer = await _route_socket(plane)
        try:
            abandon = router_pb2.AbandonRequest(edge_id="e")
            pick.request_id = 9  # answered after the calls before it are applied
            writer.write(
                frames.encode(
                    router_pb2.RouteRequest(
                        calls=[
                            router_pb2.RouteCall(request_id=8, abandon=abandon),  # no such pick
                            router_pb2.RouteCall(
                                request_id=7, abandon=router_pb2.AbandonRequest(edge_id="other")
                            ),
                            pick,
                        ]
                    )
                )
            )
            received = frames.FrameBuffer()
            answers: list[bytes] = []
            async with asyncio.timeout(5.0):
                while len(answers) < 2:  # the welcome, then the answer
                    answers += received.feed(await reader.read(65536))
            answer = router_pb2.RouteResponse.FromString(answers[1]).answers[0]
            assert answer.request_id == 9 and answer.pick.status == router_pb2.PICK_STATUS_OK
            assert plane.fleet.leases.by_request("e", 7) is not None  # another edge's id: kept
            writer.write(
                frames.encode(
                    router_pb2.RouteRequest(
                        calls=[router_pb2.RouteCall(request_id=7, abandon=abandon)]
                    )
                )
            )

            async def closed() -> bool:
                return plane.fleet.leases.by_request("e", 7) is None

            await eventually(closed, 5.0)
            assert len(plane.fleet.leases) == 1  # pick 9's
            assert plane.router.metrics.reports.labels("client_cancelled")._value.get() == 1
        finally:
            writer.close()


async def test_an_edge_tells_the_control_plane_which_answers_it_never_got() -> None:
    # A host with one slot. The edge's second pick waits for it; the edge stops reading its
    # socket, reports the first request, and the control plane gives the waiting pick the slot,
    # but its answer is lost with the socket. Told so, the control plane closes that lease, and
    # the edge's pick, retried by gRPC, gets the slot; untold, it would hold the slot until the
    # edge's session ended, and the retry would wait out the admission wait and be refused.
    async with running(_settings(admission_wait=3.0)) as plane:
        add_node(plane.fleet, "solo", max_in_flight=1)
        cp = ControlPlaneClient((plane.address,), "edge-1", 5.0)
        cp.start()
        try:
            await _on_socket(cp)
            first, address = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            stream = cp.planes[0].stream
            assert stream is not None and stream.on_socket
            second = asyncio.create_task(cp.pick(router_pb2.PickRequest(model="llama3.2")))

            async def waits() -> bool:
                return sum(plane.admission.waiting.values()) == 1

            await eventually(waits, 5.0)
            socket = stream.call
            assert isinstance(socket, SocketCall) and socket.transport is not None
            socket.transport.pause_reading()
            assert cp.report_on_stream(address, _ok(first))

            async def granted() -> bool:  # the first lease closed, the waiting pick's opened
                leases = list(plane.fleet.leases._leases.values())
                return not plane.admission.waiting and len(leases) == 1 and leases[0].request_id

            await eventually(granted, 5.0)
            socket.cancel()  # the socket breaks with that answer unread
            picked, _ = await asyncio.wait_for(second, 2.5)
            assert picked.status == router_pb2.PICK_STATUS_OK
            assert len(plane.fleet.leases) == 1  # the retry's: the lost answer's lease is closed
            assert plane.fleet.leases.get(picked.lease_id) is not None
        finally:
            await cp.close()


async def test_no_lease_is_left_when_the_route_socket_keeps_breaking_under_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The control plane resets the edge's route socket every few milliseconds while picks and
    # reports flow: answers in flight are lost with it (a reset discards what the edge had not
    # read), picks are retried by gRPC, and the socket reopens at once. Every lease must close
    # while the edge's session stays open: none may wait for the session's end or the TTL.
    monkeypatch.setattr(cpclient, "SOCKET_RETRY_S", 0.01)
    monkeypatch.setattr(cpclient, "SOCKET_RETRY_MAX_S", 0.02)
    async with running(_settings()) as plane:
        add_node(plane.fleet, "solo", num_parallel=64)
        cp = ControlPlaneClient((plane.address,), "edge-1", 5.0)
        cp.start()
        resets = 0
        done = asyncio.Event()

        async def chaos() -> None:
            nonlocal resets
            while not done.is_set():
                await asyncio.sleep(0.003)
                for connection in list(plane.route_socket.connections):
                    if connection.transport is not None and connection.welcomed:
                        connection.transport.abort()
                        resets += 1

        async def request() -> None:
            picked, address = await cp.pick(router_pb2.PickRequest(model="llama3.2"))
            cp.send_report(address, _ok(picked))

        try:
            await _on_socket(cp)
            breaking = asyncio.create_task(chaos())
            for batch in range(200):  # at least 20 batches of 40, and at least 5 resets
                await asyncio.gather(*(request() for _ in range(40)))
                if batch >= 19 and resets >= 5:
                    break
            done.set()
            await breaking
            assert resets >= 5

            async def drained() -> bool:
                return len(plane.fleet.leases) == 0

            await eventually(drained, 5.0)
            assert cp.connected.is_set()  # the session never ended: nothing was released by it
        finally:
            await cp.close()
