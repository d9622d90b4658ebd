"""Soak: a fleet under steady mixed load with faults injected at random; nothing may be lost.

Method: a fresh fleet on loopback (control plane, four unlike simulated hosts with agents, one
edge). C concurrent clients send N requests in all, over models every host or most hosts have:
native generate and chat (55%) and OpenAI chat completions (25%), streamed and not, and
embeddings on /api/embed and /v1/embeddings (20%). Every ~2 s one host gets a random fault for
~1 s (busy 503s, dropped connections, slow decoding, refused connections, runners dying
mid-stream). Every response is checked: complete (a final chunk with its counts, a [DONE] after
the usage, a vector per input) or cleanly failed (an HTTP error status, an error line, an
OpenAI stream's error event or empty delta with no [DONE] after it, or a connection the edge cut
on purpose), never silently truncated: a body that does not parse, or lacks what a whole one
has, counts as truncated. At the end: open leases (must be 0), the hosts' own counters against
what clients saw, and control plane and edge resident memory at start and end.

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
    {"mode": "stream_error", "after_chunks": 3, "rate": 0.3},
)


async def one(client: httpx.AsyncClient, rng: random.Random) -> tuple[str, str]:
    """Send one request of a kind drawn from the mix; return the kind and 'ok', 'failed:<how>'
    (a visible failure) or 'truncated' (a reply that looks whole but is not)."""
    draw = rng.random()
    kind = "native" if draw < 0.55 else "openai" if draw < 0.8 else "embed"
    try:
        if kind == "native":
            outcome = await _native(client, rng)
        elif kind == "openai":
            outcome = await _openai(client, rng)
        else:
            outcome = await _embed(client, rng)
    except (httpx.RemoteProtocolError, httpx.ReadError):
        outcome = "failed:cut"  # the edge cut the body on purpose: a visible failure
    except (ValueError, KeyError, IndexError, TypeError):
        outcome = "truncated"  # a 200 whose body ends early or lacks a whole reply's parts
    return kind, outcome


async def _native(client: httpx.AsyncClient, rng: random.Random) -> str:
    """/api/generate or /api/chat, streamed or not: whole = a done line whose eval_count
    matches the token lines; an {"error"} line is Ollama's in-band failure."""
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
    async with client.stream("POST", path, json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return f"failed:http_{response.status_code}"
        if not streaming:
            final = json.loads(await response.aread())
            return "ok" if final.get("done") and "eval_count" in final else "truncated"
        lines = [json.loads(line) async for line in response.aiter_lines()]
    if lines and "error" in lines[-1]:
        return "failed:error_line"
    if not lines or not lines[-1].get("done"):
        return "truncated"
    return "ok" if lines[-1].get("eval_count") == len(lines) - 1 else "truncated"


async def _openai(client: httpx.AsyncClient, rng: random.Random) -> str:
    """/v1/chat/completions, streamed (with usage) or not. Streamed, whole = a finish_reason,
    a usage whose completion_tokens match the content events, then [DONE]. Failing after the
    200, the stream ends with no [DONE] after an error event (the edge's word, which the OpenAI
    SDK raises) or an empty delta with no finish_reason (the host's own, as Ollama swallows a
    runner's error)."""
    streaming = rng.random() < 0.5
    body: dict[str, object] = {
        "model": rng.choice(MODELS),
        "messages": [{"role": "user", "content": f"o{rng.random()}"}],
        "stream": streaming,
    }
    if streaming:
        body["stream_options"] = {"include_usage": True}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return f"failed:http_{response.status_code}"
        if not streaming:
            whole = json.loads(await response.aread())
            choice = whole["choices"][0]
            tokens = whole["usage"]["completion_tokens"]
            return (
                "ok"
                if choice["finish_reason"] and choice["message"]["content"] and tokens
                else "truncated"
            )
        events = [
            line.removeprefix("data: ")
            async for line in response.aiter_lines()
            if line.startswith("data: ")
        ]
    if not events or events[-1] != "[DONE]":
        last = json.loads(events[-1]) if events else {}
        if "error" in last:
            return "failed:error_event"
        swallowed = [{"index": 0, "delta": {}, "finish_reason": None}]
        return "failed:empty_delta" if last.get("choices") == swallowed else "truncated"
    chunks = [json.loads(e) for e in events[:-1]]
    content = sum(1 for c in chunks for ch in c["choices"] if ch["delta"].get("content"))
    finished = any(ch["finish_reason"] for c in chunks for ch in c["choices"])
    usage = chunks[-1].get("usage") if chunks else None
    whole = finished and usage is not None and usage["completion_tokens"] == content
    return "ok" if whole else "truncated"


async def _embed(client: httpx.AsyncClient, rng: random.Random) -> str:
    """/api/embed or /v1/embeddings of 1-4 inputs: whole = one vector per input, all of one
    length, and the inputs' token count."""
    inputs = [f"e{rng.random()}" for _ in range(rng.randint(1, 4))]
    model = rng.choice(("nomic-embed-text", "nomic-embed-text", "llama3.2"))
    native = rng.random() < 0.5
    path = "/api/embed" if native else "/v1/embeddings"
    response = await client.post(path, json={"model": model, "input": inputs})
    if response.status_code != 200:
        return f"failed:http_{response.status_code}"
    reply = response.json()
    if native:
        vectors, tokens = reply["embeddings"], reply.get("prompt_eval_count")
    else:
        vectors, tokens = [d["embedding"] for d in reply["data"]], reply["usage"]["prompt_tokens"]
    whole = len(vectors) == len(inputs) and len({len(v) for v in vectors}) == 1 and tokens
    return "ok" if whole else "truncated"


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
) -> tuple[Counter[str], dict[str, Counter[str]], Counter[str], float]:
    rng = random.Random(seed)
    results: Counter[str] = Counter()
    by_kind: dict[str, Counter[str]] = {}
    injected: Counter[str] = Counter()
    stop = asyncio.Event()
    remaining = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=edge_url, timeout=120, limits=limits) as client:

        async def worker() -> None:
            for _ in remaining:
                kind, result = await one(client, rng)
                outcome, _, how = result.partition(":")
                results[outcome] += 1
                by_kind.setdefault(kind, Counter())[result] += 1
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
    return results, by_kind, injected, elapsed


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
        results, by_kind, injected, elapsed = asyncio.run(
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
        "by_api": {kind: dict(sorted(c.items())) for kind, c in sorted(by_kind.items())},
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
