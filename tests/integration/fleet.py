"""Real HOPS processes on loopback for integration tests: control planes, simulated hosts and
agents, each started with a bounded wait and stopped when the test's ExitStack closes."""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import grpc
from hops.v1 import admin_pb2_grpc, router_pb2_grpc

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
