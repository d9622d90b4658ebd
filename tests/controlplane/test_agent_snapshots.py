"""Snapshots from an agent stream: the installed models are converted again only when they
changed (most snapshots repeat them), and the fleet then refreshes only what moved."""

from __future__ import annotations

from hops.v1 import agent_pb2, fleet_pb2

from controlplane.agent_service import AgentServicer
from controlplane.commands import AgentSession
from controlplane.settings import ControlPlaneSettings
from hopscommon.fleet import Hello
from tests.controlplane import builders

GIB = 1024**3


def _message(seq: int, installed: list[str], loaded: list[str]) -> agent_pb2.ConnectRequest:
    return agent_pb2.ConnectRequest(
        snapshot=fleet_pb2.NodeSnapshot(
            sequence=seq,
            ollama_healthy=True,
            installed=[fleet_pb2.InstalledModel(name=n, size_bytes=GIB) for n in installed],
            loaded=[fleet_pb2.LoadedModel(name=n, size_vram_bytes=GIB) for n in loaded],
            gpus=[fleet_pb2.Gpu(index=0, total_bytes=8 * GIB, free_bytes=(7 - seq) * GIB)],
        )
    )


def test_repeated_installed_models_are_reused_and_only_warm_changes_are_flagged() -> None:
    fleet = builders.fleet()
    session = AgentSession("n")
    fleet.attach(Hello(node_id="n", ollama_url="http://n.test:11434", hostname="n"), session)
    servicer = AgentServicer(fleet, ControlPlaneSettings())
    node = fleet.nodes["n"]

    servicer._apply(session, _message(1, ["a:latest", "b:latest"], ["a:latest"]))
    first = node.snapshot.installed
    assert [m.name for m in first] == ["a:latest", "b:latest"]
    assert "n" in fleet.reindexed  # new installed models: every floor of the node
    fleet.reindexed.clear()

    servicer._apply(session, _message(2, ["a:latest", "b:latest"], ["b:latest"]))
    assert node.snapshot.installed is first  # not converted again
    assert set(node.loaded_by_key) == {"b:latest"}
    assert node.vram_free == 5 * GIB
    assert fleet.reindexed == set()
    assert fleet.rekeyed == {"n": {"a:latest", "b:latest"}}  # only those two moved
    fleet.rekeyed.clear()

    servicer._apply(session, _message(3, ["a:latest", "c:latest"], ["b:latest"]))
    assert [m.name for m in node.snapshot.installed] == ["a:latest", "c:latest"]
    assert set(node.installed_by_key) == {"a:latest", "c:latest"}
    assert "n" in fleet.reindexed
    assert set(fleet.holders) == {"a:latest", "c:latest"}
