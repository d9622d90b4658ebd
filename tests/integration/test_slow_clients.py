"""Slow and stalled clients against a real edge process: a body that never finishes gets a 408
in Ollama's shape within --body-timeout and holds no lease; a client that reads its stream
slowly still gets every byte; one that stops reading does not stall anyone else."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.integration import fleet
from tests.integration.fleet import wait_until

pytestmark = pytest.mark.slow


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def dechunk(framed: bytes) -> bytes:
    body, rest = b"", framed
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        body, rest = body + rest[:size], rest[size + 2 :]
    return body


def test_slow_and_stalled_clients() -> None:
    hosts = {"big": ["--profile", "gpu-24g"]}
    with fleet.whole_fleet(hosts, edge_args=["--body-timeout", "0.5"]) as running:
        # A body that stops half way: 408, and nothing was routed for it.
        stalled = _raw(running.edge.url)
        stalled.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"model": "llama3.2", '
        )
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            data = stalled.recv(4096)
            if not data:
                break
            answer += data
        stalled.close()
        assert time.monotonic() - started < 5
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408")
        assert json.loads(body) == {"error": "request body not received within 0.5s"}
        assert running.open_leases() == 0

        # A client that reads a long stream a trickle at a time gets all of it.
        slow = _raw(running.edge.url)
        request = json.dumps(
            {"model": "llama3.2", "prompt": "long", "options": {"num_predict": 300}}
        ).encode()
        slow.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
            % (len(request), request)
        )
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

        # Meanwhile others are served normally.
        for _ in range(5):
            reply = httpx.post(
                running.edge.url + "/api/generate",
                json={"model": "llama3.2", "prompt": "hi", "stream": False},
                timeout=30,
            )
            assert reply.status_code == 200 and reply.json()["done"]

        received = b""
        while True:
            data = slow.recv(512)
            if not data:
                break
            received += data
            time.sleep(0.001)
        slow.close()
        lines = [
            json.loads(x)
            for x in received.partition(b"\r\n\r\n")[2].split(b"\n")
            if x.startswith(b"{")
        ]
        assert lines[-1]["done"] is True
        assert lines[-1]["eval_count"] == len(lines) - 1  # one line per token, none lost
        wait_until(lambda: running.open_leases() == 0, 5.0, "leases released")
