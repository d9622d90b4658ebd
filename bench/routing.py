"""Does memory-aware routing beat the peers' policies on an unlike fleet? Measured, seeded.

Method: for each policy and load level a fresh fleet on loopback (control plane, four unlike
simulated hosts gpu-24g / gpu-12g / gpu-8g / cpu with their agents, one edge), so every run
starts cold. A seeded client sends multi-turn chat sessions over five models of different sizes
with skewed popularity, Poisson arrivals at the level's rate. The simulators run --time-scale X
faster than real time; all times below are converted back to simulated (real-hardware) seconds.
Reported per policy and level: completed and failed requests, time to first token and end-to-end
latency p50/p95/p99, model loads and evictions (the simulators' own counters), goodput tokens/s,
and the share of prompt tokens the hosts' prompt caches held (the edge's sums of what replies
said): earlier turns of a conversation cost nothing on the host that served them.

With --api openai the clients stream /v1/chat/completions as the OpenAI SDK does, whose replies
carry none of Ollama's durations: the fleet learns its speeds from the edge's own timing.

With --seeds, the whole run is made once per seed, and the issue's targets are checked per seed
(memory_aware against the others at the middle level): how often a target holds over workloads,
not only on the default one.

Usage: python bench/routing.py [--quick] [--seed 7 | --seeds 7,8,9] [--repeat N] [--trace]
                               [--json PATH] [--png PATH] [--api ollama|openai] [--no-stream]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration import fleet

POLICIES = ("random", "round_robin", "least_busy", "memory_aware")
# (model, popularity): five sizes, Zipf-like skew; not every host has every model.
MODELS = (
    ("llama3.2:latest", 0.35),
    ("llama3.1:8b", 0.25),
    ("qwen2.5:7b", 0.18),
    ("qwen2.5:14b", 0.14),
    ("qwen2.5:32b", 0.08),
)
HOSTS = {
    "gpu-24g": ["--profile", "gpu-24g"],
    "gpu-12g": ["--profile", "gpu-12g"],
    "gpu-8g": ["--profile", "gpu-8g"],
    "cpu": ["--profile", "cpu"],
}
# Every simulator's flags but its profile and time scale: replies of 40-120 tokens, two slots.
SIM_ARGS = ("--response-tokens", "40-120", "--num-parallel", "2")
LEVELS = {"low": 0.25, "middle": 0.5, "high": 1.0}  # simulated requests per second
# A result's single figures; with --repeat, each is the median over the runs.
SCALARS = (
    "completed",
    "failed",
    "loads",
    "evictions",
    "goodput_tokens_per_s",
    "prompt_cached_share",
)
# The targets at the middle level, memory_aware against random: this many times fewer
# loads and this many times lower p95 time to first token.
LOADS_TARGET = 3.0
P95_TARGET = 2.0


@dataclass
class Sample:
    ok: bool
    ttft: float = 0.0
    total: float = 0.0
    tokens: int = 0
    node: str = ""
    error: str = ""
    route: str = ""  # X-Hops-Route: why the edge chose the node
    model: str = ""
    at: float = 0.0  # arrival, simulated seconds from the start


@dataclass
class Workload:
    seed: int
    requests: int
    rate: float
    sessions: dict[str, list[list[dict[str, str]]]] = field(default_factory=dict)

    def plan(self) -> list[tuple[float, str, int]]:
        """(arrival offset in simulated seconds, model, session index) per request."""
        rng = random.Random(self.seed)
        names = [m for m, _ in MODELS]
        weights = [w for _, w in MODELS]
        at, out, counts = 0.0, [], {m: 0 for m in names}
        for _ in range(self.requests):
            at += rng.expovariate(self.rate)
            model = rng.choices(names, weights)[0]
            if counts[model] and rng.random() < 0.6:
                session = rng.randrange(counts[model])  # another turn of an earlier chat
            else:
                session, counts[model] = counts[model], counts[model] + 1
            out.append((at, model, session))
        return out


async def one_request(
    client: httpx.AsyncClient,
    model: str,
    messages: list[dict[str, str]],
    session: str,
    scale: float,
    api: str = "ollama",
    stream: bool = True,
) -> Sample:
    """One chat turn, streamed: on Ollama's /api/chat, or (``api`` "openai") on
    /v1/chat/completions as the OpenAI SDK sends it by default, with no stream_options, so the
    reply carries neither Ollama's durations nor a usage object. Not ``stream``: one JSON
    reply, whose first byte is its last (the OpenAI one has usage, no durations)."""
    openai = api == "openai"
    body = {"model": model, "messages": messages, "stream": stream}
    if not stream:
        return await _one_reply(client, body, session, scale, openai)
    started = time.perf_counter()
    first, tokens, ended = 0.0, 0, False
    try:
        async with client.stream(
            "POST",
            "/v1/chat/completions" if openai else "/api/chat",
            json=body,
            headers={"X-Hops-Session": session},
        ) as response:
            if response.status_code != 200:
                await response.aread()
                return Sample(False, error=f"http {response.status_code}")
            async for line in response.aiter_lines():
                if openai and not line.startswith("data: "):
                    continue  # the blank line between events
                if not first:
                    first = time.perf_counter()
                if openai and line == "data: [DONE]":
                    ended = True
                    break
                chunk = json.loads(line.removeprefix("data: ") if openai else line)
                if "error" in chunk:
                    return Sample(False, error=str(chunk["error"]))
                if openai:  # one event per token; the last one, finish_reason, has none
                    choices = chunk["choices"]
                    tokens += bool(choices and choices[0]["delta"].get("content"))
                elif chunk.get("done"):
                    ended, tokens = True, int(chunk.get("eval_count", 0))
            if not ended:
                return Sample(False, error="no final chunk")
            return Sample(
                True,
                (first - started) * scale,
                (time.perf_counter() - started) * scale,
                tokens,
                response.headers.get("x-hops-node", ""),
                route=response.headers.get("x-hops-route", ""),
            )
    except httpx.HTTPError as exc:
        return Sample(False, error=type(exc).__name__)


async def _one_reply(
    client: httpx.AsyncClient, body: dict[str, Any], session: str, scale: float, openai: bool
) -> Sample:
    """One chat turn not streamed: its time to the first byte is its whole time."""
    started = time.perf_counter()
    try:
        response = await client.post(
            "/v1/chat/completions" if openai else "/api/chat",
            json=body,
            headers={"X-Hops-Session": session},
        )
    except httpx.HTTPError as exc:
        return Sample(False, error=type(exc).__name__)
    elapsed = (time.perf_counter() - started) * scale
    if response.status_code != 200:
        return Sample(False, error=f"http {response.status_code}")
    reply = response.json()
    if openai:
        tokens = int((reply.get("usage") or {}).get("completion_tokens", 0))
    elif reply.get("done"):
        tokens = int(reply.get("eval_count", 0))
    else:
        return Sample(False, error="not done")
    return Sample(
        True,
        elapsed,
        elapsed,
        tokens,
        response.headers.get("x-hops-node", ""),
        route=response.headers.get("x-hops-route", ""),
    )


async def drive(
    edge_url: str,
    workload: Workload,
    scale: float,
    api: str = "ollama",
    stream: bool = True,
    show_first: bool = False,
) -> tuple[list[Sample], float]:
    plan = workload.plan()
    histories: dict[tuple[str, int], list[dict[str, str]]] = {}
    samples: list[Sample] = []
    locks: dict[tuple[str, int], asyncio.Lock] = {}
    async with httpx.AsyncClient(base_url=edge_url, timeout=httpx.Timeout(600.0)) as client:
        start = time.perf_counter()

        async def send(at: float, model: str, index: int) -> None:
            await asyncio.sleep(max(start + at / scale - time.perf_counter(), 0))
            key = (model, index)
            async with locks.setdefault(key, asyncio.Lock()):  # turns of one chat are sequential
                history = histories.setdefault(key, [])
                if show_first and not history:  # as `ollama run` does before its first turn
                    shown = await client.post("/api/show", json={"model": model})
                    if shown.status_code != 200:
                        error = f"show: http {shown.status_code}"
                        samples.append(Sample(False, error=error, model=model, at=at))
                        return
                history.append({"role": "user", "content": f"turn {len(history)} of chat {index}"})
                sample = await one_request(
                    client, model, list(history), f"{model}/{index}", scale, api, stream
                )
                sample.model, sample.at = model, at
                if sample.ok:
                    history.append({"role": "assistant", "content": "..."})
                samples.append(sample)

        await asyncio.gather(*(send(at, model, index) for at, model, index in plan))
        elapsed = (time.perf_counter() - start) * scale
    return samples, elapsed


def prompt_cached_share(metrics: str) -> float:
    """Of the prompt tokens the hosts evaluated, the share their prompt caches held (the edge's
    counters of what the replies said): the conversations' earlier turns, where a session went
    back to the host that has them."""
    sums = {"hops_edge_prompt_tokens_total": 0.0, "hops_edge_prompt_cached_tokens_total": 0.0}
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name in sums:
                sums[sample.name] += sample.value
    prompt, cached = sums.values()
    return round(cached / prompt, 3) if prompt else 0.0


def pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * p))], 3)


def each_policy(
    run: Callable[[str, argparse.Namespace], dict[str, Any]],
    args: argparse.Namespace,
    detail: str,
) -> list[dict[str, Any]]:
    """``run`` once per policy of ``args.policies`` (comma-separated), each result printed as
    it comes, but for its per-request ``detail``."""
    results = []
    for policy in args.policies.split(","):
        result = run(policy, args)
        print(json.dumps({k: v for k, v in result.items() if k != detail}), flush=True)
        results.append(result)
    return results


def policy_fleet(
    hosts: dict[str, list[str]], policy: str, seed: int, slots: int
) -> contextlib.AbstractContextManager[fleet.Fleet]:
    """A fresh fleet of ``hosts`` (node id -> simulator args) whose control plane routes by
    ``policy`` (seeded), its agents declaring ``slots`` parallel slots; quiet logs."""
    return fleet.whole_fleet(
        hosts,
        plane_args=["--policy", policy, "--seed", str(seed)],
        agent_args=["--num-parallel", str(slots), "--log-level", "warning"],
        edge_args=["--log-level", "warning"],
    )


def run_one(policy: str, level: str, args: argparse.Namespace) -> dict[str, Any]:
    scale = args.time_scale
    sim_args = ["--time-scale", str(scale), *SIM_ARGS]
    hosts = {node: [*profile, *sim_args] for node, profile in HOSTS.items()}
    with policy_fleet(hosts, policy, args.seed, 2) as running:
        workload = Workload(args.seed, args.requests, LEVELS[level])
        samples, elapsed = asyncio.run(
            drive(running.edge.url, workload, scale, args.api, not args.no_stream, args.show_first)
        )
        stats = {
            node: httpx.get(running.sim_url(node) + "/_sim/stats").json() for node in running.hosts
        }
        cached_share = prompt_cached_share(httpx.get(running.edge.url + "/metrics").text)
    ok = [s for s in samples if s.ok]
    ttft = [s.ttft for s in ok]
    total = [s.total for s in ok]
    result = {
        "policy": policy,
        "level": level,
        "seed": args.seed,
        "rate_per_s": LEVELS[level],
        "completed": len(ok),
        "failed": len(samples) - len(ok),
        "errors": sorted({s.error for s in samples if not s.ok})[:5],
        "ttft_s": {"p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95), "p99": pct(ttft, 0.99)},
        "latency_s": {"p50": pct(total, 0.5), "p95": pct(total, 0.95), "p99": pct(total, 0.99)},
        "loads": sum(s["loads"] for s in stats.values()),
        "evictions": sum(s["evictions"] for s in stats.values()),
        "goodput_tokens_per_s": round(sum(s.tokens for s in ok) / elapsed, 2),
        "prompt_cached_share": cached_share,
        "by_node": {node: sum(1 for s in ok if s.node == node) for node in running.hosts},
    }
    if args.trace:  # every request in arrival order: where it went, why, how long it waited
        result["trace"] = [
            [round(s.at, 2), s.model, s.node, s.route, round(s.ttft, 3), s.error]
            for s in sorted(samples, key=lambda s: s.at)
        ]
    return result


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result from repeated runs of a policy and level: each figure's median, each run's
    own figures under "runs"."""

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    first = runs[0]
    return {
        "policy": first["policy"],
        "level": first["level"],
        "seed": first["seed"],
        "rate_per_s": first["rate_per_s"],
        **{key: median([r[key] for r in runs]) for key in SCALARS},
        **{
            key: {p: median([r[key][p] for r in runs]) for p in first[key]}
            for key in ("ttft_s", "latency_s")
        },
        "errors": sorted({e for r in runs for e in r["errors"]})[:5],
        "by_node": {node: median([r["by_node"][node] for r in runs]) for node in first["by_node"]},
        "runs": runs,
    }


