"""``make demo``'s script: the whole fleet comes up and serves, and stopping the script, by any
of the usual signals, stops every process it started."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.nginx import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _free_run(length: int) -> int:
    """The first of ``length`` consecutive free loopback ports (the demo's hosts take those)."""
    for _ in range(50):
        base = free_port()
        try:
            with contextlib.ExitStack() as held:
                for port in range(base, base + length):
                    s = held.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError(f"no {length} consecutive free ports")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_the_demo_serves_and_stopping_it_stops_the_whole_fleet(stop: signal.Signals) -> None:
    edge = free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "scripts/demo.py",
            "--port",
            str(edge),
            "--grpc-port",
            str(free_port()),
            "--dashboard-port",
            str(free_port()),
            "--sim-port",
            str(_free_run(4)),
            "--time-scale",
            "50",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    fleet: list[psutil.Process] = []
    try:
        models: list[object] = []
        for _ in range(300):  # up to 30 s for ten processes to start on a busy machine
            with contextlib.suppress(httpx.HTTPError):
                models = httpx.get(f"http://127.0.0.1:{edge}/api/tags", timeout=2).json()["models"]
            if models:
                break
            time.sleep(0.1)
        assert models, "the demo's edge never listed a model"
        reply = httpx.post(
            f"http://127.0.0.1:{edge}/api/generate",
            json={"model": "llama3.2", "prompt": "hi", "stream": False},
            timeout=30,
        )
        assert reply.status_code == 200 and reply.json()["done"] is True
        fleet = psutil.Process(demo.pid).children(recursive=True)
        assert len(fleet) == 10  # control plane, 4 hosts, 4 agents, edge
        demo.send_signal(stop)
        assert demo.wait(30) != 0
        _, alive = psutil.wait_procs(fleet, timeout=15)
        assert alive == [], f"left running: {[p.cmdline() for p in alive]}"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(10)
        for process in fleet:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
