"""Soak: a fleet under steady mixed load with faults injected at random; nothing may be lost.

Method: a fresh fleet on loopback (control plane, four unlike simulated hosts with agents, one
edge). C concurrent clients send N requests in all: generate and chat, streamed and not, over
models every host or most hosts have. Every ~2 s one host gets a random fault for ~1 s (busy 503s,
dropped connections mid-stream, slow decoding, refused connections). Every response is checked:
complete (a final chunk with its counts) or cleanly failed (an HTTP error status, an error line,
or a connection the edge cut on purpose) — never silently truncated. At the end: open leases
(must be 0), the hosts' own counters against what clients saw, and control plane and edge
resident memory at start and end.

Usage: python bench/soak.py [--clients 200] [--requests 20000] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration import fleet

HOSTS = {
    name: ["--profile", name, "--control-listen", "127.0.0.1:0"]
    for name in ("gpu-24g", "gpu-12g", "gpu-8g", "cpu")
}
MODELS = ("llama3.2:latest", "llama3.2:latest", "llama3.1:8b")
FAULTS: tuple[dict[str, str | float], ...] = (
    {"mode": "busy", "rate": 0.5},
    {"mode": "drop", "after_chunks": 3, "rate": 0.3},
    {"mode": "slow", "factor": 3},
    {"mode": "refuse", "duration_s": 1.0},
)


async def one(client: httpx.AsyncClient, rng: random.Random) -> str:
    """Send one request; return 'ok', 'failed:<how>' (a visible failure) or 'truncated'."""
    model = rng.choice(MODELS)
    streaming = rng.random() < 0.5
    body: dict[str, object]
    if rng.random() < 0.5:
        path, body = "/api/generate", {"model": model, "prompt": f"p{rng.random()}"}
    else:
        path, body = (
            "/api/chat",
            {"model": model, "messages": [{"role": "user", "content": f"m{rng.random()}"}]},
        )
    body["stream"] = streaming
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return f"failed:http_{response.status_code}"
            if not streaming:
                final = json.loads(await response.aread())
                return "ok" if final.get("done") and "eval_count" in final else "truncated"
            lines = [json.loads(line) async for line in response.aiter_lines()]
    except (httpx.RemoteProtocolError, httpx.ReadError):
        return "failed:cut"  # the edge cut a fixed-length body on purpose: a visible failure
    if lines and "error" in lines[-1]:
        return "failed:error_line"
    if not lines or not lines[-1].get("done"):
        return "truncated"
    return "ok" if lines[-1].get("eval_count") == len(lines) - 1 else "truncated"


async def chaos(
    controls: list[str], stop: asyncio.Event, rng: random.Random, injected: Counter[str]
) -> None:
    async with httpx.AsyncClient(timeout=5) as http:
        while not stop.is_set():
            url = rng.choice(controls)
            fault = rng.choice(FAULTS)
            await http.put(url + "/_sim/fault", json=fault)
            injected[str(fault["mode"])] += 1
            await asyncio.sleep(1.0)
            await http.delete(url + "/_sim/fault")
            await asyncio.sleep(1.0)


async def drive(
    edge_url: str, controls: list[str], clients: int, total: int, seed: int
) -> tuple[Counter[str], Counter[str], float]:
    rng = random.Random(seed)
    results: Counter[str] = Counter()
    injected: Counter[str] = Counter()
    stop = asyncio.Event()
    remaining = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=edge_url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            for _ in remaining:
                outcome, _, how = (await one(client, rng)).partition(":")
                results[outcome] += 1
                if how:
                    results[f"failed {how}"] += 1

        chaos_task = asyncio.create_task(chaos(controls, stop, rng, injected))
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        stop.set()
        await chaos_task
    async with httpx.AsyncClient(timeout=5) as http:
        for url in controls:
            await http.delete(url + "/_sim/fault")
    return results, injected, elapsed


def rss_mb(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 1024**2, 1)


def soak(clients: int, total: int, seed: int = 3) -> dict[str, Any]:
    sim_args = ["--time-scale", "50", "--response-tokens", "8-24", "--num-parallel", "4"]
    hosts = {node: [*args, *sim_args] for node, args in HOSTS.items()}
    with fleet.whole_fleet(
        hosts,
        plane_args=["--queue-per-slot", "64", "--log-level", "warning"],
        agent_args=["--num-parallel", "4", "--log-level", "warning"],
        edge_args=["--log-level", "warning", "--connect-timeout", "0.5"],
    ) as running:
        controls = [p.wait_for(r"control on (\S+)").group(1) for p in running.hosts.values()]
        pids = {"controlplane": running.plane.popen.pid, "edge": running.edge.popen.pid}
        rss_start = {name: rss_mb(pid) for name, pid in pids.items()}
        results, injected, elapsed = asyncio.run(
            drive(running.edge.url, controls, clients, total, seed)
        )
        fleet.wait_until(lambda: running.open_leases() == 0, 10.0, "all leases closed")
        rss_end = {name: rss_mb(pid) for name, pid in pids.items()}
        stats = [httpx.get(url + "/_sim/stats", timeout=5).json() for url in controls]
    host_completed = sum(s["completed"] for s in stats)
    host_drops = sum(s["faults_injected"].get("drop", 0) for s in stats)
    return {
        "clients": clients,
        "requests": total,
        "seconds": round(elapsed, 1),
        "requests_per_s": round(total / elapsed, 1),
        "results": {k: v for k, v in results.items() if " " not in k},
        "failures_by_kind": {k.split(" ", 1)[1]: v for k, v in results.items() if " " in k},
        "silently_truncated": results["truncated"],
        "faults_set": dict(injected),
        "open_leases_at_end": 0,
        "host_completed": host_completed,
        "host_drop_faults": host_drops,
        "client_ok": results["ok"],
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", default="bench/results/soak.json")
    args = parser.parse_args()
    report = {"benchmark": "soak", **soak(args.clients, args.requests, args.seed)}
    print(json.dumps(report, indent=2))
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
