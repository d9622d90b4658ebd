"""hopsctl's views of admin records, without a control plane."""

from __future__ import annotations

from hops.v1 import admin_pb2

from hopsctl.__main__ import model_rows, node_detail, node_rows


def test_states_a_newer_control_plane_adds_show_as_numbers() -> None:
    """Proto enums are open: a control plane built from a newer contract may send a node or
    breaker state this hopsctl does not know. It is shown as its number; it used to raise
    ValueError (EnumTypeWrapper.Name) and end hopsctl with a traceback."""
    node = admin_pb2.Node(node_id="gpu-1", state=42, breaker=admin_pb2.Breaker(state=7))
    rows = node_rows([node]).splitlines()
    assert rows[1].split()[:2] == ["gpu-1", "42"]
    detail = node_detail(node)
    assert "node:      gpu-1  (42)" in detail and "breaker:   7" in detail
    known = admin_pb2.Node(node_id="gpu-2", state=admin_pb2.NODE_STATE_ONLINE)
    assert node_rows([known]).splitlines()[1].split()[:2] == ["gpu-2", "online"]


def test_models_show_what_routing_learned_of_their_replies() -> None:
    learned = admin_pb2.FleetModel(
        name="engineer:latest",
        installed_on=["a", "b"],
        reply_tokens=212.4,
        prompt_added_tokens=1302.2,
        prompt_token_ratio=1.3,
    )
    fresh = admin_pb2.FleetModel(name="llama3.2:latest", installed_on=["a"])
    rows = model_rows([learned, fresh]).splitlines()
    assert rows[0].split()[-2:] == ["REPLY", "PROMPT"]
    assert rows[1].split()[-3:] == ["212", "+1302", "x1.30"]
    assert rows[2].split()[-2:] == ["-", "-"]
