"""The edge's Route stream client against an in-process control plane: picks go over the stream,
and a report queued when the stream breaks still reaches the control plane (by the unary call),
so no lease is left open."""

from __future__ import annotations

from hops.v1 import router_pb2

from controlplane.server import running
from controlplane.settings import ControlPlaneSettings
from edge.cpclient import ControlPlaneClient
from tests.controlplane.builders import add_node
from tests.simfixtures import eventually


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
