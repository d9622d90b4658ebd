"""What the edge costs: the same load straight to a simulated Ollama host, through one HOPS edge
(with its real control plane and agent), and through nginx as a plain reverse proxy (the floor a C
proxy sets), side by side in one run.

Method (see bench/README.md): on a 2-core machine the host, the proxy under test and the load
generator compete for cores, so processes are pinned: the simulated host and the load generator
share core 0; the proxy under test (edge or nginx) and the control plane share core 1. The load
generator is raw asyncio sockets for streams (bench/loadgen.py) and `wrk` for small
non-streaming requests. Primary efficiency figures are CPU seconds per 1,000 requests of the edge
and of the control plane, measured from /proc during the wrk phase; ratios come from the same run.

Phases, for each target (direct, edge, nginx; and for time to first byte also edge_grpc, the
same edge with its control plane's route socket off, so picks travel by gRPC as they did before
the route socket):
  ttfb        time to first byte (response headers) at 1, 50 and 200 concurrent streams, in
              TTFB_ROUNDS rounds per concurrency with the targets' order rotated, pooled
              (the shared host drifts over minutes; rotating spreads that over all targets)
  stream      streamed chunks/s, 50 concurrent streams of 200 tokens
  small       non-streaming /api/generate (1 token) requests/s with wrk, 50 connections
then, for the edge only: resident memory with 1,000 concurrent open streams (and errors), the
share of the edge's time to first byte spent waiting for Pick, the control plane's Pick decision
time (share under 2 ms), and stream/small again with --workers 2.

Usage: python bench/overhead.py [--quick] [--json bench/results/overhead.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import RunSummary, run_streams, stream_once
from tests import nginx as nginxrun
from tests import procs

MODEL = "llama3.2"
TTFB_ROUNDS = 10  # each target's probes are split over this many rounds, order rotated
LOAD_CORE, PROXY_CORE = 0, 1


def pin(pid: int, core: int) -> None:
    if (os.cpu_count() or 1) > core and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(pid, {core})


def pin_tree(pid: int, core: int) -> None:
    proc = psutil.Process(pid)
    for p in (proc, *proc.children(recursive=True)):
        pin(p.pid, core)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            for p in (proc, *proc.children(recursive=True)):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def rss_bytes(pid: int) -> int:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in (proc, *proc.children(recursive=True)))


def streams(url: str, concurrency: int, total: int, tokens: int) -> RunSummary:
    body = {"model": MODEL, "prompt": "benchmark", "options": {"num_predict": tokens}}
    return asyncio.run(run_streams(url, "/api/generate", body, concurrency, total))


@dataclass
class Probed:
    """Time-to-first-byte probes of one target at one concurrency, pooled over rounds."""

    ttfbs: list[float] = field(default_factory=list)
    errors: int = 0
    broken: int = 0
    p50_by_round: list[float] = field(default_factory=list)

    def entry(self, concurrency: int) -> dict[str, Any]:
        return {
            "concurrency": concurrency,
            "probes": len(self.ttfbs) + self.errors,
            "errors": self.errors,
            "background_ended_early": self.broken,
            "ttfb_p50_ms": 1000 * percentile(self.ttfbs, 0.5),
            "ttfb_p99_ms": 1000 * percentile(self.ttfbs, 0.99),
            "ttfb_p50_ms_by_round": [round(1000 * v, 3) for v in self.p50_by_round],
        }


def ttfb_phase(
    url: str,
    concurrency: int,
    probes: int,
    into: Probed,
    snapshot: Callable[[], object] = lambda: None,
) -> tuple[object, object]:
    """Time to first byte of new requests while ``concurrency - 1`` other streams are open
    through the same target (the latency host decodes them at a moderate pace). Probes go one
    at a time, each on a new connection, so they measure the path, not a queue of probes.
    ``snapshot`` is called once the background streams are under way and after the probes."""
    hold = {"model": MODEL, "prompt": "background", "options": {"num_predict": 100_000}}
    probe = {"model": MODEL, "prompt": "probe", "options": {"num_predict": 1}}

    async def run() -> tuple[list[float], int, int, object, object]:
        waiting = concurrency - 1
        all_under_way = asyncio.Event()

        def under_way() -> None:
            nonlocal waiting
            waiting -= 1
            if not waiting:
                all_under_way.set()

        background = [
            asyncio.ensure_future(stream_once(url, "/api/generate", hold, under_way))
            for _ in range(concurrency - 1)
        ]
        # Probes start once every background stream is decoding: a probe sent while their
        # prompts are still evaluated waits behind them (about 2 s at 50 streams here).
        if background:
            await asyncio.wait_for(all_under_way.wait(), 60)
        before = snapshot()
        ttfbs, errors = [], 0
        for _ in range(probes):
            result = await stream_once(url, "/api/generate", probe)
            if result.error or result.status != 200 or not result.done:
                errors += 1
            else:
                ttfbs.append(result.ttfb)
        after = snapshot()
        broken = sum(1 for task in background if task.done())  # none may have ended yet
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        return ttfbs, errors, broken, before, after

    ttfbs, errors, broken, before, after = asyncio.run(run())
    into.ttfbs += ttfbs
    into.errors += errors
    into.broken += broken
    into.p50_by_round.append(percentile(ttfbs, 0.5))
    return before, after


def stream_phase(url: str, quick: bool) -> dict[str, float]:
    summary = streams(url, 50, 100 if quick else 300, 200)
    return {
        "streams": len(summary.results),
        "errors": summary.errors,
        "chunks_per_s": summary.chunks / summary.elapsed,
    }


WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = '{"model": "llama3.2", "prompt": "hi", "stream": false, "options": {"num_predict": 1}}'
wrk.headers["Content-Type"] = "application/json"
"""


