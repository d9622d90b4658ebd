"""hopsctl against a real control plane, agents and simulated hosts on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hops.v1 import admin_pb2

from tests.integration import fleet

pytestmark = pytest.mark.slow


def hopsctl(
    plane: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("hopsctl")
    assert exe.exists(), "hopsctl is installed by make install (a console script in the venv)"
    return subprocess.run(
        [exe, "--controlplane", plane, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def ok(plane: str, *args: str) -> str:
    done = hopsctl(plane, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_hopsctl_reads_and_changes_the_fleet() -> None:
    hosts = {"big": ["--profile", "gpu-24g"], "laptop": ["--profile", "gpu-8g"]}
    hosts["laptop"] += ["--version", "0.15.5"]  # its automatic context length follows its VRAM
    # big's Ollama runs with OLLAMA_CONTEXT_LENGTH=8192, and its agent says so.
    hosts["big"] += ["--context-length", "8192"]
    declared = {"big": ["--context-length", "8192"]}
    with fleet.whole_fleet(hosts, agent_args_of=declared) as running:
        plane = running.plane.url
        nodes = ok(plane, "nodes").splitlines()
        assert nodes[0].split()[:4] == ["NODE", "STATE", "VRAM", "LOADED"]
        rows = {line.split()[0]: line.split() for line in nodes[1:]}
        assert set(rows) == {"big", "laptop"}
        assert rows["big"][1:3] == ["online", "0.0G/24.0G"]

        models = ok(plane, "models")
        assert any(
            line.split()[0] == "llama3.2:latest" and "big,laptop" in line
            for line in models.splitlines()
        )

        ok(plane, "preload", "laptop", "llama3.2")
        detail = ok(plane, "node", "laptop")
        assert (
            "context:   4096 for a request naming no num_ctx (Ollama's tier for this VRAM)"
            in detail
        )
        assert (
            "context:   8192 for a request naming no num_ctx (the agent's --context-length)"
            in ok(plane, "node", "big")
        )
        loaded = detail.split("loaded:")[1].split("installed:")[0]
        row = next(line.split() for line in loaded.splitlines() if "llama3.2:latest" in line)
        # Its context length; the automatic one not yet learned; Ollama's default options.
        assert row[-3:] == ["4096", "?", "-"]
        assert "learned:" not in ok(plane, "node", "laptop")  # no reply yet
        answered = httpx.post(
            running.edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "hi", "stream": False},
            timeout=10,
        )
        reply, host = answered.json(), answered.headers["x-hops-node"]
        assert reply["done"] and host == "laptop"  # warm there

        def learned_row() -> list[str] | None:
            shown = ok(plane, "node", host).split("learned:")
            if len(shown) < 2:
                return None
            lines = shown[1].split("installed:")[0].strip().splitlines()
            return next((line.split() for line in lines if "llama3.2:latest" in line), None)

        learned = fleet.wait_until(learned_row, 3.0, "the reply learned from")
        # MODEL, DECODE TOK/S, PROMPT TOK/S, LOAD S, SAMPLES: Ollama's eval speed from the
        # reply; a two-word prompt says nothing of the prompt speed.
        expected = reply["eval_count"] / reply["eval_duration"] * 1e9
        assert float(learned[1]) == pytest.approx(expected, rel=0.01)
        assert (learned[2], learned[4]) == ("-", "1")
        document = " ".join(f"word{i}" for i in range(400))
        answered = httpx.post(
            running.edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": document, "stream": False},
            timeout=10,
        )
        reply = answered.json()
        assert answered.headers["x-hops-node"] == host and reply["prompt_eval_count"] >= 64
        learned = fleet.wait_until(
            lambda: (row := learned_row()) and row[4] == "2" and row, 3.0, "the second reply"
        )
        expected = reply["prompt_eval_count"] / reply["prompt_eval_duration"] * 1e9
        assert float(learned[2]) == pytest.approx(expected, rel=0.01)
        ok(plane, "unload", "laptop", "llama3.2")

        assert ok(plane, "cordon", "big").strip() == "big cordoned"
        listed = json.loads(ok(plane, "--json", "nodes"))
        cordoned = {n["nodeId"]: n.get("cordoned", False) for n in listed["nodes"]}
        assert cordoned == {"big": True, "laptop": False}
        ok(plane, "uncordon", "big")

        assert ok(plane, "drain", "laptop", "--wait", "5").strip() == "laptop drained"
        stub = fleet.admin(plane)
        node = stub.GetNode(admin_pb2.GetNodeRequest(node_id="laptop")).node
        assert node.draining

        pulled = ok(plane, "pull", "big", "gemma3:4b")
        assert "success" in pulled
        assert "gemma3:4b" in ok(plane, "models")

        assert ok(plane, "policy", "least_busy").strip() == "policy memory_aware -> least_busy"
        assert ok(plane, "policy").startswith("least_busy")

        missing = hopsctl(plane, "node", "nope")
        assert missing.returncode == 1
        assert missing.stderr.startswith("hopsctl: NOT_FOUND:")
        failed = hopsctl(plane, "pull", "big", "no-such-model")
        assert failed.returncode == 1 and "pull failed" in failed.stderr


def test_hopsctl_sends_the_admin_token() -> None:
    with fleet.controlplane(["--admin-token", "adm1n"]) as plane:
        refused = hopsctl(plane.url, "nodes")
        assert refused.returncode == 1
        assert refused.stderr.startswith("hopsctl: UNAUTHENTICATED")
        allowed = hopsctl(plane.url, "nodes", env={"HOPS_CTL_TOKEN": "adm1n"})
        assert allowed.returncode == 0, allowed.stderr
        assert allowed.stdout.startswith("NODE")
