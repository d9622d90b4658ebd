"""Two kinds of client on one model: do they settle on their own hosts, or reload one in turn?

Method: a fresh fleet on loopback per seed (control plane, two gpu-24g simulated hosts with
their agents, one edge). A seeded client sends non-streaming generate requests for llama3.1:8b
with Poisson arrivals; a share of them ask `options.num_ctx` 8192 (as Open WebUI does when a
model is set to it), the rest name none and so run at the host's automatic length (4096 here).
Ollama reloads an instance for a request whose length differs from the one it was loaded with
(unless both are automatic), so every switch of kind on one host is a reload. Reported per
seed: model loads (the simulators' own counters, reloads included), per host, and the
X-Hops-Route reasons; then the median loads over the seeds.

Usage: python bench/mixed_context.py [--seeds 7,8,9] [--requests 80] [--share 0.3]
                                     [--rate 4] [--json bench/results/mixed_context.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.integration import fleet

MODEL = "llama3.1:8b"
ASKED = 8192
TIME_SCALE = 20.0


async def drive(
    url: str, rng: random.Random, requests: int, share: float, rate: float
) -> Counter[str]:
    """Send the requests; returns how many went by each route reason."""
    routes: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def one(i: int, asks: bool) -> None:
            options: dict[str, int] = {"num_predict": 20}
            if asks:
                options["num_ctx"] = ASKED
            body = {"model": MODEL, "prompt": f"question {i}", "stream": False, "options": options}
            answer = await client.post("/api/generate", json=body)
            answer.raise_for_status()
            routes[answer.headers["x-hops-route"].split(" ")[0]] += 1

        tasks = []
        for i in range(requests):
            tasks.append(asyncio.create_task(one(i, rng.random() < share)))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return routes


def run_one(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    hosts = {"a": ["--time-scale", str(TIME_SCALE)], "b": ["--time-scale", str(TIME_SCALE)]}
    with fleet.whole_fleet(hosts, edge_args=["--log-level", "warning"]) as running:
        rng = random.Random(seed)
        routes = asyncio.run(drive(running.edge.url, rng, args.requests, args.share, args.rate))
        loads = {n: httpx.get(running.sim_url(n) + "/_sim/stats").json()["loads"] for n in hosts}
    return {"seed": seed, "loads": sum(loads.values()), "by_host": loads, "routes": dict(routes)}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="7,8,9")
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--share", type=float, default=0.3, help="share asking num_ctx 8192")
    parser.add_argument("--rate", type=float, default=4.0, help="requests per real second")
    parser.add_argument("--json", default="bench/results/mixed_context.json")
    args = parser.parse_args()
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        result = run_one(seed, args)
        print(json.dumps(result), flush=True)
        runs.append(result)
    report = {
        "benchmark": "mixed_context",
        "requests_per_run": args.requests,
        "share_asking_num_ctx": args.share,
        "num_ctx_asked": ASKED,
        "rate_per_s": args.rate,
        "time_scale": TIME_SCALE,
        "median_loads": statistics.median(r["loads"] for r in runs),
        "runs": runs,
    }
    print(f"median loads over {len(runs)} seeds: {report['median_loads']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
