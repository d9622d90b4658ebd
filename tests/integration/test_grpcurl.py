"""The admin commands in the README, run with the real grpcurl against a real control plane."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hops.v1 import admin_pb2

from tests.integration import fleet
from tests.integration.fleet import wait_until

pytestmark = pytest.mark.slow
README = Path(__file__).resolve().parents[2] / "README.md"
GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def readme_commands() -> list[str]:
    text = README.read_text()
    block = re.search(r"<!-- grpcurl-cookbook -->\s*```\w*\n(.*?)```", text, re.S)
    assert block, "README lost its grpcurl cookbook"
    return [line for line in block.group(1).splitlines() if line.startswith("grpcurl ")]


def run(command: str, address: str) -> str:
    argv = shlex.split(command.replace("localhost:50051", address))
    argv[0] = GRPCURL
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    return done.stdout


def test_readme_grpcurl_cookbook_works() -> None:
    commands = readme_commands()
    verbs = " ".join(commands)
    for needed in (
        "list",
        "describe",
        "AdminService/ListNodes",
        "AdminService/CordonNode",
        "grpc.health.v1.Health/Check",
    ):
        assert needed in verbs
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(fleet.controlplane())
        host = stack.enter_context(fleet.sim())
        stack.enter_context(fleet.agent([plane.url], host.url, "gpu-1"))
        admin = fleet.admin(plane.url)
        wait_until(lambda: admin.ListNodes(admin_pb2.ListNodesRequest()).nodes, 2.0, "node")
        outputs = {command: run(command, plane.url) for command in commands}

    def output(fragment: str) -> str:
        return next(out for command, out in outputs.items() if fragment in command)

    listed = output(" list")
    assert {
        "hops.v1.AdminService",
        "hops.v1.AgentService",
        "hops.v1.RouterService",
        "grpc.health.v1.Health",
    } <= set(listed.split())
    described = output(" describe ")
    assert "rpc CordonNode" in described and "rpc DrainNode" in described
    nodes = json.loads(output("AdminService/ListNodes"))["nodes"]
    assert [n["node_id"] for n in nodes] == ["gpu-1"]
    assert nodes[0]["state"] == "NODE_STATE_ONLINE"
    cordoned = json.loads(output("AdminService/CordonNode"))["node"]
    assert (cordoned["node_id"], cordoned["cordoned"]) == ("gpu-1", True)
    assert json.loads(output("Health/Check")) == {"status": "SERVING"}
