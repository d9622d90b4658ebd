"""Loading, eviction, slots, the max-queue 503 and keep-alive, observed through the HTTP API and
the simulator's own counters (fast time scale; assertions on counts and ordering, not timings)."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import datetime
from typing import Any

import httpx

from ollamasim.server import SimServer
from tests.simfixtures import SimFactory, eventually, sim_stats


async def _generate(client: httpx.AsyncClient, model: str, **extra: Any) -> dict[str, Any]:
    body = {"model": model, "prompt": "hello", "stream": False, **extra}
    response = await client.post("/api/generate", json=body)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


async def _busy(sim: SimServer, gauge: str) -> bool:
    return bool((await sim_stats(sim))[gauge] > 0)


async def _loaded(client: httpx.AsyncClient) -> list[str]:
    return [m["name"] for m in (await client.get("/api/ps")).json()["models"]]


async def test_load_is_paid_once_and_reported(start_sim: SimFactory) -> None:
    sim = await start_sim()
    async with httpx.AsyncClient(base_url=sim.url) as client:
        cold = await _generate(client, "llama3.1:8b")
        warm = await _generate(client, "llama3.1:8b")
        assert cold["load_duration"] > 20 * warm["load_duration"]
        ps = (await client.get("/api/ps")).json()["models"]
    assert (await sim_stats(sim))["loads"] == 1
    assert ps[0]["name"] == "llama3.1:8b" and ps[0]["size_vram"] == ps[0]["size"]
    assert ps[0]["size"] > 4_900_000_000  # weights plus KV cache
    assert ps[0]["context_length"] == 4096


async def test_idle_model_is_evicted_when_memory_is_short(start_sim: SimFactory) -> None:
    sim = await start_sim(vram=6 * 1024**3)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        await _generate(client, "llama3.1:8b")
        await _generate(client, "qwen2.5:7b")
        assert await _loaded(client) == ["qwen2.5:7b"]
    stats = await sim_stats(sim)
    assert (stats["loads"], stats["evictions"]) == (2, 1)


async def test_busy_model_is_never_evicted(start_sim: SimFactory) -> None:
    sim = await start_sim(vram=6 * 1024**3, time_scale=5.0, response_tokens=(100, 100))
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        await _generate(client, "llama3.1:8b")
        order: list[str] = []

        async def long_stream() -> int:
            body = {"model": "llama3.1:8b", "prompt": "long", "options": {"num_predict": 60}}
            lines = 0
            async with client.stream("POST", "/api/generate", json=body) as response:
                async for _ in response.aiter_lines():
                    lines += 1
            order.append("first done")
            return lines

        first = asyncio.create_task(long_stream())
        await eventually(lambda: _busy(sim, "in_flight"), within=10)
        other = await _generate(client, "qwen2.5:7b")
        order.append("second answered")
        assert await first == 61  # 60 tokens and the final chunk: never cut short
    assert order == ["first done", "second answered"]
    assert other["done"] is True
    stats = await sim_stats(sim)
    assert (stats["evictions"], stats["cancelled"]) == (1, 0)


async def test_pending_queue_overflow_is_503_but_warm_requests_pass(start_sim: SimFactory) -> None:
    sim = await start_sim(max_queue=1, time_scale=2.0, models="llama3.2,llama3.1:8b,qwen2.5:7b")
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        await _generate(client, "llama3.2")  # now warm
        cold = asyncio.create_task(_generate(client, "llama3.1:8b"))
        await eventually(lambda: _busy(sim, "pending_loads"), within=10)
        busy = await client.post("/api/generate", json={"model": "qwen2.5:7b", "prompt": "x"})
        warm = await _generate(client, "llama3.2")
        await cold
    assert busy.status_code == 503
    assert busy.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }
    assert warm["done"] is True
    assert (await sim_stats(sim))["busy_rejections"] == 1


async def test_parallel_slots_bound_concurrent_decoding(start_sim: SimFactory) -> None:
    # Token times come from the chunks' created_at (server side): client and server share this
    # event loop, so arrival times on the client would say little about the order of decoding.
    for slots, overlap_expected in ((1, False), (2, True)):
        sim = await start_sim(num_parallel=slots, time_scale=5.0, response_tokens=(100, 100))
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
            await _generate(client, "llama3.2")
            tokens: dict[str, list[datetime]] = {"a": [], "b": []}

            async def run(tag: str, tokens: dict[str, list[datetime]]) -> None:
                body = {"model": "llama3.2", "prompt": tag, "options": {"num_predict": 40}}
                async with client.stream("POST", "/api/generate", json=body) as response:
                    async for line in response.aiter_lines():
                        chunk = json.loads(line)
                        if not chunk["done"]:
                            tokens[tag].append(datetime.fromisoformat(chunk["created_at"]))

            await asyncio.gather(run("a", tokens), run("b", tokens))
        later = max(tokens, key=lambda tag: tokens[tag][0])
        earlier = "a" if later == "b" else "b"
        overlapped = tokens[later][0] < tokens[earlier][-1]
        assert overlapped is overlap_expected, f"num_parallel={slots}"


async def test_empty_prompt_loads_and_keep_alive_zero_unloads(start_sim: SimFactory) -> None:
    sim = await start_sim()
    async with httpx.AsyncClient(base_url=sim.url) as client:
        loaded = (await client.post("/api/generate", json={"model": "llama3.2"})).json()
        assert (loaded["done"], loaded["done_reason"]) == (True, "load")
        assert await _loaded(client) == ["llama3.2:latest"]
        unloaded = await client.post("/api/generate", json={"model": "llama3.2", "keep_alive": 0})
        assert unloaded.json()["done_reason"] == "unload"
        assert await _loaded(client) == []
        chat = await client.post("/api/chat", json={"model": "llama3.2", "messages": []})
        assert chat.json()["done_reason"] == "load"
        await _generate(client, "llama3.2", keep_alive=0)
        assert await _loaded(client) == []


async def test_another_context_length_reloads_even_from_an_empty_request(
    start_sim: SimFactory,
) -> None:
    sim = await start_sim()
    async with httpx.AsyncClient(base_url=sim.url) as client:

        async def context_and_loads() -> tuple[int, int]:
            ps = (await client.get("/api/ps")).json()["models"]
            return ps[0]["context_length"], (await sim_stats(sim))["loads"]

        await client.post("/api/chat", json={"model": "llama3.2", "options": {"num_ctx": 8192}})
        assert await context_and_loads() == (8192, 1)
        await _generate(client, "llama3.2", options={"num_ctx": 8192})
        assert await context_and_loads() == (8192, 1)
        # None asked runs at the automatic length (4096), so an explicit 8192 instance reloads.
        await _generate(client, "llama3.2")
        assert await context_and_loads() == (4096, 2)
        await _generate(client, "llama3.2", options={"num_ctx": 2048})
        assert await context_and_loads() == (2048, 3)
        await _generate(client, "llama3.2", options={"num_ctx": 4096})
        await _generate(client, "llama3.2")  # an explicit 4096 is the automatic length: kept
        assert await context_and_loads() == (4096, 4)


async def test_other_runner_options_reload_and_automatic_num_gpu_matches_any(
    start_sim: SimFactory,
) -> None:
    sim = await start_sim()
    async with httpx.AsyncClient(base_url=sim.url) as client:

        async def loads_after(**extra: Any) -> int:
            await _generate(client, "llama3.2", **extra)
            return int((await sim_stats(sim))["loads"])

        assert await loads_after() == 1
        assert await loads_after(options={"num_batch": 512, "main_gpu": 0}) == 1  # defaults
        assert await loads_after(options={"num_thread": 4}) == 2
        assert await loads_after(options={"num_thread": 4.0}) == 2  # a JSON number, same value
        assert await loads_after() == 3  # the default again
        assert await loads_after(options={"num_gpu": 20}) == 4
        assert await loads_after(options={"num_gpu": -1}) == 4  # Ollama's choice matches any
        assert await loads_after() == 4
        assert await loads_after(options={"num_gpu": 10}) == 5
        assert await loads_after(options={"use_mmap": False}) == 6  # and num_gpu back to auto
        assert await loads_after(options={"use_mmap": False, "num_batch": 256}) == 7
        # The empty request that only loads reloads too.
        load = await client.post("/api/generate", json={"model": "llama3.2"})
        assert load.json()["done_reason"] == "load"
        assert (await sim_stats(sim))["loads"] == 8
        wrong = await client.post(
            "/api/generate", json={"model": "llama3.2", "prompt": "x", "options": {"use_mmap": 1}}
        )
        assert wrong.status_code == 500
        assert wrong.json() == {"error": 'option "use_mmap" must be of type boolean'}
    assert (await sim_stats(sim))["loads"] == 8


async def test_keep_alive_expiry_unloads_idle_model(start_sim: SimFactory) -> None:
    sim = await start_sim(time_scale=100.0)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        await _generate(client, "llama3.2", keep_alive="20s")  # 0.2 s of real time
        assert await _loaded(client) == ["llama3.2:latest"]
        for _ in range(200):
            if not await _loaded(client):
                break
            await asyncio.sleep(0.02)
        assert await _loaded(client) == []
        await _generate(client, "llama3.2", keep_alive=-1)
        expires = (await client.get("/api/ps")).json()["models"][0]["expires_at"]
    assert int(expires[:4]) > 2300  # negative keep-alive: effectively forever
    assert (await sim_stats(sim))["unloads"] == 1


async def test_model_bigger_than_vram_is_split_with_cpu(start_sim: SimFactory) -> None:
    sim = await start_sim(vram=4 * 1024**3)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        await _generate(client, "llama3.1:8b")
        model = (await client.get("/api/ps")).json()["models"][0]
    assert 0 < model["size_vram"] < model["size"]


async def test_max_loaded_models_evicts(start_sim: SimFactory) -> None:
    sim = await start_sim(max_loaded_models=1)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        await _generate(client, "llama3.2")
        await _generate(client, "llama3.1:8b")
        assert await _loaded(client) == ["llama3.1:8b"]


async def test_cpu_host_reports_no_vram(start_sim: SimFactory) -> None:
    sim = await start_sim(profile="cpu")
    async with httpx.AsyncClient(base_url=sim.url) as client:
        await _generate(client, "llama3.2:1b")
        model = (await client.get("/api/ps")).json()["models"][0]
    assert model["size_vram"] == 0 and model["size"] > 0


async def test_prompt_cache_makes_follow_up_turn_cheaper(start_sim: SimFactory) -> None:
    sim = await start_sim(time_scale=2.0)
    long_history = "word " * 3000  # 3,750 tokens: within the 4096 it runs at
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        await _generate(client, "llama3.2", options={"num_predict": 1})
        first = await _generate(client, "llama3.2", prompt=long_history, options={"num_predict": 1})
        follow = await _generate(
            client, "llama3.2", prompt=long_history + "and more", options={"num_predict": 1}
        )
    assert follow["prompt_eval_count"] > first["prompt_eval_count"]
    assert follow["prompt_eval_duration"] * 5 < first["prompt_eval_duration"]
    # As newer Ollama says: how many of the prompt's tokens the cache held (0 is said too).
    assert first["prompt_eval_cached_count"] == 0
    fresh = follow["prompt_eval_count"] - follow["prompt_eval_cached_count"]
    assert 1 <= fresh <= 3  # "and more"


async def _chat_turns(sim: SimServer, order: str) -> dict[str, list[dict[str, Any]]]:
    """Conversations "a" and "b", one turn at a time in ``order`` (e.g. "aba"), each sending back
    the replies it got, as chat clients do; their final replies by conversation."""
    history: dict[str, list[dict[str, str]]] = {
        name: [{"role": "system", "content": f"you are {name} " + "rule " * 300}] for name in "ab"
    }
    finals: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        for turn, name in enumerate(order):
            messages = history[name]
            messages.append({"role": "user", "content": f"question {turn}"})
            body = {"model": "llama3.2", "messages": messages, "stream": False}
            reply = (await client.post("/api/chat", json=body)).json()
            messages.append(reply["message"])
            finals[name].append(reply)
    return finals


async def test_a_follow_up_turn_finds_its_conversation_in_the_cache(start_sim: SimFactory) -> None:
    """A chat's prompt opens the assistant's turn, as a template does, so the reply the client
    sends back continues the cached prompt: the next turn evaluates only its question."""
    sim = await start_sim(time_scale=20.0)
    first, second = (await _chat_turns(sim, "aa"))["a"]
    assert first["prompt_eval_cached_count"] == 0
    assert second["prompt_eval_count"] - second["prompt_eval_cached_count"] <= 12  # the question


async def test_cache_slots_are_picked_as_ollamas_runner_picks_them(start_sim: SimFactory) -> None:
    """Two slots, two conversations taking turns. Ollama's default takes the free slot sharing
    the longest prefix, and another conversation shares the template's start: "b" takes over
    the slot of "a", whose next turn finds nothing. With OLLAMA_MULTIUSER_CACHE, "b" takes the
    least recently used slot, and "a" finds its own."""
    fresh = {}
    for multiuser in (False, True):
        sim = await start_sim(time_scale=20.0, num_parallel=2, multiuser_cache=multiuser)
        back = (await _chat_turns(sim, "aba"))["a"][1]
        fresh[multiuser] = back["prompt_eval_count"] - back["prompt_eval_cached_count"]
    assert fresh[True] <= 12
    assert fresh[False] > 300


async def test_openai_usage_tells_the_cached_part_of_the_prompt(start_sim: SimFactory) -> None:
    """The OpenAI routes carry the cached count in usage, as Ollama maps it: chat completions
    in prompt_tokens_details, Responses in input_tokens_details; embeddings have none."""
    sim = await start_sim(time_scale=5.0)
    history = "word " * 800
    chat = {
        "model": "llama3.2",
        "messages": [{"role": "user", "content": history}],
        "max_tokens": 1,
        "stream": False,
    }
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        first = await client.post("/v1/chat/completions", json=chat)
        again = await client.post(
            "/v1/responses",
            json={"model": "llama3.2", "input": history + "and more", "max_output_tokens": 1},
        )
        embed = await client.post("/api/embed", json={"model": "llama3.2", "input": history})
    usage = first.json()["usage"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    usage = again.json()["usage"]
    cached = usage["input_tokens_details"]["cached_tokens"]
    assert 0 < cached < usage["input_tokens"]
    assert "prompt_eval_cached_count" not in embed.json()


async def test_the_automatic_context_length_follows_the_version_and_vram(
    start_sim: SimFactory,
) -> None:
    """A request naming no num_ctx runs at 2048 before Ollama 0.6.7, then at 4096; from 0.15.5
    at a length picked from the host's total VRAM; OLLAMA_CONTEXT_LENGTH stands over all."""
    found = {}
    for profile, version, context in (
        ("gpu-24g", "0.6.5", 0),
        ("gpu-24g", "0.12.6", 0),
        ("gpu-24g", "0.15.5", 0),
        ("gpu-12g", "0.15.5", 0),
        ("cpu", "0.16.0", 0),
        ("gpu-12g", "0.15.5", 8192),
    ):
        sim = await start_sim(profile=profile, version=version, context_length=context)
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
            await _generate(client, "llama3.2")
            found[profile, version, context] = (await client.get("/api/ps")).json()["models"][0]
    lengths = [m["context_length"] for m in found.values()]
    assert lengths == [2048, 4096, 32768, 4096, 4096, 8192]