def small_phase(url: str, seconds: int) -> dict[str, Any]:
    wrk = shutil.which("wrk")
    assert wrk, "wrk missing: make install (scripts/system-deps.sh) puts it in place"
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
    done = subprocess.run(
        [wrk, "-t1", "-c50", f"-d{seconds}s", "-s", f.name, url + "/api/generate"],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=lambda: pin(0, LOAD_CORE),
    )
    os.unlink(f.name)
    out = done.stdout
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": requests,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def scrape(url: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = out.get(name, 0.0) + float(value)
    return out


def hist(samples: dict[str, float], name: str) -> tuple[float, float, float]:
    """(count, sum, count at or under 2 ms) of a histogram summed over its labels."""
    count = sum(v for k, v in samples.items() if k.startswith(name + "_count"))
    total = sum(v for k, v in samples.items() if k.startswith(name + "_sum"))
    under = sum(
        v for k, v in samples.items() if k.startswith(name + "_bucket") and 'le="0.002"' in k
    )
    return count, total, under


@contextlib.contextmanager
def nginx(upstream: str, workdir: Path) -> Iterator[str]:
    """nginx as a plain streaming reverse proxy in front of ``upstream``."""
    port = nginxrun.free_port()
    address = upstream.removeprefix("http://")
    conf = (
        f"upstream host {{ server {address}; keepalive 256; }}\n"
        f"server {{\n  listen 127.0.0.1:{port};\n  location / {{\n"
        "    proxy_pass http://host;\n    proxy_http_version 1.1;\n"
        # Ollama on loopback answers a Host it does not know (here "host") with 403.
        f"    proxy_set_header Host {address};\n"
        '    proxy_set_header Connection "";\n    proxy_buffering off;\n'
        "    proxy_read_timeout 600s;\n  }\n}\n"
    )
    with nginxrun.running(conf, port, workdir) as proc:
        pin_tree(proc.pid, PROXY_CORE)
        yield f"http://127.0.0.1:{port}"


def open_streams_memory(edge: procs.Proc, count: int) -> dict[str, float]:
    """``count`` concurrent streams held open through the edge (the host decodes slowly)."""
    body = {"model": MODEL, "prompt": "hold", "options": {"num_predict": 30}}
    idle = rss_bytes(edge.popen.pid)
    peak = [idle]

    async def run() -> RunSummary:
        task = asyncio.ensure_future(run_streams(edge.url, "/api/generate", body, count, count))
        while not task.done():
            peak[0] = max(peak[0], rss_bytes(edge.popen.pid))
            await asyncio.sleep(0.2)
        return await task

    summary = asyncio.run(run())
    return {
        "streams": count,
        "errors": summary.errors,
        "edge_rss_idle_mb": idle / 2**20,
        "edge_rss_peak_mb": peak[0] / 2**20,
        "wall_s": summary.elapsed,
    }


