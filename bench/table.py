"""Print bench/results/routing.json as the Markdown table in bench/README.md."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results/routing.json")
    report = json.loads(path.read_text())
    print(
        "| level (req/s) | policy | done | failed | TTFT p50 / p95 / p99 (s) "
        "| latency p50 / p95 / p99 (s) | loads | evictions | goodput (tok/s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in report["results"]:
        t, lat = r["ttft_s"], r["latency_s"]
        print(
            f"| {r['level']} ({r['rate_per_s']}) | {r['policy']} | {r['completed']} | "
            f"{r['failed']} | {t['p50']} / {t['p95']} / {t['p99']} | "
            f"{lat['p50']} / {lat['p95']} / {lat['p99']} | {r['loads']} | {r['evictions']} | "
            f"{r['goodput_tokens_per_s']} |"
        )


if __name__ == "__main__":
    main()
