"""A quick version of bench/routing.py: the ordering, not the timings."""

from __future__ import annotations

import argparse

import pytest

from bench.routing import run_one

pytestmark = pytest.mark.slow


def test_memory_aware_loads_fewer_models_than_random() -> None:
    args = argparse.Namespace(seed=7, requests=40, time_scale=10.0, trace=True)
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
