from dataclasses import replace

import pytest

from controlplane.errors import NodeIdConflict
from controlplane.fleet import NodeState
from hopscommon.fleet import Hello, LoadedModel, Snapshot
from tests.controlplane import builders


def _hello(node_id: str, host: str, url: str = "http://h:11434") -> Hello:
    return Hello(node_id=node_id, ollama_url=url, hostname=host, instance_id=host + "-x")


def test_a_restarted_agent_replaces_its_old_stream() -> None:
    fleet = builders.fleet()
    old, new = object(), object()
    fleet.attach(_hello("n", "host-a"), old)
    node, replaced = fleet.attach(_hello("n", "host-a"), new)
    assert replaced and node.session is new
    assert not fleet.detach("n", old)  # the old stream closing later changes nothing
    assert node.state is not NodeState.OFFLINE


def test_a_different_host_claiming_a_live_id_is_refused_and_shown() -> None:
    fleet = builders.fleet()
    fleet.attach(_hello("n", "host-a"), object())
    with pytest.raises(NodeIdConflict, match="held by host-a"):
        fleet.attach(_hello("n", "host-b", "http://other:11434"), object())
    node = fleet.nodes["n"]
    assert node.hello.hostname == "host-a"
    assert [c.hostname for c in node.conflicts] == ["host-b"]


def test_closed_stream_takes_node_out_at_once() -> None:
    fleet = builders.fleet()
    node = builders.add_node(fleet, "n")
    version = fleet.version
    assert node.routable
    assert fleet.detach("n", node.session)
    assert node.state is NodeState.OFFLINE and not node.routable
    assert fleet.version > version


def test_stale_snapshots_are_ignored() -> None:
    fleet = builders.fleet()
    node = builders.add_node(fleet, "n", models=["a:latest"])
    fleet.update("n", node.session, Snapshot(sequence=5, ollama_healthy=True))
    fleet.update("n", node.session, Snapshot(sequence=3, ollama_healthy=False))
    assert node.snapshot.sequence == 5 and node.snapshot.ollama_healthy


def test_warm_counts_the_connected_hosts_with_each_model_loaded() -> None:
    fleet = builders.fleet()
    a = builders.add_node(fleet, "a", models=["m:latest", "n:latest"], loaded=["m:latest"])
    builders.add_node(fleet, "b", models=["m:latest"], loaded=["m:latest"])
    assert fleet.warm == {"m:latest": 2}
    fleet.detach("b", fleet.nodes["b"].session)
    assert fleet.warm == {"m:latest": 1}  # an offline host serves nothing
    fleet.forget_after = 0.0
    fleet.forget_offline()
    assert fleet.warm == {"m:latest": 1}  # not counted off twice
    swapped = replace(a.snapshot, sequence=5, loaded=(LoadedModel(name="n:latest"),))
    fleet.update("a", a.session, swapped)
    assert fleet.warm == {"n:latest": 1}
    builders.add_node(fleet, "b", models=["m:latest"], loaded=["m:latest"])  # back again
    assert fleet.warm == {"n:latest": 1, "m:latest": 1}
