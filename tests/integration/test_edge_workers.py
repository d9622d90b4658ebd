"""An edge with --workers 2: two processes accept on one port, each with its own control-plane
session; SIGTERM to the first stops both after their open streams finish."""

from __future__ import annotations

import concurrent.futures
import contextlib
import signal

import httpx
import psutil
import pytest

from tests.integration import fleet
from tests.integration.fleet import wait_until

pytestmark = pytest.mark.slow


def _ask(url: str) -> int:
    body = {"model": "llama3.2", "prompt": "hi", "stream": False, "options": {"num_predict": 4}}
    with httpx.Client() as client:  # a new connection each time, so the kernel spreads them
        return client.post(url + "/api/generate", json=body, timeout=60).status_code


def _served(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def test_two_workers_share_the_port_and_stop_together() -> None:
    with fleet.whole_fleet({"big": ["--profile", "gpu-24g"]}, edge_args=["--workers", "2"]) as f:
        parent = psutil.Process(f.edge.popen.pid)
        (child,) = wait_until(parent.children, 5.0, "second worker forked")
        cp_port = int(f.plane.url.rsplit(":", 1)[1])

        def sessions(p: psutil.Process) -> int:
            return sum(1 for c in p.net_connections("tcp") if c.raddr and c.raddr.port == cp_port)

        wait_until(lambda: sessions(parent) and sessions(child), 5.0, "both talk to the plane")
        before = _served(child), _served(parent)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(_ask, [f.edge.url] * 64))
        assert codes == [200] * 64
        after = _served(child), _served(parent)
        assert after[0] - before[0] > 0.05 and after[1] - before[1] > 0.05  # both did work

        f.edge.popen.send_signal(signal.SIGTERM)
        assert f.edge.popen.wait(30) in (0, -signal.SIGTERM)
        wait_until(lambda: not child.is_running() or child.status() == "zombie", 5.0, "worker ends")
        with contextlib.suppress(psutil.NoSuchProcess):
            assert child.status() == "zombie"
