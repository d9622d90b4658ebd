"""Two control planes, agents on both, one killed under load: no request fails."""

from __future__ import annotations

import contextlib
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from hops.v1 import admin_pb2

from tests.integration import fleet
from tests.integration.fleet import wait_until

pytestmark = pytest.mark.slow


def test_killing_one_of_two_control_planes_under_load_fails_nothing() -> None:
    with contextlib.ExitStack() as stack:
        one = stack.enter_context(fleet.controlplane())
        two = stack.enter_context(fleet.controlplane())
        for node in ("a", "b"):
            host = stack.enter_context(fleet.sim())
            stack.enter_context(fleet.agent([one.url, two.url], host.url, node))
        for plane in (one, two):
            wait_until(
                lambda p=plane: (
                    len(
                        [
                            n
                            for n in fleet.admin(p.url)
                            .ListNodes(admin_pb2.ListNodesRequest())
                            .nodes
                            if n.state == admin_pb2.NODE_STATE_ONLINE
                        ]
                    )
                    == 2
                ),
                3.0,
                "both nodes on both",
            )
        edge = stack.enter_context(fleet.edge([one.url, two.url]))
        wait_until(lambda: httpx.get(edge.url + "/api/tags").status_code == 200, 3.0, "edge up")
        body = {"model": "llama3.2", "prompt": "x", "stream": False}
        statuses: list[int] = []
        lock = threading.Lock()

        def client(_: int) -> None:
            with httpx.Client(timeout=30) as http:
                for _ in range(15):
                    status = http.post(edge.url + "/api/generate", json=body).status_code
                    with lock:
                        statuses.append(status)

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(client, i) for i in range(4)]
            wait_until(lambda: len(statuses) >= 10, 10.0, "traffic flowing")
            one.popen.send_signal(signal.SIGKILL)
            for future in futures:
                future.result()
        assert len(statuses) == 60
        assert statuses == [200] * 60
        after = httpx.post(edge.url + "/api/generate", json=body, timeout=30)
        assert after.status_code == 200


def test_sigterm_lets_an_edge_finish_open_streams_then_exit() -> None:
    slow = ["--time-scale", "1", "--response-tokens", "300-300"]  # about a second of tokens
    with fleet.whole_fleet({"only": slow}) as running:
        edge = running.edge
        lines: list[str] = []
        with httpx.stream(
            "POST",
            edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "x"},
            timeout=30,
        ) as response:
            stream = response.iter_lines()
            lines.append(next(stream))
            edge.popen.send_signal(signal.SIGTERM)
            lines.extend(stream)
        assert '"done":true' in lines[-1] and len(lines) == 301  # finished, not cut
        # uvicorn re-raises the signal once it has shut down gracefully, so the exit is "by SIGTERM"
        assert edge.popen.wait(10) in (0, -signal.SIGTERM)
        with pytest.raises(httpx.ConnectError):
            httpx.get(edge.url + "/")


def test_sigterm_to_an_agent_takes_its_node_out_at_once() -> None:
    with fleet.whole_fleet({"a": [], "b": []}) as running:
        admin = fleet.admin(running.plane.url)
        agent = next(p for p in running.agents if "--node-id a" in " ".join(p.popen.args))
        agent.popen.send_signal(signal.SIGTERM)
        assert agent.popen.wait(10) == 0
        wait_until(
            lambda: (
                {n.node_id: n.state for n in admin.ListNodes(admin_pb2.ListNodesRequest()).nodes}[
                    "a"
                ]
                == admin_pb2.NODE_STATE_OFFLINE
            ),
            1.0,
            "node a offline",
        )


def test_an_edge_killed_with_streams_open_has_its_leases_released() -> None:
    endless = ["--time-scale", "1", "--response-tokens", "100000-100000", "--num-parallel", "4"]
    with fleet.whole_fleet({"only": endless}, agent_args=["--num-parallel", "4"]) as running:
        streams = []
        with contextlib.ExitStack() as opened:
            for _ in range(3):
                response = opened.enter_context(
                    httpx.stream(
                        "POST",
                        running.edge.url + "/api/generate",
                        json={"model": "llama3.2", "prompt": "x"},
                        timeout=30,
                    )
                )
                streams.append(response)
            wait_until(lambda: running.open_leases() == 3, 3.0, "three streams open")
            running.edge.popen.send_signal(signal.SIGKILL)
            wait_until(lambda: running.open_leases() == 0, 2.0, "leases released")


def test_sigterm_stops_a_control_plane_cleanly_and_agents_wait_for_it() -> None:
    with fleet.whole_fleet({"only": []}) as running:
        plane = running.plane
        port = int(plane.url.rsplit(":", 1)[1])
        wait_until(
            lambda: httpx.get(running.edge.url + "/api/tags").json()["models"],
            3.0,
            "the edge has an inventory",
        )
        plane.popen.send_signal(signal.SIGTERM)
        assert plane.popen.wait(15) == 0  # stops serving, finishes in-flight RPCs, exits
        served = httpx.post(
            running.edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "x", "stream": False},
        )
        assert served.status_code == 200  # the edge fails open meanwhile
        with fleet.controlplane(port=port) as again:
            wait_until(
                lambda: (
                    [
                        n.node_id
                        for n in fleet.admin(again.url)
                        .ListNodes(admin_pb2.ListNodesRequest())
                        .nodes
                    ]
                    == ["only"]
                ),
                5.0,
                "agent back",
            )
