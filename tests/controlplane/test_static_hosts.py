"""Hosts without an agent: the hosts file, and a polled host routed like any other, end to end
(simulated host behind an authenticating gate, control plane and edge in this event loop)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import uvicorn
from hops.v1 import admin_pb2, admin_pb2_grpc
from starlette.types import Receive, Scope, Send

from controlplane.server import running as controlplane
from controlplane.settings import ControlPlaneSettings
from controlplane.static_hosts import HostsFileError, load_hosts, parse_hosts
from edge.server import running as edge
from edge.settings import EdgeSettings
from hopscommon.net import bind
from ollamasim.server import SimServer
from tests.simfixtures import SimFactory, eventually

SECRET = "Bearer host-secret"


def test_first_hops_list_of_urls_loads_unchanged() -> None:
    hosts = parse_hosts({"hosts": ["http://10.0.0.7:11434/", "https://gpu.example"]})
    assert [(h.node_id, h.url) for h in hosts] == [
        ("10.0.0.7-11434", "http://10.0.0.7:11434"),
        ("gpu.example-443", "https://gpu.example"),
    ]


def test_full_entry() -> None:
    (host,) = parse_hosts(
        [
            {
                "url": "http://a:1",
                "name": "box",
                "headers": {"Authorization": "Bearer x"},
                "labels": {"zone": "eu", "fast": True},
                "vram": "8GiB",
                "num_parallel": 4,
                "context_length": 8192,
                "weight": 2,
            }
        ]
    )
    hello = host.hello()
    assert (hello.node_id, hello.weight, hello.capacity.num_parallel) == ("box", 2.0, 4)
    assert hello.capacity.context_length == 8192
    assert hello.labels == (("fast", "true"), ("zone", "eu"))
    assert hello.upstream_headers == (("Authorization", "Bearer x"),)
    assert host.vram_bytes == 8 * 1024**3


@pytest.mark.parametrize(
    ("document", "reason"),
    [
        ({"hosts": "http://a:1"}, "expected a list"),
        ([42], "expected a URL or a mapping"),
        (["ftp://a:1"], "ollama_url must be an http(s) URL"),
        ([{"url": "http://a:1", "colour": "red"}], "unknown keys ['colour']"),
        (["http://a:1", {"url": "http://b:2", "name": "a-1"}], "used twice"),
        ([{"url": "http://a:1", "headers": ["x"]}], "headers must be a mapping"),
        ([{"url": "http://a:1", "headers": {"Bad Name": "x"}}], "token name"),
        ([{"url": "http://a:1", "headers": {"X": "a\nb"}}], "one line"),
        ([{"url": "http://a:1", "vram": "lots"}], "vram"),
        ([{"url": "http://a:1", "num_parallel": -1}], "num_parallel must be a number from 0"),
        # Beyond a uint32, the admin RPCs could not show it (and inf failed int()).
        ([{"url": "http://a:1", "max_in_flight": 2**32}], "max_in_flight must be a number"),
        ([{"url": "http://a:1", "weight": float("inf")}], "weight must be"),
        ([{"url": "http://a:1", "context_length": -1}], "context_length must be"),
    ],
)
def test_bad_entries_are_refused_with_where_and_why(document: Any, reason: str) -> None:
    with pytest.raises(HostsFileError, match="host") as caught:
        parse_hosts(document, "hosts.yml")
    assert reason in str(caught.value)
    assert str(caught.value).startswith("hosts.yml")


def test_unreadable_or_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(HostsFileError, match="cannot read"):
        load_hosts(str(tmp_path / "missing.yml"))
    bad = tmp_path / "bad.yml"
    bad.write_text("hosts: [unclosed\n")
    with pytest.raises(HostsFileError, match="not valid YAML"):
        load_hosts(str(bad))
    with pytest.raises(ValueError, match="not valid YAML"):
        ControlPlaneSettings(static_hosts=str(bad)).validate()


class Gate:
    """An authenticating proxy in front of a simulated host: 401 without the secret, 503 for
    everything while ``down``. Counts what reached it with and without the secret."""

    def __init__(self, sim: SimServer) -> None:
        self.sim = sim
        self.down = False
        self.authorised = 0
        self.refused = 0
        self.client_keys_seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope["headers"])
        if headers.get(b"authorization") == b"Bearer client-key":
            self.client_keys_seen += 1
        if self.down or headers.get(b"authorization") != SECRET.encode():
            self.refused += not self.down
            status, body = (503, b'{"error":"down"}') if self.down else (401, b'{"error":"no"}')
            await send({"type": "http.response.start", "status": status, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        self.authorised += 1
        await self.sim.app(scope, receive, send)


@contextlib.asynccontextmanager
async def gated(sim: SimServer) -> AsyncIterator[tuple[Gate, str]]:
    gate = Gate(sim)
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(gate, lifespan="off", log_level="error"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await eventually(lambda: _true(server.started), 5.0)
    try:
        yield gate, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task


async def _true(value: bool) -> bool:
    return value


async def test_static_host_is_polled_routed_with_its_headers_and_commanded(
    start_sim: SimFactory, tmp_path: Path
) -> None:
    sim = await start_sim(profile="gpu-8g", models="llama3.2,qwen2.5:0.5b")
    async with gated(sim) as (gate, url):
        hosts = tmp_path / "hosts.yml"
        hosts.write_text(
            f"hosts:\n  - url: {url}\n    name: old-server\n"
            f"    headers: {{Authorization: {SECRET}}}\n    labels: {{zone: eu}}\n    vram: 8GiB\n"
        )
        cp_settings = ControlPlaneSettings(
            listen=("127.0.0.1", 0),
            metrics_listen=None,
            static_hosts=str(hosts),
            static_poll_interval=0.05,
        )
        async with controlplane(cp_settings) as plane:
            await eventually(lambda: _routable(plane.fleet, "old-server"), 5.0)
            node = plane.fleet.nodes["old-server"]
            assert node.hello.label_map == {"zone": "eu"}
            assert node.vram_total == 8 * 1024**3
            assert "llama3.2:latest" in {m.name for m in node.snapshot.installed}

            def runners_read() -> Awaitable[bool]:  # from /api/show, with the host's headers
                installed = plane.fleet.nodes["old-server"].snapshot.installed
                return _true(all(len(m.runner_id) == 64 for m in installed))

            await eventually(runners_read, 5.0)

            edge_settings = EdgeSettings(listen=("127.0.0.1", 0), controlplane=(plane.address,))
            async with (
                edge(edge_settings) as front,
                httpx.AsyncClient(base_url=front.url, timeout=30) as client,
            ):
                await eventually(lambda: _true(front.cp.inventory is not None), 5.0)
                response = await client.post(
                    "/api/generate",
                    json={"model": "llama3.2", "prompt": "hi", "stream": False},
                    headers={"Authorization": "Bearer client-key"},
                )
                assert response.status_code == 200, response.text
                assert response.headers["x-hops-node"] == "old-server"
                assert response.json()["done"] is True
                assert gate.client_keys_seen == 0  # the host's header replaced the client's
                tags = (await client.get("/api/tags")).json()
                assert "qwen2.5:0.5b" in {m["name"] for m in tags["models"]}

                async with grpc.aio.insecure_channel(plane.address) as channel:
                    admin = admin_pb2_grpc.AdminServiceStub(channel)
                    await admin.UnloadModel(
                        admin_pb2.UnloadModelRequest(node_id="old-server", model="llama3.2")
                    )
                    assert "llama3.2:latest" not in plane.fleet.nodes["old-server"].loaded_by_key
                    await admin.PreloadModel(
                        admin_pb2.PreloadModelRequest(node_id="old-server", model="qwen2.5:0.5b")
                    )
                    assert "qwen2.5:0.5b" in plane.fleet.nodes["old-server"].loaded_by_key
                    pulled = [
                        m.status
                        async for m in admin.PullModel(
                            admin_pb2.PullModelRequest(node_id="old-server", model="gemma3:4b")
                        )
                    ]
                    assert (
                        pulled and "gemma3:4b" in plane.fleet.nodes["old-server"].installed_by_key
                    )

                gate.down = True
                await eventually(lambda: _unhealthy(plane.fleet, "old-server"), 5.0)
                down = await client.post("/api/generate", json={"model": "llama3.2"})
                assert down.status_code == 503
                assert "no healthy host" in down.json()["error"]
                gate.down = False
                await eventually(lambda: _routable(plane.fleet, "old-server"), 5.0)
        assert gate.refused == 0  # every poll and request carried the host's secret
        assert gate.authorised > 0
    assert "old-server" not in plane.fleet.nodes or plane.fleet.nodes["old-server"].session is None


async def _routable(fleet: Any, node_id: str) -> bool:
    node = fleet.nodes.get(node_id)
    return node is not None and node.routable


async def _unhealthy(fleet: Any, node_id: str) -> bool:
    node = fleet.nodes.get(node_id)
    return node is not None and not node.snapshot.ollama_healthy