@contextlib.contextmanager
def hops(
    sim_url: str, workers: int, route_socket: bool = True
) -> Iterator[tuple[procs.Proc, procs.Proc]]:
    env = {"HOPS_CP_LOG_LEVEL": "warning", "HOPS_EDGE_LOG_LEVEL": "warning"}
    if not route_socket:
        env["HOPS_CP_ROUTE_LISTEN"] = "off"
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(
            procs.running(
                "controlplane", ["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"], env
            )
        )
        agent = procs.start(
            "nodeagent",
            [
                "--controlplane",
                plane.url,
                "--ollama-url",
                sim_url,
                "--node-id",
                "host",
                "--gpu",
                "static",
                "--gpu-memory",
                "24GiB",
                "--num-parallel",
                "1000",
                "--max-in-flight",
                "100000",
                "--log-level",
                "warning",
            ],
        )
        stack.callback(agent.stop)
        edge = stack.enter_context(
            procs.running(
                "edge",
                ["--listen", "127.0.0.1:0", "--controlplane", plane.url, "--workers", str(workers)],
                env,
            )
        )
        for p in (plane, agent, edge):
            pin_tree(p.popen.pid, PROXY_CORE)
        for _ in range(200):
            tags = httpx.get(edge.url + "/api/tags", timeout=5).json()
            if tags["models"]:
                break
            time.sleep(0.05)
        yield plane, edge


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests (a smoke run)")
    parser.add_argument("--open-streams", type=int, default=1000)
    parser.add_argument("--json", default="bench/results/overhead.json")
    args = parser.parse_args()
    wrk_seconds = 3 if args.quick else 8
    probes = 60 if args.quick else 300
    base = ["--listen", "127.0.0.1:0", "--num-parallel", "2000", "--max-queue", "100000"]
    base += ["--log-level", "error"]
    # Latency host: time scale 10, so open streams decode at a moderate pace (about 1,500
    # chunks/s in all, shared as a GPU shares its memory bandwidth). Throughput host: scale 1000.
    latency_sim = [*base, "--time-scale", "10", "--response-tokens", "100000-100000"]
    fast_sim = [*base, "--time-scale", "1000", "--response-tokens", "200-200"]
    results: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "method": "host+loadgen pinned to core 0; edge (or nginx)+control plane+agent to core 1",
    }
    pin(0, LOAD_CORE)
    with tempfile.TemporaryDirectory() as tmp:
        with procs.running("ollamasim", latency_sim) as sim:
            pin_tree(sim.popen.pid, LOAD_CORE)
            httpx.post(sim.url + "/api/generate", json={"model": MODEL}, timeout=60)  # warm
            with (
                hops(sim.url, 1) as (plane, edge),
                hops(sim.url, 1, route_socket=False) as (grpc_plane, grpc_edge),
                nginx(sim.url, Path(tmp) / "a") as lb,
            ):
                targets = {
                    "direct": sim.url,
                    "edge": edge.url,
                    "edge_grpc": grpc_edge.url,
                    "nginx": lb,
                }
                stacks = {"edge": (edge, plane), "edge_grpc": (grpc_edge, grpc_plane)}
                for name, url in targets.items():
                    streams(url, 5, 10, 2)  # warm connections
                    results[name] = {"ttfb": []}

                def both(name: str) -> Callable[[], object]:
                    edge, plane = stacks[name]
                    return lambda: (scrape(edge.url + "/metrics"), scrape(metrics_url(plane)))

                for c in (1, 50, 200):
                    # Rounds with the targets' order rotated: a drift in the shared host or
                    # load generator over a phase then weighs on every target alike.
                    probed = {name: Probed() for name in targets}
                    picks: dict[str, list[tuple[object, object]]] = {n: [] for n in stacks}
                    for r in range(TTFB_ROUNDS):
                        first = r % len(targets)
                        names = list(targets)[first:] + list(targets)[:first]
                        for name in names:
                            ends = ttfb_phase(
                                targets[name],
                                c,
                                probes // TTFB_ROUNDS,
                                probed[name],
                                both(name) if name in stacks else lambda: None,
                            )
                            if name in stacks:
                                picks[name].append(ends)
                    for name in targets:
                        entry = probed[name].entry(c)
                        if name in stacks:
                            entry["pick"] = pick_figures(picks[name])  # type: ignore[arg-type]
                        results[name]["ttfb"].append(entry)
                        print(f"{name} ttfb {entry}", flush=True)
        with procs.running("ollamasim", fast_sim) as sim:
            pin_tree(sim.popen.pid, LOAD_CORE)
            httpx.post(sim.url + "/api/generate", json={"model": MODEL}, timeout=60)
            with (
                hops(sim.url, 1) as (plane, edge),
                hops(sim.url, 1, route_socket=False) as (grpc_plane, grpc_edge),
                nginx(sim.url, Path(tmp) / "b") as lb,
            ):
                targets = {"direct": sim.url, "edge": edge.url, "nginx": lb}
                for name, url in targets.items():
                    streams(url, 10, 20, 4)
                    results[name]["stream"] = stream_phase(url, args.quick)
                    results[name]["small"] = small_phase(url, wrk_seconds)
                    print(f"{name} stream {results[name]['stream']}", flush=True)
                    print(f"{name} small {results[name]['small']}", flush=True)
                # CPU per request of the edge and of the control plane, in one more wrk run
                # each: picks on the route socket, then by gRPC.
                streams(grpc_edge.url, 10, 20, 4)
                for name, (e, p) in {
                    "edge": (edge, plane),
                    "edge_grpc": (grpc_edge, grpc_plane),
                }.items():
                    results.setdefault(name, {})["cpu_s_per_1000_requests"] = cpu_per_request(
                        e, p, wrk_seconds
                    )
                    print(f"{name} cpu {results[name]['cpu_s_per_1000_requests']}", flush=True)
            with hops(sim.url, 2) as (_, edge2):
                streams(edge2.url, 10, 20, 4)
                results["edge_workers_2"] = {
                    "stream": stream_phase(edge2.url, args.quick),
                    "small": small_phase(edge2.url, wrk_seconds),
                }
                print(f"edge --workers 2 {results['edge_workers_2']}", flush=True)
    slow_sim = [*base, "--time-scale", "1", "--response-tokens", "30-30"]
    with procs.running("ollamasim", slow_sim) as slow:
        pin_tree(slow.popen.pid, LOAD_CORE)
        with hops(slow.url, 1) as (_, edge):
            results["edge_open_streams"] = open_streams_memory(edge, args.open_streams)
            print(f"open streams {results['edge_open_streams']}", flush=True)
    summarise(results)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.json}")


