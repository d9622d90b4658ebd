"""A quick version of bench/routing.py: the ordering, not the timings."""

from __future__ import annotations

import argparse
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from bench.routing import medians, run_one, targets
from tests.integration import fleet
from tests.integration.fleet import wait_until

pytestmark = pytest.mark.slow


def test_memory_aware_loads_fewer_models_than_random() -> None:
    # Each chat's client asks a show first, as `ollama run` does: shows must not count as loads.
    args = argparse.Namespace(
        seed=7,
        requests=40,
        time_scale=10.0,
        trace=True,
        api="ollama",
        no_stream=False,
        show_first=True,
    )
    results = {policy: run_one(policy, "middle", args) for policy in ("random", "memory_aware")}
    for result in results.values():
        assert result["failed"] == 0, result["errors"]
        assert result["completed"] == 40
    assert results["memory_aware"]["loads"] < results["random"]["loads"]
    assert results["memory_aware"]["evictions"] < results["random"]["evictions"]
    # Conversations go back where their earlier turns are cached (a model kept warm on one host,
    # and affinity among its hosts): more of their prompts found in the hosts' caches.
    shares = {policy: r["prompt_cached_share"] for policy, r in results.items()}
    assert shares["memory_aware"] > shares["random"], shares
    trace = results["memory_aware"]["trace"]  # arrival, model, node, X-Hops-Route, TTFT, error
    assert len(trace) == 40
    assert all(node and route for _, _, node, route, _, _ in trace)
    assert any(route.startswith("cold") for *_, route, _, _ in trace)


def test_repeated_runs_report_each_figures_median_and_keep_every_run() -> None:
    def run(loads: int, p95: float, node_share: int) -> dict[str, object]:
        return {
            "policy": "memory_aware",
            "level": "middle",
            "seed": 7,
            "rate_per_s": 0.5,
            "completed": 120,
            "failed": 0,
            "errors": [] if loads < 20 else ["boom"],
            "ttft_s": {"p50": 0.1, "p95": p95, "p99": p95 + 1},
            "latency_s": {"p50": 1.0, "p95": 8.0, "p99": 9.0},
            "loads": loads,
            "evictions": loads - 4,
            "goodput_tokens_per_s": 38.0,
            "prompt_cached_share": 0.3,
            "by_node": {"gpu-24g": node_share, "gpu-8g": 120 - node_share},
        }

    runs = [run(17, 5.2, 40), run(14, 4.9, 60), run(20, 6.1, 50)]
    result = medians(runs)
    assert (result["loads"], result["evictions"], result["seed"]) == (17, 13, 7)
    assert result["ttft_s"] == {"p50": 0.1, "p95": 5.2, "p99": 6.2}
    assert result["by_node"] == {"gpu-24g": 50, "gpu-8g": 70}
    assert result["errors"] == ["boom"] and result["runs"] == runs


def test_targets_are_checked_per_seed_against_random_and_the_best_other_policy() -> None:
    def result(
        seed: int, policy: str, loads: int, p95: float, level: str = "middle"
    ) -> dict[str, object]:
        failed = 1 if (seed, policy) == (8, "memory_aware") else 0
        return {
            "seed": seed,
            "policy": policy,
            "level": level,
            "loads": loads,
            "failed": failed,
            "ttft_s": {"p50": 0.1, "p95": p95, "p99": p95 + 1},
        }

    results = [
        result(7, "memory_aware", 5, 1.0, level="low"),
        result(7, "random", 60, 9.4),
        result(7, "round_robin", 70, 7.0),
        result(7, "least_busy", 55, 6.12),
        result(7, "memory_aware", 17, 5.02),
        result(8, "random", 58, 10.86),
        result(8, "memory_aware", 20, 4.95),
        result(9, "memory_aware", 18, 6.1),  # no random run: nothing to check
    ]
    seven, eight = targets(results)
    assert seven["seed"] == 7 and eight["seed"] == 8
    assert (seven["loads_ratio"], seven["p95_ratio"]) == (3.53, 1.87)
    assert seven["p95_best_other_s"] == 6.12
    assert seven["met"] == {"loads": True, "p95": False, "beats_others": True, "no_failures": True}
    assert (eight["loads_ratio"], eight["p95_ratio"]) == (2.9, 2.19)
    assert eight["p95_best_other_s"] is None and eight["failed_low_middle"] == 1
    assert eight["met"] == {"loads": False, "p95": True, "beats_others": None, "no_failures": False}


def test_a_long_prompt_waits_for_the_busy_gpu_and_a_short_one_takes_the_cpu() -> None:
    """End to end: the edge sends each request's prompt size, the control plane weighs its
    evaluation on each host. With the GPU host at its cap, a 3,000-token prompt waits for it
    (about a minute of prompt on the CPU host), a short chat takes the CPU host at once."""
    # Real time, and GPU replies long enough to hold its one slot until released.
    hosts = {
        "gpu": ["--profile", "gpu-8g", "--time-scale", "1", "--response-tokens", "5000-5000"],
        "cpu": ["--profile", "cpu", "--time-scale", "1"],
    }
    with fleet.whole_fleet(
        hosts,
        agent_args_of={"gpu": ["--max-in-flight", "1"]},
        plane_args=["--admission-wait", "20"],
    ) as running:
        base = running.edge.url

        def chat(words: int, node: str = "", predict: int = 20) -> dict[str, object]:
            return {
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "ask " + "word " * words}],
                "stream": False,
                "options": {"num_predict": predict},
            }

        metrics = fleet.metrics_url(running.plane)

        def held_back() -> bool:
            return 'result="waiting_for_better"' in httpx.get(metrics, timeout=5).text

        for node in ("gpu", "cpu"):  # load it on both; their decode speeds are learned
            for _ in range(2):
                warm = httpx.post(
                    base + "/api/chat", json=chat(5), headers={"X-Hops-Node": node}, timeout=60
                )
                assert warm.status_code == 200
        with httpx.Client(base_url=base, timeout=120) as client:
            holding = client.build_request(
                "POST", "/api/chat", json={**chat(5, predict=5000), "stream": True}
            )
            held = client.send(holding, stream=True)  # the GPU host's one request
            try:
                assert held.headers["x-hops-node"] == "gpu"
                short = client.post("/api/chat", json=chat(5))
                assert short.headers["x-hops-node"] == "cpu"
                assert "queued" not in short.headers["x-hops-route"]
                with ThreadPoolExecutor(1) as pool:
                    long = pool.submit(client.post, "/api/chat", json=chat(3000))
                    wait_until(held_back, 10.0, "the long prompt waiting in admission")
                    held.close()
                    answer = long.result(timeout=60)
            finally:
                held.close()
        assert answer.status_code == 200
        assert answer.headers["x-hops-node"] == "gpu"
        assert answer.headers["x-hops-route"].startswith("queued ")
