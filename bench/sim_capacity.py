"""How much streaming one ollamasim process sustains, so it is never the bottleneck of a benchmark.

Method: one simulator process pinned to core 0 (time scale 2000, so decoding is CPU-bound, not
paced), and this load generator pinned to core 1 using raw asyncio sockets. It opens N concurrent
NDJSON streams (/api/generate, 200 tokens each; num_parallel large enough that every stream decodes
at once) and counts chunks received. Reported: chunks/s, streams, errors, TTFB median/p99.
Targets (issue #2): 500 concurrent streams and at least 5,000 streamed chunks/s.

Usage: python bench/sim_capacity.py [--concurrency 500] [--streams 1500] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.loadgen import run_streams
from tests import procs


def pin(pid: int, core: int) -> bool:
    """Pin ``pid`` (0 = this process) to one core when the machine has it; False otherwise."""
    if (os.cpu_count() or 1) <= core or not hasattr(os, "sched_setaffinity"):
        return False
    os.sched_setaffinity(pid, {core})
    return True


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--streams", type=int, default=1500)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--json", default="bench/results/sim_capacity.json")
    args = parser.parse_args()
    sim_args = [
        "--listen",
        "127.0.0.1:0",
        "--time-scale",
        "2000",
        "--num-parallel",
        "1000",
        "--response-tokens",
        f"{args.tokens}-{args.tokens}",
    ]
    env = {"HOPS_SIM_LOG_LEVEL": "error"}
    with procs.running("ollamasim", sim_args, env) as sim:
        pinned = pin(sim.popen.pid, 0) and pin(0, 1)
        body = {"model": "llama3.2", "prompt": "benchmark", "options": {"num_predict": args.tokens}}
        asyncio.run(
            run_streams(sim.url, "/api/generate", {**body, "options": {"num_predict": 1}}, 1, 1)
        )
        summary = asyncio.run(
            run_streams(sim.url, "/api/generate", body, args.concurrency, args.streams)
        )
    ttfbs = sorted(r.ttfb for r in summary.results if r.status == 200)
    report = {
        "benchmark": "sim_capacity",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "pinned": pinned},
        "concurrency": args.concurrency,
        "streams": args.streams,
        "tokens_per_stream": args.tokens,
        "chunks": summary.chunks,
        "elapsed_s": round(summary.elapsed, 3),
        "chunks_per_s": round(summary.chunks / summary.elapsed, 1),
        "errors": summary.errors,
        "ttfb_ms_p50": round(statistics.median(ttfbs) * 1000, 2) if ttfbs else None,
        "ttfb_ms_p99": round(ttfbs[int(len(ttfbs) * 0.99) - 1] * 1000, 2) if ttfbs else None,
        "targets": {"concurrency": 500, "chunks_per_s": 5000},
    }
    report["meets_targets"] = (
        report["errors"] == 0 and args.concurrency >= 500 and report["chunks_per_s"] >= 5000
    )
    print(json.dumps(report, indent=2))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
