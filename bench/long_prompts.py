"""Long prompts on an unlike fleet: does a document-sized prompt stay off the CPU host?

A GPU evaluates a prompt tens of times faster than it decodes; a CPU only a few times. So a
request carrying a document (retrieval, summarising, a pasted file) costs seconds of prompt
evaluation on a GPU and a minute or more on a CPU, while a short chat costs about its reply on
either. When the GPU host is busy, short chats may as well spill to the CPU host; long prompts
should wait for the GPU.

Method: a fresh fleet on loopback per seed (control plane, a gpu-8g and a cpu simulated host,
OLLAMA_NUM_PARALLEL 1, their agents, one edge; time scale 10, all times simulated seconds). A
seeded client streams REQUESTS llama3.2 chats with Poisson arrivals at RATE per second, a
share LONG_SHARE of them carrying a document of about LONG_TOKENS tokens, the rest a short
question; every reply is REPLY_TOKENS tokens. Reported per seed, for long and short requests
apart: time to first token p50/p95 and how many ran on the CPU host.

With --api openai the same chats go to /v1/chat/completions unstreamed, as the OpenAI SDK and
LangChain's ChatOpenAI send them by default: the replies carry no durations, so the control
plane learns from the edge's time for each whole reply, and the time reported is the whole
reply's. The edge's clock is real time, so this mode runs at time scale 1.

Usage: python bench/long_prompts.py [--seeds 7,8,9] [--api ollama|openai]
       [--json bench/results/long_prompts.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hops.v1 import admin_pb2

from bench.routing import pct
from ollamasim import textgen
from ollamasim.catalogue import CATALOGUE
from ollamasim.profiles import PROFILES, decode_tokens_per_s
from ollamasim.scheduler import SPAWN_SECONDS
from tests.integration import fleet

MODEL = "llama3.2"
TIME_SCALE = {"ollama": 10.0, "openai": 1.0}  # the edge times OpenAI replies in real time
REQUESTS = 60
RATE = 0.6  # per simulated second
LONG_SHARE = 0.3
LONG_TOKENS = 3000
REPLY_TOKENS = 60
HOSTS = {"gpu": "gpu-8g", "cpu": "cpu"}


async def one(
    client: httpx.AsyncClient,
    text: str,
    long: bool,
    begun: float,
    samples: list[dict[str, Any]],
    api: str,
) -> None:
    """One chat: streamed on /api/chat, or unstreamed on /v1/chat/completions (its first token
    is then its whole reply); ``begun``: when the run's first request went (for its place)."""
    messages = [{"role": "user", "content": text}]
    started = time.monotonic()
    first = 0.0
    if api == "openai":
        body = {"model": MODEL, "messages": messages, "max_tokens": REPLY_TOKENS}
        answer = await client.post("/v1/chat/completions", json=body)
        answer.raise_for_status()
        first = time.monotonic() - started
        node, route = answer.headers["x-hops-node"], answer.headers["x-hops-route"]
    else:
        body = {
            "model": MODEL,
            "messages": messages,
            "stream": True,
            "options": {"num_predict": REPLY_TOKENS},
        }
        async with client.stream("POST", "/api/chat", json=body) as answer:
            answer.raise_for_status()
            node, route = answer.headers["x-hops-node"], answer.headers["x-hops-route"]
            async for line in answer.aiter_lines():
                if not first and line and json.loads(line).get("message", {}).get("content"):
                    first = time.monotonic() - started
    scale = TIME_SCALE[api]
    at = (started - begun) * scale
    samples.append(
        {
            "long": long,
            "node": node,
            "route": route,
            "at": round(at, 2),
            "ttft_s": first * scale,
        }
    )