async def test_a_prompt_over_the_context_length_is_cut_to_its_end(start_sim: SimFactory) -> None:
    """Ollama evaluates only the last num_ctx tokens of a longer prompt, without an error: the
    reply counts what it read, and only the log (here, the stats) says what was lost."""
    sim = await start_sim(time_scale=20.0)
    document = "word " * 6000  # 7,500 tokens
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        short = await _generate(client, "llama3.2", prompt=document, options={"num_predict": 1})
        whole = await _generate(
            client, "llama3.2", prompt=document, options={"num_predict": 1, "num_ctx": 8192}
        )
    assert short["prompt_eval_count"] == 4096
    assert whole["prompt_eval_count"] == 7500
    assert (await sim_stats(sim))["truncated_prompts"] == 1


async def test_a_reply_outgrowing_the_context_length_is_counted(start_sim: SimFactory) -> None:
    """A prompt that fits leaves the reply the rest of the context; a longer reply makes Ollama
    drop half of the context (the prompt's start) and go on, which only its log tells."""
    sim = await start_sim(time_scale=50.0, response_tokens=(200, 200))
    prompt = "word " * 3200  # 4,000 tokens of 4096
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        await _generate(client, "llama3.2", prompt=prompt, options={"num_predict": 50})
        assert (await sim_stats(sim))["context_shifts"] == 0
        await _generate(client, "llama3.2", prompt=prompt + "!")  # 200 tokens
    assert (await sim_stats(sim))["context_shifts"] == 1


