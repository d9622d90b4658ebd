"""Bearer tokens on the control plane: agents, edges and admins each need their own."""

from __future__ import annotations

import contextlib
import subprocess

import grpc
import httpx
import pytest
from hops.v1 import admin_pb2

from tests.integration import fleet
from tests.integration.fleet import wait_until
from tests.integration.test_grpcurl import GRPCURL

pytestmark = pytest.mark.slow
TOKENS = ["--agent-token", "agent-t", "--edge-token", "edge-t", "--admin-token", "admin-t"]


def _nodes(address: str, token: str | None) -> list[str]:
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    reply = fleet.admin(address).ListNodes(admin_pb2.ListNodesRequest(), metadata=metadata)
    return [n.node_id for n in reply.nodes if n.state == admin_pb2.NODE_STATE_ONLINE]


def test_every_caller_needs_its_token() -> None:
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(fleet.controlplane(TOKENS))
        host = stack.enter_context(fleet.sim())
        stranger = stack.enter_context(fleet.agent([plane.url], host.url, "stranger"))
        stack.enter_context(fleet.agent([plane.url], host.url, "member", ["--token", "agent-t"]))
        wait_until(lambda: _nodes(plane.url, "admin-t") == ["member"], 3.0, "member joins")
        stranger.wait_for("UNAUTHENTICATED")
        with pytest.raises(grpc.RpcError) as denied:
            _nodes(plane.url, None)
        assert denied.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError):
            _nodes(plane.url, "agent-t")  # the agent token is not an admin token
        listed = subprocess.run(
            [
                GRPCURL,
                "-plaintext",
                "-H",
                "authorization: Bearer admin-t",
                plane.url,
                "hops.v1.AdminService/ListNodes",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert listed.returncode == 0 and "member" in listed.stdout
        health = subprocess.run(
            [GRPCURL, "-plaintext", plane.url, "grpc.health.v1.Health/Check"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert "SERVING" in health.stdout  # probes need no token
        good = stack.enter_context(fleet.edge([plane.url], ["--controlplane-token", "edge-t"]))
        bad = stack.enter_context(fleet.edge([plane.url], ["--pick-timeout", "1"]))
        body = {"model": "llama3.2", "prompt": "x", "stream": False}
        wait_until(lambda: httpx.get(good.url + "/api/tags").status_code == 200, 3.0, "edge")
        assert httpx.post(good.url + "/api/generate", json=body, timeout=30).status_code == 200
        refused = httpx.post(bad.url + "/api/generate", json=body, timeout=30)
        assert refused.status_code == 503
        assert "agent-t" not in plane.output() and "edge-t" not in good.output()
