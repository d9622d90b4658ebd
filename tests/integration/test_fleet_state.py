"""Control plane, agents and simulated hosts as real processes on loopback."""

from __future__ import annotations

import contextlib
import signal

import grpc
import httpx
import pytest
from hops.v1 import admin_pb2, router_pb2

from tests.integration import fleet
from tests.integration.fleet import wait_until

pytestmark = pytest.mark.slow


def _nodes(address: str) -> dict[str, admin_pb2.Node]:
    return {
        n.node_id: n for n in fleet.admin(address).ListNodes(admin_pb2.ListNodesRequest()).nodes
    }


def _online(address: str, node_id: str) -> bool:
    node = _nodes(address).get(node_id)
    return node is not None and node.state == admin_pb2.NODE_STATE_ONLINE


def _pick(address: str, model: str = "llama3.2") -> router_pb2.PickResponse:
    return fleet.router(address).Pick(router_pb2.PickRequest(edge_id="test", model=model))


def test_node_appears_loaded_model_shows_and_killed_agent_leaves() -> None:
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(fleet.controlplane())
        host = stack.enter_context(fleet.sim())
        agent = stack.enter_context(
            fleet.agent([plane.url], host.url, "gpu-a", ["--label", "zone=eu"])
        )
        node = wait_until(lambda: _nodes(plane.url).get("gpu-a"), 2.0, "node appears")
        assert dict(node.labels) == {"zone": "eu"}
        httpx.post(host.url + "/api/generate", json={"model": "llama3.2"}, timeout=30)
        wait_until(
            lambda: (
                [m.name for m in _nodes(plane.url)["gpu-a"].snapshot.loaded] == ["llama3.2:latest"]
            ),
            2.0,
            "loaded model visible",
        )
        assert _pick(plane.url).candidates[0].loaded
        agent.popen.send_signal(signal.SIGKILL)
        wait_until(
            lambda: _nodes(plane.url)["gpu-a"].state == admin_pb2.NODE_STATE_OFFLINE,
            1.0,
            "node leaves after its agent dies",
        )
        assert _pick(plane.url).status == router_pb2.PICK_STATUS_MODEL_NOT_FOUND


def test_restarted_controlplane_is_repopulated_by_reconnecting_agents() -> None:
    with contextlib.ExitStack() as stack:
        host = stack.enter_context(fleet.sim())
        plane = fleet.controlplane()
        first = plane.__enter__()
        address = first.url
        port = int(address.rsplit(":", 1)[1])
        stack.enter_context(fleet.agent([address], host.url, "gpu-a"))
        wait_until(lambda: _online(address, "gpu-a"), 2.0, "node online")
        plane.__exit__(None, None, None)
        second = stack.enter_context(fleet.controlplane(port=port))
        wait_until(lambda: _online(second.url, "gpu-a"), 3.0, "node back after restart")
        installed = {m.name for m in _nodes(second.url)["gpu-a"].snapshot.installed}
        assert "llama3.2:latest" in installed


def test_agent_reports_to_every_controlplane() -> None:
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(fleet.controlplane())
        two = stack.enter_context(fleet.controlplane())
        host = stack.enter_context(fleet.sim())
        stack.enter_context(fleet.agent([one.url, two.url], host.url, "gpu-a"))
        for address in (one.url, two.url):
            wait_until(lambda a=address: _online(a, "gpu-a"), 2.0, "node on both")


def test_unhealthy_ollama_is_taken_out_of_routing_and_comes_back() -> None:
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(fleet.controlplane())
        host = stack.enter_context(fleet.sim(["--control-listen", "127.0.0.1:0"]))
        control = host.wait_for(r"control on (\S+)").group(1)
        stack.enter_context(fleet.agent([plane.url], host.url, "gpu-a"))
        wait_until(lambda: _online(plane.url, "gpu-a"), 2.0, "node online")
        config = httpx.get(control + "/_sim/config", timeout=5)
        assert config.status_code == 200
        # refuse connections through the API port: the agent's probes fail
        httpx.put(host.url + "/_sim/fault", json={"mode": "refuse", "duration_s": 1.5}, timeout=5)
        wait_until(
            lambda: _nodes(plane.url)["gpu-a"].state == admin_pb2.NODE_STATE_UNHEALTHY,
            2.0,
            "node unhealthy",
        )
        assert _pick(plane.url).status == router_pb2.PICK_STATUS_NO_HEALTHY_NODE
        wait_until(lambda: _online(plane.url, "gpu-a"), 4.0, "node healthy again")


