"""Prometheus metrics of the edge, the control plane and the agent, scraped from real processes:
names follow Prometheus conventions, values reflect what happened, and every query in the shipped
Grafana dashboard names a metric that exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration import fleet
from tests.integration.fleet import wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "deploy" / "grafana" / "hops-dashboard.json"
NAME = re.compile(r"hops_(edge|controlplane|agent)_[a-z0-9_]+")


def scrape(url: str) -> dict[str, float]:
    """Sample name with sorted labels -> value; plus each family under its own type key."""
    text = httpx.get(url, timeout=5).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("hops_"):
            continue  # the client library's own process_* and python_* metrics
        assert NAME.fullmatch(family.name), family.name
        if family.type == "counter":
            assert not family.name.endswith("_total")  # the library adds it to samples
        if family.type == "histogram":
            assert family.name.endswith(("_seconds", "_bytes")), family.name
        if "memory" in family.name:
            assert family.name.endswith("_bytes"), family.name
        samples[f"#{family.type} {family.name}"] = 0.0
        for s in family.samples:
            if family.type == "counter" and s.name.endswith("_created"):
                continue
            if family.type == "counter":
                assert s.name.endswith("_total"), s.name
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def value(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, v in samples.items():
        sample, _, rest = key.partition("{")
        pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if p)
        if sample == name and all(pairs.get(k) == w for k, w in labels.items()):
            total += v
    return total


def test_metrics_of_every_binary_and_the_grafana_dashboard() -> None:
    hosts = {"big": ["--profile", "gpu-24g"]}
    agent_args = ["--metrics-listen", "127.0.0.1:0"]
    with fleet.whole_fleet(hosts, agent_args=agent_args) as running:
        reply = httpx.post(
            running.edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "hi", "stream": False},
            timeout=60,
        )
        assert reply.status_code == 200
        replies = [reply.json()]
        for _ in range(2):  # the same long prompt twice: the second finds it in the cache
            again = httpx.post(
                running.edge.url + "/api/generate",
                json={"model": "llama3.2", "prompt": "word " * 400, "stream": False},
                timeout=60,
            )
            assert again.status_code == 200
            replies.append(again.json())
        # An embed: its inputs are no prompt a cache keeps, so the token counts leave it out.
        embed = {"model": "llama3.2", "input": "word " * 300}
        assert httpx.post(running.edge.url + "/api/embed", json=embed, timeout=60).is_success
        agent_url = re.search(r"metrics on (\S+)", running.agents[0].output())
        assert agent_url, running.agents[0].output()
        plane = wait_until(
            lambda: (
                (s := scrape(fleet.metrics_url(running.plane)))
                and value(s, "hops_controlplane_loaded_models", node="big") == 1
                and value(s, "hops_controlplane_reports_total") == 4
                and s
            ),
            5.0,
            "control plane sees the model loaded and the reports",
        )
        agent = wait_until(
            lambda: (
                (s := scrape(agent_url.group(1)))
                and value(s, "hops_agent_loaded_models") == 1
                and s
            ),
            5.0,
            "agent sees the model loaded",
        )
        generated = sum(r["eval_count"] for r in replies)
        edge = wait_until(
            lambda: (
                (s := scrape(running.edge.url + "/metrics"))
                and value(s, "hops_edge_generated_tokens_total", node="big") == generated
                and s
            ),
            5.0,
            "the edge counted the replies' tokens",
        )

    assert value(plane, "hops_controlplane_picks_total", result="ok") == 4
    assert value(plane, "hops_controlplane_reports_total", outcome="ok") == 4
    assert value(plane, "hops_controlplane_nodes", state="online") == 1
    assert value(plane, "hops_controlplane_pick_duration_seconds_count") == 4
    assert value(plane, "hops_controlplane_route_streams") == 1  # the edge picks on its stream
    assert value(edge, "hops_edge_requests_total", route="/api/generate", status="200") == 3
    # The hosts' own counts, summed: how much was asked, generated, and found in the cache.
    for metric, field in (
        ("hops_edge_prompt_tokens_total", "prompt_eval_count"),
        ("hops_edge_prompt_cached_tokens_total", "prompt_eval_cached_count"),
        ("hops_edge_generated_tokens_total", "eval_count"),
    ):
        assert value(edge, metric, node="big") == sum(r[field] for r in replies), metric
    assert replies[-1]["prompt_eval_cached_count"] > 390
    assert value(agent, "hops_agent_ollama_up") == 1
    assert value(agent, "hops_agent_controlplane_connected") == 1
    assert value(agent, "hops_agent_gpu_memory_total_bytes") == 24 * 1024**3
    assert value(agent, "hops_agent_snapshots_total") >= 2  # empty at start, then loaded
    assert value(agent, "hops_agent_poll_duration_seconds_count") >= 2

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    known = set()
    for key in (*plane, *edge, *agent):
        if key.startswith("#"):
            kind, _, family = key[1:].partition(" ")
            known.update(family + suffix for suffix in suffixes[kind])
    dashboard = json.loads(GRAFANA.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    for expr in exprs:
        for name in re.findall(r"hops_[a-z0-9_]+", expr):
            assert name in known, f"Grafana queries {name}, which no HOPS binary exports"