def targets(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's targets, per seed with memory_aware and random at the middle level: loads
    and p95 time to first token against random's (ratios, higher is better), whether its p95
    beats the best of round_robin and least_busy (None when neither ran), and whether it failed
    no request at the low and middle levels that ran."""
    verdicts = []
    for seed in dict.fromkeys(r["seed"] for r in results):
        ran = {(r["policy"], r["level"]): r for r in results if r["seed"] == seed}
        ours, theirs = ran.get(("memory_aware", "middle")), ran.get(("random", "middle"))
        if ours is None or theirs is None:
            continue
        others = [
            ran[(p, "middle")]["ttft_s"]["p95"]
            for p in ("round_robin", "least_busy")
            if (p, "middle") in ran
        ]
        loads = theirs["loads"] / max(ours["loads"], 1)
        p95 = theirs["ttft_s"]["p95"] / max(ours["ttft_s"]["p95"], 1e-9)
        failed = sum(
            ran[("memory_aware", level)]["failed"]
            for level in ("low", "middle")
            if ("memory_aware", level) in ran
        )
        verdicts.append(
            {
                "seed": seed,
                "loads_ratio": round(loads, 2),
                "p95_ratio": round(p95, 2),
                "p95_s": ours["ttft_s"]["p95"],
                "p95_best_other_s": min(others) if others else None,
                "failed_low_middle": failed,
                "met": {
                    "loads": loads >= LOADS_TARGET,
                    "p95": p95 >= P95_TARGET,
                    "beats_others": ours["ttft_s"]["p95"] < min(others) if others else None,
                    "no_failures": failed == 0,
                },
            }
        )
    return verdicts


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(LEVELS)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    for policy in POLICIES:
        rows = [
            next(r for r in results if r["policy"] == policy and r["level"] == lvl)
            for lvl in levels
            if any(r["policy"] == policy and r["level"] == lvl for r in results)
        ]
        x = [r["level"] for r in rows]
        axes[0].plot(x, [r["ttft_s"]["p95"] for r in rows], marker="o", label=policy)
        axes[1].plot(x, [r["loads"] for r in rows], marker="o", label=policy)
        axes[2].plot(x, [r["goodput_tokens_per_s"] for r in rows], marker="o", label=policy)
    for ax, title in zip(
        axes, ("p95 time to first token (s)", "model loads", "goodput (tokens/s)"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("load level")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--seeds",
        help="comma-separated seeds: the whole run once per seed (fresh workload and fleet "
        "each), with the targets checked per seed; default: --seed alone",
    )
    parser.add_argument("--requests", type=int, default=120, help="requests per run")
    parser.add_argument(
        "--time-scale",
        type=float,
        help="how much faster than real time the simulators run (default 10; 1 with --api "
        "openai, whose replies the edge times by its own clock: at any other scale the fleet "
        "would learn loads and decoding that many times faster than the simulated hardware)",
    )
    parser.add_argument("--levels", default=",".join(LEVELS))
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--quick", action="store_true", help="middle level, 40 requests")
    parser.add_argument(
        "--api",
        choices=("ollama", "openai"),
        default="ollama",
        help="the clients' API: Ollama's /api/chat, or /v1/chat/completions as the OpenAI SDK "
        "streams it (no durations, no usage in the reply)",
    )
    parser.add_argument(
        "--no-stream",
        action="store_true",
        help="clients ask for one JSON reply, not a stream: its first byte is its last, so "
        "its TTFT is its whole time (an OpenAI one carries usage, no durations)",
    )
    parser.add_argument(
        "--show-first",
        action="store_true",
        help="each chat's client asks /api/show for its model before its first turn, as "
        "`ollama run` does (the show is not timed or counted as a request)",
    )
    parser.add_argument(
        "--trace", action="store_true", help="add each request's host, route reason and TTFT"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per policy and level (fresh fleet each); the figures are their medians and "
        "each run's own are kept under 'runs' (one run of a seed varies: see bench/README.md)",
    )
    parser.add_argument("--json", default="bench/results/routing.json")
    parser.add_argument("--png", help="the plot; default: --json's path with .png")
    args = parser.parse_args()
    if args.time_scale is None:
        args.time_scale = 1.0 if args.api == "openai" else 10.0
    if args.png is None:  # a run written elsewhere must not replace the committed plot
        args.png = str(Path(args.json).with_suffix(".png"))
    levels = ["middle"] if args.quick else args.levels.split(",")
    if args.quick:
        args.requests = 40
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    except ValueError:
        parser.error(f"--seeds takes whole numbers separated by commas, not {args.seeds!r}")
    results = []
    for seed in seeds:
        seeded = argparse.Namespace(**{**vars(args), "seed": seed})
        for level in levels:
            for policy in args.policies.split(","):
                runs = [run_one(policy, level, seeded) for _ in range(args.repeat)]
                result = runs[0] if len(runs) == 1 else medians(runs)
                print(json.dumps(result), flush=True)
                results.append(result)
    verdicts = targets(results)
    for v in verdicts:
        print(json.dumps(v), flush=True)
    report = {
        "benchmark": "routing",
        "seed": seeds[0],
        "seeds": seeds,
        "runs_per_result": args.repeat,
        "requests_per_run": args.requests,
        "time_scale": args.time_scale,
        "api": args.api,
        "streamed": not args.no_stream,
        "show_first": args.show_first,
        "results": results,
        "targets": verdicts,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if not args.quick and len(seeds) == 1:  # the plot is one workload's; a sweep's is its table
        with contextlib.suppress(ImportError):
            plot(results, Path(args.png))


if __name__ == "__main__":
    main()