async def test_an_embedding_input_over_the_context_length_is_cut_or_refused(
    start_sim: SimFactory,
) -> None:
    """Ollama embeds each input at the runner's context length (from 0.15.5 the VRAM's tier,
    capped at the model's trained length): a longer one is cut to its start, or with
    truncate false refused, once the model is loaded. bge-m3 is trained for 8192 tokens."""
    chunk = "word " * 4800  # 6,000 tokens
    counts = {}
    for profile in ("gpu-12g", "gpu-24g"):
        sim = await start_sim(profile=profile, version="0.15.5", models="bge-m3:latest")
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
            body = {"model": "bge-m3", "input": [chunk, "short"]}
            cut = await client.post("/api/embed", json=body)
            refused = await client.post("/api/embed", json={**body, "truncate": False})
        counts[profile] = cut.json()["prompt_eval_count"], refused.status_code
        if refused.status_code == 400:
            assert refused.json() == {"error": "the input length exceeds the context length"}
        counts[profile, "cut"] = (await sim_stats(sim))["truncated_prompts"]
    assert counts["gpu-12g"] == (4096 + 2, 400)
    assert counts["gpu-12g", "cut"] == 1
    assert counts["gpu-24g"] == (6000 + 2, 200)  # 8192: whole
    assert counts["gpu-24g", "cut"] == 0


