"""Real HOPS processes on loopback for integration tests: control planes, simulated hosts and
agents, each started with a bounded wait and stopped when the test's ExitStack closes."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
import httpx
from hops.v1 import admin_pb2, admin_pb2_grpc, router_pb2_grpc

from tests import procs

T = TypeVar("T")


def wait_until(check: Callable[[], T], within: float, what: str = "condition") -> T:
    """Poll ``check`` until it returns something truthy; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} not met within {within}s (last: {value!r})")
        time.sleep(0.02)


@contextlib.contextmanager
def controlplane(args: Sequence[str] = (), port: int = 0) -> Iterator[procs.Proc]:
    argv = [
        "--listen",
        f"127.0.0.1:{port}",
        "--metrics-listen",
        "127.0.0.1:0",
        "--keepalive-interval",
        "1",
        "--agent-timeout",
        "5",
        *args,
    ]
    with procs.running("controlplane", argv) as proc:  # proc.url is "127.0.0.1:PORT"
        yield proc


def metrics_url(plane: procs.Proc) -> str:
    match = re.search(r"metrics on (\S+)", plane.output())
    assert match, plane.output()
    return match.group(1)


@contextlib.contextmanager
def sim(args: Sequence[str] = ()) -> Iterator[procs.Proc]:
    argv = ["--listen", "127.0.0.1:0", "--time-scale", "50", "--log-level", "error", *args]
    with procs.running("ollamasim", argv) as proc:
        yield proc


@contextlib.contextmanager
def agent(
    controlplanes: Sequence[str], ollama_url: str, node_id: str, args: Sequence[str] = ()
) -> Iterator[procs.Proc]:
    argv = [
        "--controlplane",
        ",".join(controlplanes),
        "--ollama-url",
        ollama_url,
        "--node-id",
        node_id,
        "--poll-interval",
        "0.2",
        "--keepalive-interval",
        "1",
        "--backoff-min",
        "0.05",
        "--backoff-max",
        "0.5",
        "--gpu",
        "none",
        *args,
    ]
    proc = procs.start("nodeagent", argv)
    try:
        proc.wait_for(r"nodeagent node=")
        yield proc
    finally:
        proc.stop()


def admin(address: str) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(grpc.insecure_channel(address))


def router(address: str) -> router_pb2_grpc.RouterServiceStub:
    return router_pb2_grpc.RouterServiceStub(grpc.insecure_channel(address))


@contextlib.contextmanager
def edge(controlplanes: Sequence[str], args: Sequence[str] = ()) -> Iterator[procs.Proc]:
    argv = [
        "--listen",
        "127.0.0.1:0",
        "--controlplane",
        ",".join(controlplanes),
        "--connect-timeout",
        "1",
        *args,
    ]
    with procs.running("edge", argv) as proc:
        yield proc


@dataclass
class Fleet:
    """A whole fleet on loopback: control plane, simulated hosts with agents, one edge."""

    plane: procs.Proc
    edge: procs.Proc
    hosts: dict[str, procs.Proc]
    agents: list[procs.Proc]

    def sim_url(self, node_id: str) -> str:
        return self.hosts[node_id].url

    def open_leases(self) -> int:
        nodes = admin(self.plane.url).ListNodes(admin_pb2.ListNodesRequest()).nodes
        return sum(n.in_flight_total for n in nodes)


PROFILE_VRAM = {"gpu-24g": "24GiB", "gpu-12g": "12GiB", "gpu-8g": "8GiB"}


@contextlib.contextmanager
def whole_fleet(
    hosts: Mapping[str, Sequence[str]],
    *,
    plane_args: Sequence[str] = (),
    agent_args: Sequence[str] = (),
    edge_args: Sequence[str] = (),
    agent_args_of: Mapping[str, Sequence[str]] | None = None,
) -> Iterator[Fleet]:
    """``hosts`` maps node id -> ollamasim args (e.g. ["--profile", "gpu-8g"]);
    ``agent_args_of`` node id -> that host's own agent args (e.g. ["--label", "zone=eu"])."""
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(controlplane(plane_args))
        started = {}
        agents = []
        for node_id, sim_args in hosts.items():
            host = stack.enter_context(sim(sim_args))
            profile = next(
                (sim_args[i + 1] for i, a in enumerate(sim_args) if a == "--profile"), "gpu-24g"
            )
            gpu = (
                ["--gpu", "static", "--gpu-memory", PROFILE_VRAM[profile]]
                if profile in PROFILE_VRAM
                else ["--gpu", "none"]
            )
            agents.append(
                stack.enter_context(
                    agent(
                        [plane.url],
                        host.url,
                        node_id,
                        [*gpu, *agent_args, *(agent_args_of or {}).get(node_id, ())],
                    )
                )
            )
            started[node_id] = host
        stub = admin(plane.url)
        wait_until(
            lambda: (
                len(
                    [
                        n
                        for n in stub.ListNodes(admin_pb2.ListNodesRequest()).nodes
                        if n.state == admin_pb2.NODE_STATE_ONLINE and n.snapshot.installed
                    ]
                )
                == len(hosts)
            ),
            5.0,
            "fleet online",
        )
        front = stack.enter_context(edge([plane.url], edge_args))
        yield Fleet(plane, front, started, agents)


def warm_everywhere(
    running: Fleet, model: str, nodes: Iterable[str], route: str = "/api/generate"
) -> None:
    """Load ``model`` on each of ``nodes`` at its automatic context length (Ollama's empty
    request on ``route``: /api/embed for an embedding model; aimed with X-Hops-Node), and wait
    until the control plane lists it on all."""
    nodes = tuple(nodes)
    for node in nodes:
        loaded = httpx.post(
            running.edge.url + route,
            json={"model": model},
            headers={"X-Hops-Node": node},
            timeout=120,
        )
        loaded.raise_for_status()
    stub = admin(running.plane.url)

    def everywhere() -> bool:
        listed = stub.ListNodes(admin_pb2.ListNodesRequest()).nodes
        return all(
            any(m.name == model for m in n.snapshot.loaded) for n in listed if n.node_id in nodes
        )

    wait_until(everywhere, 10.0, f"{model} loaded on every host")
