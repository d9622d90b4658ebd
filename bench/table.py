"""Print bench/results/routing.json as the Markdown table in bench/README.md."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Print a bench/routing.py report as the Markdown tables in bench/README.md: "
        "one row per policy and level (and seed), then, when the report checked them, the "
        "targets of issue #5 per seed."
    )
    parser.add_argument(
        "report",
        nargs="?",
        default="bench/results/routing.json",
        help="the JSON that bench/routing.py wrote (default: %(default)s)",
    )
    path = Path(parser.parse_args().report)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"cannot read {path}: {exc}")
    sweep = len(report.get("seeds", [report.get("seed")])) > 1
    seed_column = ("| seed ", "|---") if sweep else ("", "")
    print(
        f"{seed_column[0]}| level (req/s) | policy | done | failed | TTFT p50 / p95 / p99 (s) "
        "| latency p50 / p95 / p99 (s) | loads | evictions | goodput (tok/s) |"
    )
    print(f"{seed_column[1]}|---|---|---|---|---|---|---|---|---|")
    for r in report["results"]:
        t, lat = r["ttft_s"], r["latency_s"]
        seed = f"| {r['seed']} " if sweep else ""
        print(
            f"{seed}| {r['level']} ({r['rate_per_s']}) | {r['policy']} | {r['completed']} | "
            f"{r['failed']} | {t['p50']} / {t['p95']} / {t['p99']} | "
            f"{lat['p50']} / {lat['p95']} / {lat['p99']} | {r['loads']} | {r['evictions']} | "
            f"{r['goodput_tokens_per_s']} |"
        )
    if report.get("targets"):
        print()
        print(
            "| seed | loads vs random | p95 TTFT vs random | p95 TTFT (s) "
            "| best of round_robin / least_busy (s) | failed (low, middle) |"
        )
        print("|---|---|---|---|---|---|")
        for v in report["targets"]:
            met, other = v["met"], v["p95_best_other_s"]
            print(
                f"| {v['seed']} | {v['loads_ratio']}x {_mark(met['loads'])} "
                f"| {v['p95_ratio']}x {_mark(met['p95'])} | {v['p95_s']} "
                f"| {'-' if other is None else other} {_mark(met['beats_others'], 'beaten')} "
                f"| {v['failed_low_middle']} {_mark(met['no_failures'])} |"
            )


def _mark(met: bool | None, word: str = "met") -> str:
    """A target's verdict in the table: met, missed, or not checked in this run."""
    return "" if met is None else (f"({word})" if met else "(missed)")


if __name__ == "__main__":
    main()
