"""The dashboard in real headless Chromium (Debian chromium driven by npm playwright-core) against
a running fleet: it shows the real nodes and models, and changes when a model is loaded or a node
leaves. A screenshot is kept in test-artifacts/dashboard.png."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.browser import browser
from tests.integration import fleet

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"


def test_dashboard_shows_the_fleet_live() -> None:
    hosts = {
        "big": ["--profile", "gpu-24g", "--version", "0.15.5"],
        "laptop": ["--profile", "gpu-8g", "--context-length", "8192"],
    }
    declared = {"laptop": ["--context-length", "8192"]}  # the host's OLLAMA_CONTEXT_LENGTH
    with fleet.whole_fleet(hosts, agent_args_of=declared) as running, browser() as page:
        url = fleet.metrics_url(running.plane).removesuffix("/metrics") + "/"
        page.do(op="goto", url=url)
        for node in ("big", "laptop"):
            page.do(op="wait", selector=f'[data-node="{node}"] .state', text="online")
        # The length a request naming no num_ctx gets, from Ollama 0.15.5's VRAM tiers.
        page.do(
            op="wait",
            selector='[data-node="big"] .context',
            text="context: 32768 tokens for a request naming none (by VRAM)",
        )
        page.do(
            op="wait",
            selector='[data-node="laptop"] .context',
            text="context: 8192 tokens for a request naming none (declared)",
        )
        installed = page.do(op="texts", selector='[data-node="laptop"] tr.installed td:first-child')
        assert "llama3.2:latest" in installed["texts"]
        assert page.do(op="texts", selector='[data-node="big"] tr.loaded')["texts"] == []

        # A model loaded through the edge appears on its host, with a routing decision.
        reply = httpx.post(
            running.edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "hi", "stream": False},
            timeout=60,
        )
        assert reply.status_code == 200
        served_by = reply.headers["x-hops-node"]
        page.do(
            op="wait",
            selector=f'[data-node="{served_by}"] tr.loaded',
            text="llama3.2:latest",
        )
        page.do(op="wait", selector="#recent tr.decision", text=served_by)
        page.do(  # the decode speed learned from the host's own counters
            op="wait",
            selector=f'[data-node="{served_by}"] tr.loaded td:nth-child(4)',
            pattern=r"^\d+(\.\d)?$",
        )
        prompt_speed = f'[data-node="{served_by}"] tr.loaded td:nth-child(5)'
        assert page.do(op="texts", selector=prompt_speed)["texts"] == ["-"]  # "hi": too short
        # A prompt long enough to time shows the prompt speed learned there.
        reply = httpx.post(
            running.edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "word " * 400, "stream": False},
            headers={"X-Hops-Node": served_by},
            timeout=60,
        )
        assert reply.status_code == 200
        page.do(op="wait", selector=prompt_speed, pattern=r"^\d+(\.\d)?$")
        ARTIFACTS.mkdir(exist_ok=True)
        page.do(op="screenshot", path=str(ARTIFACTS / "dashboard.png"))

        # A host failing shows why, in its own words.
        other = "laptop" if served_by == "big" else "big"
        httpx.put(running.sim_url(other) + "/_sim/fault", json={"mode": "error"}, timeout=5)
        failed = httpx.post(
            running.edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "hi", "stream": False},
            headers={"X-Hops-Node": other},
            timeout=60,
        )
        assert failed.status_code == 500
        page.do(
            op="wait",
            selector=f'[data-node="{other}"] .failure',
            text="last failure (1 in a row): http 500: llama runner process has terminated",
        )

        # A node whose agent stops shows as offline.
        index = list(hosts).index(other)
        running.agents[index].stop()
        page.do(op="wait", selector=f'[data-node="{other}"] .state', text="offline")
        assert page.do(op="errors")["errors"] == []
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_state_endpoint_treats_names_as_data() -> None:
    """Model and node names reach the page as JSON strings; the page only ever sets text."""
    page = (ROOT / "controlplane" / "dashboard.html").read_text()
    assert "innerHTML" not in page and "insertAdjacentHTML" not in page