async def drive(url: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    samples: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        tasks = []
        begun = time.monotonic()
        for i in range(args.requests):
            long = rng.random() < args.long_share
            words = args.long_tokens * 4 // 6 if long else 20  # about six characters a word
            text = f"request {i}: " + "".join(textgen.words(rng, words))
            task = one(client, text, long, begun, samples, args.api)
            tasks.append(asyncio.create_task(task))
            await asyncio.sleep(rng.expovariate(args.rate) / TIME_SCALE[args.api])
        await asyncio.gather(*tasks)
    return samples


def _kind(samples: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [s["ttft_s"] for s in samples]
    return {
        "requests": len(samples),
        "ttft_s": {"p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95)},
        "on_cpu": sum(s["node"] == "cpu" for s in samples),
    }


def _speeds(running: fleet.Fleet) -> dict[str, dict[str, Any]]:
    """What the control plane learned of each host, and what the simulated host really does."""
    size = CATALOGUE[MODEL + ":latest"].size_bytes
    nodes = fleet.admin(running.plane.url).ListNodes(admin_pb2.ListNodesRequest()).nodes
    out = {}
    for node in nodes:
        profile = PROFILES[HOSTS[node.node_id]]
        decode = decode_tokens_per_s(profile, size, 1.0)
        learned = next((s for s in node.learned if s.model == MODEL + ":latest"), None)
        out[node.node_id] = {
            "true": {
                "decode_tps": round(decode, 1),
                "prompt_tps": round(decode * profile.prompt_speedup, 1),
                "load_s": round(SPAWN_SECONDS + size / profile.load_speed_bytes_per_s, 2),
            },
            "learned": {
                "decode_tps": round(learned.decode_tokens_per_second, 1),
                "prompt_tps": round(learned.prompt_tokens_per_second, 1),
                "load_s": round(learned.load_seconds, 2),
                "samples": learned.samples,
            }
            if learned is not None
            else None,
        }
    return out


def run_one(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    sim = ["--time-scale", str(TIME_SCALE[args.api]), "--num-parallel", "1"]
    hosts = {node: ["--profile", profile, *sim] for node, profile in HOSTS.items()}
    with fleet.whole_fleet(
        hosts,
        agent_args=["--num-parallel", "1", "--log-level", "warning"],
        edge_args=["--log-level", "warning"],
    ) as running:
        samples = asyncio.run(drive(running.edge.url, seed, args))
        speeds = _speeds(running)
    return {
        "seed": seed,
        "speeds": speeds,
        "long": _kind([s for s in samples if s["long"]]),
        "short": _kind([s for s in samples if not s["long"]]),
        "all": _kind(samples),
        "samples": sorted(samples, key=lambda s: s["at"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="7,8,9")
    parser.add_argument("--requests", type=int, default=REQUESTS)
    parser.add_argument("--rate", type=float, default=RATE, help="per simulated second")
    parser.add_argument("--long-share", type=float, default=LONG_SHARE)
    parser.add_argument("--long-tokens", type=int, default=LONG_TOKENS)
    parser.add_argument(
        "--api",
        choices=("ollama", "openai"),
        default="ollama",
        help="streamed /api/chat, or unstreamed /v1/chat/completions timed by the edge",
    )
    parser.add_argument("--json", default="bench/results/long_prompts.json")
    args = parser.parse_args()
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        result = run_one(seed, args)
        print(json.dumps({k: v for k, v in result.items() if k != "samples"}), flush=True)
        runs.append(result)
    median = {
        f"{kind}_{figure}": statistics.median(r[kind]["ttft_s"][figure] for r in runs)
        for kind in ("long", "short", "all")
        for figure in ("p50", "p95")
    }
    median["long_on_cpu"] = statistics.median(r["long"]["on_cpu"] for r in runs)
    median["short_on_cpu"] = statistics.median(r["short"]["on_cpu"] for r in runs)
    report = {
        "benchmark": "long_prompts",
        "requests_per_run": args.requests,
        "rate_per_s": args.rate,
        "long_share": args.long_share,
        "long_tokens": args.long_tokens,
        "reply_tokens": REPLY_TOKENS,
        "api": args.api,
        "time_scale": TIME_SCALE[args.api],
        "median": median,
        "runs": runs,
    }
    print("median over seeds:", json.dumps(median))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
