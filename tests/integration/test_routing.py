"""A quick version of bench/routing.py: the ordering, not the timings."""

from __future__ import annotations

import argparse

import pytest

from bench.routing import medians, run_one

pytestmark = pytest.mark.slow


def test_memory_aware_loads_fewer_models_than_random() -> None:
    args = argparse.Namespace(
        seed=7, requests=40, time_scale=10.0, trace=True, api="ollama", no_stream=False
    )
    results = {policy: run_one(policy, "middle", args) for policy in ("random", "memory_aware")}
    for result in results.values():
        assert result["failed"] == 0, result["errors"]
        assert result["completed"] == 40
    assert results["memory_aware"]["loads"] < results["random"]["loads"]
    assert results["memory_aware"]["evictions"] < results["random"]["evictions"]
    trace = results["memory_aware"]["trace"]  # arrival, model, node, X-Hops-Route, TTFT, error
    assert len(trace) == 40
    assert all(node and route for _, _, node, route, _, _ in trace)
    assert any(route.startswith("cold") for *_, route, _, _ in trace)


def test_repeated_runs_report_each_figures_median_and_keep_every_run() -> None:
    def run(loads: int, p95: float, node_share: int) -> dict[str, object]:
        return {
            "policy": "memory_aware",
            "level": "middle",
            "rate_per_s": 0.5,
            "completed": 120,
            "failed": 0,
            "errors": [] if loads < 20 else ["boom"],
            "ttft_s": {"p50": 0.1, "p95": p95, "p99": p95 + 1},
            "latency_s": {"p50": 1.0, "p95": 8.0, "p99": 9.0},
            "loads": loads,
            "evictions": loads - 4,
            "goodput_tokens_per_s": 38.0,
            "by_node": {"gpu-24g": node_share, "gpu-8g": 120 - node_share},
        }

    runs = [run(17, 5.2, 40), run(14, 4.9, 60), run(20, 6.1, 50)]
    result = medians(runs)
    assert (result["loads"], result["evictions"]) == (17, 13)
    assert result["ttft_s"] == {"p50": 0.1, "p95": 5.2, "p99": 6.2}
    assert result["by_node"] == {"gpu-24g": 50, "gpu-8g": 70}
    assert result["errors"] == ["boom"] and result["runs"] == runs