def test_duplicate_node_id_from_another_host_is_visible() -> None:
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(fleet.controlplane())
        host_a = stack.enter_context(fleet.sim())
        host_b = stack.enter_context(fleet.sim())
        stack.enter_context(fleet.agent([plane.url], host_a.url, "same"))
        wait_until(lambda: _online(plane.url, "same"), 2.0, "first node")
        intruder = stack.enter_context(fleet.agent([plane.url], host_b.url, "same"))
        node = wait_until(
            lambda: _nodes(plane.url)["same"].conflicts and _nodes(plane.url)["same"],
            3.0,
            "conflict recorded",
        )
        assert node.ollama_url == host_a.url and node.conflicts[0].ollama_url == host_b.url
        intruder.wait_for("ALREADY_EXISTS")


def test_cordon_drain_pull_preload_unload_end_to_end() -> None:
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(fleet.controlplane())
        host = stack.enter_context(fleet.sim())
        stack.enter_context(fleet.agent([plane.url], host.url, "gpu-a"))
        wait_until(lambda: _online(plane.url, "gpu-a"), 2.0, "node online")
        admin = fleet.admin(plane.url)
        router = fleet.router(plane.url)

        frames = list(
            admin.PullModel(admin_pb2.PullModelRequest(node_id="gpu-a", model="qwen2.5:0.5b"))
        )
        assert frames[0].status == "pulling manifest"
        assert frames[-1].done and frames[-1].status == "success" and not frames[-1].error
        models = {m.name: m for m in admin.ListModels(admin_pb2.ListModelsRequest()).models}
        assert list(models["qwen2.5:0.5b"].installed_on) == ["gpu-a"]

        failed = list(
            admin.PullModel(admin_pb2.PullModelRequest(node_id="gpu-a", model="no-such-model"))
        )
        assert failed[-1].done and "file does not exist" in failed[-1].error

        assert admin.PreloadModel(
            admin_pb2.PreloadModelRequest(node_id="gpu-a", model="qwen2.5:0.5b")
        ).ok
        models = {m.name: m for m in admin.ListModels(admin_pb2.ListModelsRequest()).models}
        assert list(models["qwen2.5:0.5b"].loaded_on) == ["gpu-a"]
        assert admin.UnloadModel(
            admin_pb2.UnloadModelRequest(node_id="gpu-a", model="qwen2.5:0.5b")
        ).ok
        models = {m.name: m for m in admin.ListModels(admin_pb2.ListModelsRequest()).models}
        assert list(models["qwen2.5:0.5b"].loaded_on) == []

        lease = router.Pick(router_pb2.PickRequest(edge_id="e", model="llama3.2")).lease_id
        cordoned = admin.CordonNode(admin_pb2.CordonNodeRequest(node_id="gpu-a")).node
        assert cordoned.cordoned and cordoned.in_flight_total == 1
        assert _pick(plane.url).status == router_pb2.PICK_STATUS_NO_HEALTHY_NODE
        draining = admin.DrainNode(admin_pb2.DrainNodeRequest(node_id="gpu-a"))
        assert (draining.drained, draining.in_flight) == (False, 1)
        router.Report(
            router_pb2.ReportRequest(lease_id=lease, node_id="gpu-a", outcome=router_pb2.OUTCOME_OK)
        )
        drained = admin.DrainNode(admin_pb2.DrainNodeRequest(node_id="gpu-a"))
        assert (drained.drained, drained.in_flight) == (True, 0)
        admin.UncordonNode(admin_pb2.UncordonNodeRequest(node_id="gpu-a"))
        assert _pick(plane.url).status == router_pb2.PICK_STATUS_OK

        with pytest.raises(grpc.RpcError) as missing:
            admin.CordonNode(admin_pb2.CordonNodeRequest(node_id="nope"))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_policy_and_metrics() -> None:
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(fleet.controlplane(["--policy", "random"]))
        host = stack.enter_context(fleet.sim())
        stack.enter_context(fleet.agent([plane.url], host.url, "gpu-a"))
        wait_until(lambda: _online(plane.url, "gpu-a"), 2.0, "node online")
        admin = fleet.admin(plane.url)
        assert admin.GetPolicy(admin_pb2.GetPolicyRequest()).name == "random"
        changed = admin.SetPolicy(admin_pb2.SetPolicyRequest(name="round_robin"))
        assert (changed.name, changed.previous) == ("round_robin", "random")
        with pytest.raises(grpc.RpcError) as bad:
            admin.SetPolicy(admin_pb2.SetPolicyRequest(name="psychic"))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        _pick(plane.url)
        _pick(plane.url, "ghost")
        text = httpx.get(fleet.metrics_url(plane), timeout=5).text
        assert 'hops_controlplane_nodes{state="online"} 1.0' in text
        assert 'hops_controlplane_picks_total{policy="round_robin",result="ok"} 1.0' in text
        assert 'result="model_not_found"' in text
        assert "hops_controlplane_open_leases 1.0" in text
        assert "hops_controlplane_pick_duration_seconds_bucket" in text
