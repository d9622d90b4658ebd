"""An edge with --workers 2: two processes accept on one port, each with its own control-plane
session; SIGTERM to the first stops both after their open streams finish."""

from __future__ import annotations

import concurrent.futures
import contextlib
import re
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


def _serving_pids(output: str) -> set[str]:
    """The processes that logged a request line (the edge logs one per request, with its pid)."""
    return set(re.findall(r"pid=(\d+) request method=POST", output))


def test_two_workers_share_the_port_and_stop_together() -> None:
    with fleet.whole_fleet({"big": ["--profile", "gpu-24g"]}, edge_args=["--workers", "2"]) as f:
        parent = psutil.Process(f.edge.popen.pid)
        (child,) = wait_until(parent.children, 5.0, "second worker forked")
        cp_port = int(f.plane.url.rsplit(":", 1)[1])

        def sessions(p: psutil.Process) -> int:
            return sum(1 for c in p.net_connections("tcp") if c.raddr and c.raddr.port == cp_port)

        wait_until(lambda: sessions(parent) and sessions(child), 5.0, "both talk to the plane")
        # The kernel hands each new connection to whichever worker accepts first; keep asking
        # (bounded) until both have served, every answer a 200.
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for _ in range(20):
                assert list(pool.map(_ask, [f.edge.url] * 16)) == [200] * 16
                if _serving_pids(f.edge.output()) == {str(parent.pid), str(child.pid)}:
                    break
        assert _serving_pids(f.edge.output()) == {str(parent.pid), str(child.pid)}

        f.edge.popen.send_signal(signal.SIGTERM)
        assert f.edge.popen.wait(30) in (0, -signal.SIGTERM)
        wait_until(lambda: not child.is_running() or child.status() == "zombie", 5.0, "worker ends")
        with contextlib.suppress(psutil.NoSuchProcess):
            assert child.status() == "zombie"
