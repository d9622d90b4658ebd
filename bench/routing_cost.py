"""The router's own cost, in process: how long one Pick, one Report and one snapshot take inside
the control plane, without gRPC, protobuf or an event loop around them.

Method: a Router (policy memory_aware) over 100 hosts x 20 models of 4 GiB, two of them loaded
on each host, the loaded pair moving on by one model each time the host sends a snapshot (one
host every 30 pairs: 100 snapshots/s at 3,000 pairs/s, as in bench/controlplane.py). Each host
decodes at its own speed (30-80 tokens/s); each pick asks for a model at random and its Report
carries a reply's counters (lengths lognormal about 200 tokens, prompts about 300). The first
5,000 pairs warm the learned figures up and are not counted. Reported: p50 / p99 / p99.9 / max
of each step in microseconds, and the candidate records built per pick (the floor index keeps
that to a handful when it bounds well). The end-to-end figures are bench/controlplane.py's;
this one isolates routing from transport, and its tail from a busy event loop's.

Usage: python bench/routing_cost.py [--pairs 60000] [--seed 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controlplane.candidates import Candidates
from controlplane.fleet import Fleet
from controlplane.model import GenerationStats, Outcome, Report, RouteRequest
from hopscommon.fleet import Capacity, Gpu, Hello, InstalledModel, LoadedModel, Snapshot
from tests.controlplane import builders

GIB = 1024**3
NODES, MODELS, WARM_UP = 100, 20, 5000


def snapshot(node: int, tick: int, installed: tuple[InstalledModel, ...]) -> Snapshot:
    names = [m.name for m in installed]
    return Snapshot(
        sequence=tick + 1,
        ollama_healthy=True,
        installed=installed,
        loaded=tuple(
            LoadedModel(
                name=names[(node + tick + k) % MODELS], size_bytes=5 * GIB, size_vram_bytes=5 * GIB
            )
            for k in range(2)
        ),
        gpus=(Gpu(0, "GPU", "", 24 * GIB, (14 - tick % 3) * GIB),),
    )


def fleet_of(installed: tuple[InstalledModel, ...]) -> Fleet:
    fleet = builders.fleet()
    for n in range(NODES):
        node_id = f"node-{n:03d}"
        hello = Hello(
            node_id=node_id,
            ollama_url=f"http://{node_id}.test:11434",
            capacity=Capacity(num_parallel=4),
            instance_id=str(n),
            hostname=node_id,
        )
        node, _ = fleet.attach(hello, object())
        fleet.update(node_id, node.session, snapshot(n, 0, installed))
    return fleet


def quantiles(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)

    def at(share: float) -> float:
        return round(ordered[max(int(len(ordered) * share) - 1, 0)] * 1e6, 1)

    return {"p50_us": at(0.5), "p99_us": at(0.99), "p999_us": at(0.999), "max_us": at(1.0)}


def run(pairs: int, seed: int, reply_limit: int = 0, limited: float = 0.5) -> dict[str, Any]:
    rng = random.Random(seed)
    models = [f"model-{m}:latest" for m in range(MODELS)]
    installed = tuple(
        InstalledModel(name=name, digest=f"{m:064x}", size_bytes=4 * GIB)
        for m, name in enumerate(models)
    )
    fleet = fleet_of(installed)
    router = builders.router(fleet, "memory_aware")
    speed = {f"node-{n:03d}": rng.uniform(30.0, 80.0) for n in range(NODES)}
    ticks = [0] * NODES
    built = [0]
    build = Candidates.build

    def counting(self: Candidates, *args: Any, **kwargs: Any) -> Any:
        built[0] += 1
        return build(self, *args, **kwargs)

    Candidates.build = counting  # type: ignore[method-assign]
    picks: list[float] = []
    reports: list[float] = []
    snapshots: list[float] = []
    records: list[int] = []
    try:
        for i in range(pairs):
            counted = i >= WARM_UP
            if i % 30 == 0:
                n = rng.randrange(NODES)
                ticks[n] += 1
                node = fleet.nodes[f"node-{n:03d}"]
                started = time.perf_counter()
                fleet.update(node.node_id, node.session, snapshot(n, ticks[n], installed))
                if counted:
                    snapshots.append(time.perf_counter() - started)
            built[0] = 0
            started = time.perf_counter()
            limit = reply_limit if reply_limit and rng.random() < limited else 0
            outcome = router.pick(
                RouteRequest(model=rng.choice(models), edge_id="bench", max_reply=limit)
            )
            if counted:
                picks.append(time.perf_counter() - started)
                records.append(built[0])
            if not outcome.lease_id:
                continue
            node_id = outcome.ranked[0].candidate.node_id
            tps = speed[node_id] * rng.uniform(0.97, 1.03)
            reply = max(1, int(rng.lognormvariate(math.log(200), 0.8)))
            if limit:
                reply = min(reply, limit)
            prompt = max(1, int(rng.lognormvariate(math.log(300), 0.5)))
            stats = GenerationStats(
                load_duration_ns=50_000_000,
                prompt_eval_count=prompt,
                prompt_eval_duration_ns=int(prompt / (tps * 20) * 1e9),
                eval_count=reply,
                eval_duration_ns=int(reply / tps * 1e9),
            )
            report = Report(outcome.lease_id, node_id, Outcome.OK, http_status=200, stats=stats)
            started = time.perf_counter()
            router.report(report)
            if counted:
                reports.append(time.perf_counter() - started)
    finally:
        Candidates.build = build  # type: ignore[method-assign]
    records.sort()
    return {
        "nodes": NODES,
        "reply_limit": reply_limit,
        "limited_share": limited if reply_limit else 0.0,
        "models_per_node": MODELS,
        "pairs_counted": len(picks),
        "pick": quantiles(picks),
        "report": quantiles(reports),
        "snapshot": quantiles(snapshots),
        "records_per_pick": {
            "mean": round(sum(records) / len(records), 2),
            "p99": records[int(len(records) * 0.99) - 1],
            "max": records[-1],
        },
        "pick_and_report_us_mean": round((sum(picks) + sum(reports)) / len(picks) * 1e6, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=60_000, help="Pick+Report pairs to run")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--reply-limit",
        type=int,
        default=0,
        help="the most tokens some requests let their reply run to (num_predict; 0 = no limit)",
    )
    parser.add_argument(
        "--limited", type=float, default=0.5, help="the share of requests that ask --reply-limit"
    )
    parser.add_argument("--json", default="bench/results/routing_cost.json")
    args = parser.parse_args()
    result = run(args.pairs, args.seed, args.reply_limit, args.limited)
    result["machine"] = {"python": platform.python_version(), "platform": platform.platform()}
    print(json.dumps(result, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
