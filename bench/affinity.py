"""Session affinity on alike hosts: does each turn of a conversation go back to the host that
holds the conversation in its prompt cache?

A conversation's next turn repeats everything said so far. The host that served the turn before
keeps it in its prompt cache (one cached prompt per parallel slot) and evaluates only what is
new; any other host evaluates it all again, seconds for a long system prompt or a pasted file.
With hosts alike and all warm, only the conversation's past tells them apart.

Method: a fresh fleet per policy on loopback (control plane, two gpu-12g simulated hosts "a" and
"b" with OLLAMA_NUM_PARALLEL 2, their agents, one edge; time scale 10, all times simulated
seconds). llama3.1:8b is loaded on both first, so every turn has two warm hosts to choose from.
CONVERSATIONS chats run at once (by default as many as the fleet has slots), each opening with
a system prompt of its own of about SYSTEM_TOKENS tokens and taking TURNS turns: a question of
about QUESTION_TOKENS tokens sent with the whole conversation so far (the host's own replies
included, as a chat client sends them), after a think time of mean THINK_S seconds. No
X-Hops-Session header: the edge tells conversations apart by their opening messages, as it does
for any Ollama client. Reported per policy: of the prompt tokens, the share the hosts found in
their caches (Ollama's prompt_eval_cached_count, summed from the replies), how often a turn went
to the host of the turn before, and time to first token p50/p95 of the follow-up turns.

Which conversation a host keeps cached is up to Ollama's runner: by default a request takes the
free slot whose cache shares the longest prefix with it, and a new conversation shares the
template's start with any, so it may take over the slot of one still going. With
--multiuser-cache the hosts run as with OLLAMA_MULTIUSER_CACHE=1: a request takes the slot of
its own conversation, else the least recently used one.

Usage: python bench/affinity.py [--seed 7] [--conversations 4] [--turns 6] [--think 5]
       [--multiuser-cache] [--json bench/results/affinity.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


from bench.routing import each_policy, pct, policy_fleet
from ollamasim import textgen
from tests.integration import fleet

POLICIES = ("random", "round_robin", "least_busy", "memory_aware")
MODEL = "llama3.1:8b"
HOSTS = ("a", "b")
SLOTS = 2  # OLLAMA_NUM_PARALLEL per host
TIME_SCALE = 10.0
SYSTEM_TOKENS = 2000
QUESTION_TOKENS = 60
REPLY_TOKENS = 80
THINK_S = 5.0  # simulated seconds between a reply and the next question, on average (--think)


def text_of(rng: random.Random, tokens: int) -> str:
    return "".join(textgen.words(rng, tokens * 4 // 6))  # about six characters a word


async def stream_turn(
    client: httpx.AsyncClient, messages: list[dict[str, str]], reply_tokens: int = REPLY_TOKENS
) -> dict[str, Any]:
    """One streamed /api/chat turn for MODEL: where it went and why, its time to first token
    (simulated seconds at TIME_SCALE), its reply, and the prompt counts of Ollama's final
    chunk."""
    body = {
        "model": MODEL,
        "messages": messages,
        "stream": True,
        "options": {"num_predict": reply_tokens},
    }
    started = time.monotonic()
    first, reply, final = 0.0, [], {}
    async with client.stream("POST", "/api/chat", json=body) as answer:
        answer.raise_for_status()
        node, route = answer.headers["x-hops-node"], answer.headers["x-hops-route"]
        async for line in answer.aiter_lines():
            if not line:
                continue
            chunk = json.loads(line)
            content = chunk.get("message", {}).get("content", "")
            if content and not first:
                first = time.monotonic() - started
            reply.append(content)
            if chunk.get("done"):
                final = chunk
    return {
        "node": node,
        "route": route,
        "ttft_s": round(first * TIME_SCALE, 3),
        "reply": "".join(reply),
        "prompt_tokens": final.get("prompt_eval_count", 0),
        "cached_tokens": final.get("prompt_eval_cached_count", 0),
    }


async def _conversation(
    client: httpx.AsyncClient, index: int, seed: int, args: argparse.Namespace
) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}/{index}")
    messages = [{"role": "system", "content": f"chat {index}: " + text_of(rng, args.system_tokens)}]
    turns = []
    await asyncio.sleep(rng.uniform(0, args.think) / TIME_SCALE)
    for number in range(args.turns):
        question = f"question {number}: " + text_of(rng, QUESTION_TOKENS)
        messages.append({"role": "user", "content": question})
        turn = await stream_turn(client, messages)
        messages.append({"role": "assistant", "content": turn.pop("reply")})
        turns.append({"conversation": index, "turn": number, **turn})
        await asyncio.sleep(rng.expovariate(1 / args.think) / TIME_SCALE)
    return turns


async def drive(url: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        chats = [_conversation(client, i, seed, args) for i in range(args.conversations)]
        return [t for turns in await asyncio.gather(*chats) for t in turns]


def summary(turns: list[dict[str, Any]]) -> dict[str, Any]:
    by_chat: dict[int, list[dict[str, Any]]] = {}
    for t in sorted(turns, key=lambda t: t["turn"]):
        by_chat.setdefault(t["conversation"], []).append(t)
    follow = [t for t in turns if t["turn"] > 0]
    same = sum(
        later["node"] == earlier["node"]
        for chat in by_chat.values()
        for earlier, later in itertools.pairwise(chat)
    )
    prompt = sum(t["prompt_tokens"] for t in turns)
    ttft = [t["ttft_s"] for t in follow]
    return {
        "turns": len(turns),
        "prompt_cached_share": round(sum(t["cached_tokens"] for t in turns) / prompt, 3),
        "follow_ups_to_the_same_host": round(same / len(follow), 3) if follow else 0.0,
        "follow_up_ttft_s": {"p50": pct(ttft, 0.5), "p95": pct(ttft, 0.95)},
        "first_turn_ttft_s": {"p50": pct([t["ttft_s"] for t in turns if t["turn"] == 0], 0.5)},
    }


def run_one(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    sim = ["--profile", "gpu-12g", "--time-scale", str(TIME_SCALE), "--num-parallel", str(SLOTS)]
    if args.multiuser_cache:
        sim.append("--multiuser-cache")
    with policy_fleet({node: sim for node in HOSTS}, policy, args.seed, SLOTS) as running:
        fleet.warm_everywhere(running, MODEL, HOSTS)
        turns = asyncio.run(drive(running.edge.url, args.seed, args))
    return {"policy": policy, **summary(turns), "turns_detail": turns}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--conversations", type=int, default=SLOTS * len(HOSTS))
    parser.add_argument("--turns", type=int, default=6)
    parser.add_argument("--system-tokens", type=int, default=SYSTEM_TOKENS)
    parser.add_argument(
        "--think",
        type=float,
        default=THINK_S,
        help="mean simulated seconds between a reply and the next question (longer: fewer "
        "turns at once, so the first turns no longer spread over the hosts by themselves)",
    )
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument(
        "--multiuser-cache",
        action="store_true",
        help="hosts pick cache slots as with OLLAMA_MULTIUSER_CACHE=1",
    )
    parser.add_argument("--json", default="bench/results/affinity.json")
    args = parser.parse_args()
    results = each_policy(run_one, args, "turns_detail")
    report = {
        "benchmark": "affinity",
        "seed": args.seed,
        "hosts": {node: "gpu-12g" for node in HOSTS},
        "slots_per_host": SLOTS,
        "model": MODEL,
        "conversations": args.conversations,
        "turns": args.turns,
        "system_tokens": args.system_tokens,
        "think_s": args.think,
        "question_tokens": QUESTION_TOKENS,
        "reply_tokens": REPLY_TOKENS,
        "time_scale": TIME_SCALE,
        "multiuser_cache": args.multiuser_cache,
        "results": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