def cpu_per_request(edge: procs.Proc, plane: procs.Proc, seconds: int) -> dict[str, Any]:
    """CPU seconds per 1,000 small requests of the edge and of its control plane (wrk)."""
    e0, c0 = cpu_seconds([edge.popen.pid]), cpu_seconds([plane.popen.pid])
    again = small_phase(edge.url, seconds)
    e1, c1 = cpu_seconds([edge.popen.pid]), cpu_seconds([plane.popen.pid])
    return {
        "edge": 1000 * (e1 - e0) / again["requests"],
        "controlplane": 1000 * (c1 - c0) / again["requests"],
        "requests": again["requests"],
        "requests_per_s": again["requests_per_s"],
    }


def metrics_url(plane: procs.Proc) -> str:
    return re.search(r"metrics on (\S+)", plane.output()).group(1)  # type: ignore[union-attr]


def pick_figures(
    rounds: list[tuple[tuple[dict[str, float], dict[str, float]], ...]],
) -> dict[str, float | None]:
    """Pick as the edge waited for it (round trip) and as the control plane decided it, over the
    probes of every round ((edge, control plane) scrapes before and after each); the share is
    Pick's part of the edge's time to first byte (Pick + host's first byte)."""
    n = s = u = t = d = ds = du = 0.0
    for (edge_before, cp_before), (edge_after, cp_after) in rounds:
        (n0, s0, u0), (n1, s1, u1) = (
            hist(m, "hops_edge_pick_duration_seconds") for m in (edge_before, edge_after)
        )
        _, t0, _ = hist(edge_before, "hops_edge_time_to_first_byte_seconds")
        _, t1, _ = hist(edge_after, "hops_edge_time_to_first_byte_seconds")
        (d0, ds0, du0), (d1, ds1, du1) = (
            hist(m, "hops_controlplane_pick_duration_seconds") for m in (cp_before, cp_after)
        )
        n, s, u, t = n + n1 - n0, s + s1 - s0, u + u1 - u0, t + t1 - t0
        d, ds, du = d + d1 - d0, ds + ds1 - ds0, du + du1 - du0
    return {
        "picks": n,
        "round_trip_mean_ms": 1000 * s / n if n else None,
        "round_trips_under_2ms": u / n if n else None,
        "share_of_ttfb": s / (s + t) if n else None,
        "decision_mean_ms": 1000 * ds / d if d else None,
        "decisions_under_2ms": du / d if d else None,
    }


