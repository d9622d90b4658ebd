"""Documents on hosts with unlike context lengths: is any prompt cut short?

Ollama runs a request that names no `num_ctx` at the host's automatic context length, and since
0.15.5 that length follows the host's VRAM: 4096 under 24 GiB, 32768 from 24 to 48 GiB. A
longer prompt is not refused: Ollama drops the oldest messages and cuts the rest to fit, says
so only in its log, and the model answers from what is left (a summary of a document's last
pages, a question about a file it never saw whole). In an unlike fleet, the same request is
read whole on the big card and cut on the small ones.

Method: a fresh fleet per policy on loopback (control plane, three simulated hosts reporting
Ollama 0.15.5, "big" gpu-24g, "mid" gpu-12g and "small" gpu-8g, OLLAMA_NUM_PARALLEL 2, their
agents, one edge; time scale 10, all times simulated seconds). The big card runs at SPEED of
its profile's speed (an older card: the newer small ones evaluate a prompt faster).
llama3.1:8b is loaded on every host first, at its automatic length. A seeded client streams
REQUESTS chats on /api/chat with Poisson arrivals at RATE per second, naming no num_ctx (as
most clients do, and every OpenAI-style one); a share DOC_SHARE carry a document of about
DOC_TOKENS tokens with a question about it, the rest a short question. Reported per policy:
how many prompts were cut (the simulated hosts' own count, and the documents whose reply
counted fewer prompt tokens than the document has) and how many replies outgrew what their
prompt left of the context (Ollama then drops half of it), the hosts the documents went to, and time
to first token p50/p95 of documents and short chats apart.

Usage: python bench/long_context.py [--seed 7] [--requests 60] [--policies memory_aware,...]
       [--json bench/results/long_context.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.affinity import MODEL, TIME_SCALE, stream_turn, text_of
from bench.routing import each_policy, pct, policy_fleet
from ollamasim import textgen
from tests.integration import fleet

POLICIES = ("random", "round_robin", "least_busy", "memory_aware")
HOSTS = {"big": "gpu-24g", "mid": "gpu-12g", "small": "gpu-8g"}
# The big card is an older one (a 24 GB Tesla P40 beside newer 12 and 8 GB cards, as in many
# home labs): a third of the speed, so it is not the fastest place for a prompt, only the one
# that reads a document whole.
SPEED = {"big": 0.35}
VERSION = "0.15.5"  # the first Ollama whose automatic context length follows the VRAM
SLOTS = 2
REQUESTS = 60
RATE = 0.5  # per simulated second
DOC_SHARE = 0.25
DOC_TOKENS = 10_000
QUESTION_TOKENS = 30
REPLY_TOKENS = 60


async def _chat(client: httpx.AsyncClient, text: str, doc: bool, begun: float) -> dict[str, Any]:
    started = time.monotonic()
    turn = await stream_turn(client, [{"role": "user", "content": text}], REPLY_TOKENS)
    return {
        "doc": doc,
        "at": round((started - begun) * TIME_SCALE, 2),
        "node": turn["node"],
        "route": turn["route"],
        "ttft_s": turn["ttft_s"],
        "prompt_tokens_sent": textgen.count_tokens(text),
        "prompt_eval_count": turn["prompt_tokens"],
    }


async def drive(url: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        tasks = []
        begun = time.monotonic()
        for i in range(args.requests):
            doc = rng.random() < args.doc_share
            question = f"question {i}: " + text_of(rng, QUESTION_TOKENS)
            text = text_of(rng, args.doc_tokens) + "\n\n" + question if doc else question
            tasks.append(asyncio.create_task(_chat(client, text, doc, begun)))
            await asyncio.sleep(rng.expovariate(args.rate) / TIME_SCALE)
        return list(await asyncio.gather(*tasks))


def summary(chats: list[dict[str, Any]], stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    docs = [c for c in chats if c["doc"]]
    short = [c for c in chats if not c["doc"]]
    return {
        "requests": len(chats),
        "documents": len(docs),
        "truncated_prompts": sum(s["truncated_prompts"] for s in stats.values()),
        "context_shifts": sum(s["context_shifts"] for s in stats.values()),
        "documents_read_in_part": sum(
            c["prompt_eval_count"] < c["prompt_tokens_sent"] for c in docs
        ),
        "documents_by_host": {n: sum(c["node"] == n for c in docs) for n in HOSTS},
        "short_by_host": {n: sum(c["node"] == n for c in short) for n in HOSTS},
        "document_ttft_s": {
            "p50": pct([c["ttft_s"] for c in docs], 0.5),
            "p95": pct([c["ttft_s"] for c in docs], 0.95),
        },
        "short_ttft_s": {
            "p50": pct([c["ttft_s"] for c in short], 0.5),
            "p95": pct([c["ttft_s"] for c in short], 0.95),
        },
        "context_lengths": {
            n: next((m["context_length"] for m in s["ps"] if m["name"] == MODEL), 0)
            for n, s in stats.items()
        },
    }


def run_one(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    hosts = {
        node: [
            "--profile",
            profile,
            "--version",
            VERSION,
            "--time-scale",
            str(TIME_SCALE),
            "--num-parallel",
            str(SLOTS),
            "--speed",
            str(SPEED.get(node, 1.0)),
        ]
        for node, profile in HOSTS.items()
    }
    with policy_fleet(hosts, policy, args.seed, SLOTS) as running:
        fleet.warm_everywhere(running, MODEL, HOSTS)
        chats = asyncio.run(drive(running.edge.url, args.seed, args))
        stats = {}
        for node in HOSTS:
            stats[node] = httpx.get(running.sim_url(node) + "/_sim/stats").json()
            stats[node]["ps"] = httpx.get(running.sim_url(node) + "/api/ps").json()["models"]
    chats.sort(key=lambda c: c["at"])
    return {"policy": policy, **summary(chats, stats), "chats": chats}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--rate", type=float, default=RATE, help="per simulated second")
    parser.add_argument("--doc-share", type=float, default=DOC_SHARE)
    parser.add_argument("--doc-tokens", type=int, default=DOC_TOKENS)
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--json", default="bench/results/long_context.json")
    args = parser.parse_args()
    results = each_policy(run_one, args, "chats")
    report = {
        "benchmark": "long_context",
        "seed": args.seed,
        "hosts": HOSTS,
        "speed": SPEED,
        "ollama_version": VERSION,
        "slots_per_host": SLOTS,
        "model": MODEL,
        "requests": args.requests,
        "rate_per_s": args.rate,
        "doc_share": args.doc_share,
        "doc_tokens": args.doc_tokens,
        "question_tokens": QUESTION_TOKENS,
        "reply_tokens": REPLY_TOKENS,
        "time_scale": TIME_SCALE,
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
