"""Label routing end to end: an edge started with --labels serves only the hosts carrying them
(what it routes to, and what it lists), and a request's X-Hops-Labels narrows any edge's choice;
matching is exact, and a label no host carries is a 404, not a wait."""

from __future__ import annotations

import httpx
import pytest

from tests.integration import fleet
from tests.integration.fleet import wait_until

pytestmark = pytest.mark.slow

CHAT = {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}], "stream": False}


def _names(base: str, headers: dict[str, str] | None = None) -> set[str]:
    listed = httpx.get(base + "/api/tags", headers=headers, timeout=10).json()["models"]
    return {m["name"] for m in listed}


def _loaded(sim_url: str) -> set[str]:
    return {m["name"] for m in httpx.get(sim_url + "/api/ps", timeout=10).json()["models"]}


def test_an_edge_and_a_request_route_only_to_hosts_with_their_labels() -> None:
    hosts = {"eu": ["--profile", "gpu-8g"], "us": ["--profile", "gpu-24g"]}
    labelled = {"eu": ["--label", "zone=eu-west"], "us": ["--label", "zone=us"]}
    with (
        fleet.whole_fleet(hosts, agent_args_of=labelled) as running,
        fleet.edge([running.plane.url], ["--labels", "zone=eu-west"]) as eu_edge,
    ):
        anywhere, eu = running.edge.url, eu_edge.url
        wait_until(lambda: _names(eu), 5.0, "the eu edge has an inventory")
        # The eu edge lists and reaches the eu host only: the 32b is on the us host alone.
        assert "qwen2.5:32b" in _names(anywhere)
        assert "qwen2.5:32b" not in _names(eu) and "llama3.2:latest" in _names(eu)
        for _ in range(3):
            answer = httpx.post(eu + "/api/chat", json=CHAT, timeout=30)
            assert answer.status_code == 200 and answer.headers["x-hops-node"] == "eu"
        missing = httpx.post(eu + "/api/chat", json={**CHAT, "model": "qwen2.5:32b"}, timeout=30)
        assert missing.status_code == 404
        assert missing.json() == {"error": "model 'qwen2.5:32b' not found"}
        named = httpx.post(eu + "/api/chat", json=CHAT, headers={"X-Hops-Node": "us"}, timeout=30)
        assert named.status_code == 404
        assert named.json() == {"error": "node 'us' does not carry the labels zone=eu-west"}
        wider = httpx.post(eu + "/api/chat", json=CHAT, headers={"X-Hops-Labels": "zone=us"})
        assert wider.status_code == 400
        assert wider.json() == {
            "error": "X-Hops-Labels asks zone=us, but this edge serves only hosts with zone=eu-west"
        }
        # Any edge: a request's labels choose the hosts, matched exactly.
        us = {"X-Hops-Labels": "zone=us"}
        for _ in range(3):
            answer = httpx.post(anywhere + "/api/chat", json=CHAT, headers=us, timeout=30)
            assert answer.status_code == 200 and answer.headers["x-hops-node"] == "us"
        assert _names(anywhere, {"X-Hops-Labels": "zone=eu-west"}) == _names(eu)
        for prefix in ("zone=eu", "zone=west", "zone=us,tier=big"):
            refused = httpx.post(
                anywhere + "/api/chat", json=CHAT, headers={"X-Hops-Labels": prefix}, timeout=30
            )
            assert refused.status_code == 404, prefix
            assert refused.json() == {"error": "model 'llama3.2' not found"}
        bad = httpx.post(anywhere + "/api/chat", json=CHAT, headers={"X-Hops-Labels": "zone"})
        assert bad.status_code == 400
        assert bad.json() == {"error": "X-Hops-Labels: expected KEY=VALUE, got 'zone'"}
        # An unload through the eu edge reaches the eu host only: the us host keeps its model.
        assert (
            _loaded(running.sim_url("eu")) == _loaded(running.sim_url("us")) == {"llama3.2:latest"}
        )
        stop = {"model": "llama3.2", "prompt": "", "keep_alive": 0}
        assert httpx.post(eu + "/api/generate", json=stop, timeout=30).status_code == 200
        assert _loaded(running.sim_url("eu")) == set()
        assert _loaded(running.sim_url("us")) == {"llama3.2:latest"}
        # Without a control plane, the eu edge still routes from its last inventory, to eu only.
        running.plane.stop()
        for _ in range(3):
            served = httpx.post(eu + "/api/chat", json=CHAT, timeout=30)
            assert served.status_code == 200
            assert (served.headers["x-hops-node"], served.headers["x-hops-route"]) == (
                "eu",
                "fail-open",
            )