def _minus(a: list[float], b: list[float]) -> list[float]:
    return [round(x - y, 3) for x, y in zip(a, b, strict=True)]


def summarise(r: dict[str, Any]) -> None:
    def at(name: str, c: int) -> dict[str, Any]:
        entry: dict[str, Any] = next(t for t in r[name]["ttfb"] if t["concurrency"] == c)
        return entry

    summary: dict[str, Any] = {}
    for c in (1, 50, 200):
        d = at("direct", c)
        added: dict[str, Any] = {}
        for name in ("edge", "nginx", "edge_grpc"):
            t = at(name, c)
            # Within a round the targets ran seconds apart: the round's difference
            # leaves out the host's slow drift, and their median leaves out a round's outlier.
            rounds = _minus(t["ttfb_p50_ms_by_round"], d["ttfb_p50_ms_by_round"])
            added[f"{name}_p50_ms"] = t["ttfb_p50_ms"] - d["ttfb_p50_ms"]
            added[f"{name}_p99_ms"] = t["ttfb_p99_ms"] - d["ttfb_p99_ms"]
            added[f"{name}_p50_by_round_ms"] = rounds
            added[f"{name}_p50_round_median_ms"] = statistics.median(rounds)
        summary[f"added_ttfb_c{c}"] = added
    summary["pick_at_c50"] = at("edge", 50)["pick"]
    summary["pick_at_c50_grpc"] = at("edge_grpc", 50)["pick"]
    summary["edge_cpu_s_per_1000_requests"] = r["edge"]["cpu_s_per_1000_requests"]
    summary["edge_grpc_cpu_s_per_1000_requests"] = r["edge_grpc"]["cpu_s_per_1000_requests"]
    summary["edge_rss_mb_1000_streams"] = r["edge_open_streams"]["edge_rss_peak_mb"]
    summary["edge_chunks_vs_direct"] = (
        r["edge"]["stream"]["chunks_per_s"] / r["direct"]["stream"]["chunks_per_s"]
    )
    summary["nginx_chunks_vs_direct"] = (
        r["nginx"]["stream"]["chunks_per_s"] / r["direct"]["stream"]["chunks_per_s"]
    )
    summary["edge_small_vs_nginx"] = (
        r["edge"]["small"]["requests_per_s"] / r["nginx"]["small"]["requests_per_s"]
    )
    summary["workers2_vs_1_small"] = (
        r["edge_workers_2"]["small"]["requests_per_s"] / r["edge"]["small"]["requests_per_s"]
    )
    summary["workers2_vs_1_stream"] = (
        r["edge_workers_2"]["stream"]["chunks_per_s"] / r["edge"]["stream"]["chunks_per_s"]
    )
    r["summary"] = summary
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
