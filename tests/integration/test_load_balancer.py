"""Two edge replicas behind a real nginx, configured with the file shipped in deploy/nginx:
requests flow through both, fleet-wide reads agree, and stopping one edge under load loses no
request (nginx retries what had not started on the other; what had started finishes)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import nginx as nginxrun
from tests.integration import fleet
from tests.integration.fleet import wait_until

pytestmark = pytest.mark.slow

SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "nginx" / "hops.conf"


@contextlib.contextmanager
def nginx(edge_urls: list[str], workdir: Path) -> Iterator[str]:
    """Run nginx with the shipped config; only the addresses change (loopback, ephemeral)."""
    conf = SHIPPED.read_text()
    names = re.findall(r"server (edge-\d+):11434", conf)
    assert len(names) == len(edge_urls) == 2
    for name, url in zip(names, edge_urls, strict=True):
        conf = conf.replace(f"server {name}:11434", f"server {url.removeprefix('http://')}")
    port = nginxrun.free_port()
    assert "listen 11434;" in conf
    conf = conf.replace("listen 11434;", f"listen 127.0.0.1:{port};")
    with nginxrun.running(conf, port, workdir):
        yield f"http://127.0.0.1:{port}"


def requests_served(edge_url: str) -> float:
    text = httpx.get(edge_url + "/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("hops_edge_requests_total{")
    )


def generate(client: httpx.Client, url: str) -> str:
    """One streamed generation; '' when it arrived whole, else what went wrong."""
    body = {"model": "llama3.2", "prompt": "hello", "options": {"num_predict": 8}}
    try:
        with client.stream("POST", url + "/api/generate", json=body, timeout=60) as response:
            if response.status_code != 200:
                return f"status {response.status_code}: {response.read()[:200]!r}"
            lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    if not lines or not lines[-1].get("done") or lines[-1].get("eval_count") != 8:
        return f"incomplete: {lines[-1:]}"
    return ""


def test_two_edges_behind_nginx(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        running = stack.enter_context(fleet.whole_fleet({"big": ["--profile", "gpu-24g"]}))
        second = stack.enter_context(fleet.edge([running.plane.url]))
        first = running.edge
        lb = stack.enter_context(nginx([first.url, second.url], tmp_path))

        with httpx.Client() as client:
            for _ in range(10):
                assert generate(client, lb) == ""
        assert requests_served(first.url) >= 3 and requests_served(second.url) >= 3

        tags = [httpx.get(u + "/api/tags", timeout=5).json() for u in (first.url, second.url, lb)]
        assert tags[0] == tags[1] == tags[2] and tags[0]["models"]

        failures: list[str] = []
        done = [0]
        stop = threading.Event()

        def client_loop() -> None:
            with httpx.Client() as client:
                while not stop.is_set():
                    problem = generate(client, lb)
                    if problem:
                        failures.append(problem)
                    done[0] += 1

        threads = [threading.Thread(target=client_loop) for _ in range(16)]
        for t in threads:
            t.start()
        wait_until(lambda: done[0] >= 40, 30.0, "load running")
        before = done[0]
        # SIGTERM: graceful (uvicorn re-raises the signal once it has shut down)
        assert first.stop(timeout=40) in (0, -signal.SIGTERM)
        wait_until(lambda: done[0] >= before + 80, 60.0, "load continues on the other edge")
        stop.set()
        for t in threads:
            t.join(60)
        assert failures == [], failures[:5]
        assert done[0] >= before + 80