async def test_an_image_takes_its_tokens_in_a_vision_models_prompt(start_sim: SimFactory) -> None:
    """A vision model evaluates each image as tokens of the prompt (768, as Ollama counts one
    when fitting a chat into its context), cached with the conversation; a model without
    vision ignores images."""
    sim = await start_sim(time_scale=20.0)
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(64)).decode()
    question = {"role": "user", "content": "what is in it?"}

    async def chat(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"model": model, "messages": messages, "stream": False}
        async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
            reply = await client.post("/api/chat", json={**body, "options": {"num_predict": 2}})
        assert reply.status_code == 200, reply.text
        data: dict[str, Any] = reply.json()
        return data

    with_image = await chat("gemma3:27b", [{**question, "images": [png]}])
    again = [{**question, "images": [png]}, with_image["message"], question]
    follow = await chat("gemma3:27b", again)
    assert follow["prompt_eval_cached_count"] > 768
    without = await chat("gemma3:27b", [question])
    assert with_image["prompt_eval_count"] - without["prompt_eval_count"] == 768
    blind = await chat("llama3.2", [{**question, "images": [png]}])
    assert blind["prompt_eval_count"] == (await chat("llama3.2", [question]))["prompt_eval_count"]


async def test_an_embedding_model_gets_one_slot_whatever_num_parallel_says(
    start_sim: SimFactory,
) -> None:
    """sched.go load() runs embedding-only models with one parallel slot (and so one slot's KV
    cache); /api/tags lists capabilities, which is how a balancer can tell."""
    sim = await start_sim(num_parallel=4)
    async with httpx.AsyncClient(base_url=sim.url) as client:
        embedded = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
        assert embedded.status_code == 200, embedded.text
        await _generate(client, "llama3.2")
        listed = (await client.get("/api/tags")).json()["models"]
    slots = {r["name"]: r["num_parallel"] for r in (await sim_stats(sim))["runners"]}
    assert slots == {"nomic-embed-text:latest": 1, "llama3.2:latest": 4}
    capabilities = {m["name"]: m["capabilities"] for m in listed}
    assert capabilities["nomic-embed-text:latest"] == ["embedding"]
    assert "completion" in capabilities["llama3.2:latest"]
