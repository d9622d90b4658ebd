"""Cancellation when the client leaves, and every fault mode, as the host itself counts them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from ollamasim.server import SimServer
from tests.simfixtures import SimFactory, eventually, sim_stats

LONG = {"model": "llama3.2", "prompt": "go on", "options": {"num_predict": 5000}}


async def _idle_after_cancel(sim: SimServer, cancelled: int = 1) -> None:
    async def done() -> bool:
        stats = await sim_stats(sim)
        runner = stats["runners"][0] if stats["runners"] else {"refs": 0, "active": 0}
        return (stats["cancelled"], stats["in_flight"], runner["refs"], runner["active"]) == (
            cancelled,
            0,
            0,
            0,
        )

    await eventually(done)


async def test_closing_a_stream_cancels_generation_within_a_second(start_sim: SimFactory) -> None:
    sim = await start_sim(time_scale=1.0, response_tokens=(5000, 5000))
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        async with client.stream("POST", "/api/generate", json=LONG) as response:
            lines = response.aiter_lines()
            assert json.loads(await anext(lines))["done"] is False
            assert json.loads(await anext(lines))["done"] is False
        await _idle_after_cancel(sim)
        # the slot is free: a new request is served at once
        reply = await client.post(
            "/api/generate", json={**LONG, "options": {"num_predict": 3}, "stream": False}
        )
    assert reply.json()["eval_count"] == 3
    stats = await sim_stats(sim)
    assert stats["tokens_generated"] < 5000 and stats["completed"] == 1


async def test_abandoned_non_streaming_request_is_cancelled(start_sim: SimFactory) -> None:
    sim = await start_sim(time_scale=1.0, response_tokens=(5000, 5000))
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        task = asyncio.create_task(client.post("/api/generate", json={**LONG, "stream": False}))
        await eventually(lambda: _tokens_flowing(sim), within=5.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await _idle_after_cancel(sim)


async def test_openai_stream_disconnect_cancels(start_sim: SimFactory) -> None:
    sim = await start_sim(time_scale=1.0, response_tokens=(5000, 5000))
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with (
        httpx.AsyncClient(base_url=sim.url, timeout=30) as client,
        client.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert (await anext(response.aiter_lines())).startswith("data: ")
    await _idle_after_cancel(sim)


async def _loading(sim: SimServer, waiting: int = 1) -> bool:
    stats = await sim_stats(sim)
    runners = stats["runners"]
    return bool(runners) and not runners[0]["ready"] and stats["pending_loads"] == waiting


async def test_leaving_during_the_load_it_started_stops_the_load(start_sim: SimFactory) -> None:
    sim = await start_sim(time_scale=2.0)  # llama3.1:8b takes about a second to load
    body = {"model": "llama3.1:8b", "prompt": "hi", "stream": False}
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        task = asyncio.create_task(client.post("/api/generate", json=body))
        await eventually(lambda: _loading(sim), within=5.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        async def unloaded() -> bool:
            stats = await sim_stats(sim)
            return (stats["runners"], stats["pending_loads"]) == ([], 0)

        await eventually(unloaded, within=2.0)
        assert (await client.get("/api/ps")).json()["models"] == []
    assert (await sim_stats(sim))["loads"] == 0


async def test_a_request_waiting_for_an_abandoned_load_loads_the_model_itself(
    start_sim: SimFactory,
) -> None:
    sim = await start_sim(time_scale=2.0)
    body = {"model": "llama3.1:8b", "prompt": "hi", "stream": False}
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        first = asyncio.create_task(client.post("/api/generate", json=body))
        await eventually(lambda: _loading(sim), within=5.0)
        second = asyncio.create_task(client.post("/api/generate", json=body))
        await eventually(lambda: _loading(sim, waiting=2), within=5.0)
        first.cancel()
        reply = await second
        assert reply.status_code == 200, reply.text
        assert reply.json()["done"] is True
        assert [m["name"] for m in (await client.get("/api/ps")).json()["models"]] == [
            "llama3.1:8b"
        ]
    assert (await sim_stats(sim))["loads"] == 1


async def _tokens_flowing(sim: SimServer) -> bool:
    return bool((await sim_stats(sim))["tokens_generated"] > 0)


async def _put_fault(sim: SimServer, **fault: Any) -> None:
    port = sim.control_port or sim.port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.put("/_sim/fault", json=fault)
        assert response.status_code == 200, response.text


async def test_busy_fault_answers_503_then_clears_after_count(
    sim: SimServer, http: httpx.AsyncClient
) -> None:
    await _put_fault(sim, mode="busy", count=1)
    body = {"model": "llama3.2", "prompt": "x", "stream": False}
    first = await http.post("/api/generate", json=body)
    assert first.status_code == 503
    assert first.json()["error"].startswith("server busy, please try again.")
    assert (await http.post("/api/generate", json=body)).status_code == 200
    stats = await sim_stats(sim)
    assert stats["faults_injected"] == {"busy": 1} and stats["fault"] is None


async def test_busy_fault_on_openai_route_uses_openai_shape(
    sim: SimServer, http: httpx.AsyncClient
) -> None:
    await _put_fault(sim, mode="busy")
    response = await http.post("/v1/embeddings", json={"model": "nomic-embed-text", "input": "x"})
    assert response.status_code == 503 and response.json()["error"]["type"] == "api_error"


async def test_error_fault_is_a_500(sim: SimServer, http: httpx.AsyncClient) -> None:
    await _put_fault(sim, mode="error")
    response = await http.post(
        "/api/chat", json={"model": "llama3.2", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.status_code == 500 and "runner" in response.json()["error"]


async def test_hang_fault_never_sends_a_first_byte(sim: SimServer) -> None:
    await _put_fault(sim, mode="hang")
    async with httpx.AsyncClient(base_url=sim.url, timeout=httpx.Timeout(5, read=0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/api/generate", json={"model": "llama3.2", "prompt": "x"})
    assert (await sim_stats(sim))["faults_injected"] == {"hang": 1}


async def test_drop_fault_cuts_a_stream_after_n_chunks(
    sim: SimServer, http: httpx.AsyncClient
) -> None:
    await _put_fault(sim, mode="drop", after_chunks=3)
    received = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with http.stream(
            "POST", "/api/generate", json={"model": "llama3.2", "prompt": "x"}
        ) as response:
            async for line in response.aiter_lines():
                received.append(json.loads(line))
    assert len(received) == 3 and not any(chunk["done"] for chunk in received)
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post("/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False})


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "stream": False}),
        ("/api/embed", {"model": "nomic-embed-text", "input": ["a", "b"]}),
        ("/api/embeddings", {"model": "nomic-embed-text", "prompt": "a"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/embeddings", {"model": "nomic-embed-text", "input": "a"}),
        ("/v1/responses", {"input": "x"}),
        ("/v1/messages", {"max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}),
    ],
)
async def test_drop_fault_cuts_every_reply_not_streamed(
    sim: SimServer, http: httpx.AsyncClient, path: str, body: dict[str, Any]
) -> None:
    """A reply in one piece is cut halfway through the length it announced, on every route a
    drop can hit: a client sees a broken body, never a short valid one."""
    await _put_fault(sim, mode="drop")
    with pytest.raises(httpx.RemoteProtocolError):
        await http.post(path, json={"model": "llama3.2", **body})
    assert (await sim_stats(sim))["faults_injected"] == {"drop": 1}


async def test_stream_error_fault_fails_in_band_as_ollama_does(
    sim: SimServer, http: httpx.AsyncClient
) -> None:
    """A runner dying mid-reply: the 200 is already out, so Ollama says so inside the stream."""
    await _put_fault(sim, mode="stream_error", after_chunks=2)
    async with http.stream(
        "POST", "/api/generate", json={"model": "llama3.2", "prompt": "x"}
    ) as response:
        lines = [json.loads(line) async for line in response.aiter_lines()]
    assert response.status_code == 200 and len(lines) == 3
    assert not any(line.get("done") for line in lines)
    assert "runner process has terminated" in lines[-1]["error"]
    # OpenAI's stream swallows it: an empty delta, then the end, with no [DONE].
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True}
    async with http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
    assert response.status_code == 200 and len(events) == 3 and "data: [DONE]" not in events
    assert json.loads(events[-1].removeprefix("data: "))["choices"][0]["delta"] == {}
    # A reply not streamed gets the runner's 500.
    whole = await http.post(
        "/api/generate", json={"model": "llama3.2", "prompt": "x", "stream": False}
    )
    assert whole.status_code == 500 and "runner" in whole.json()["error"]


async def test_slow_fault_slows_decoding(sim: SimServer, http: httpx.AsyncClient) -> None:
    # 64 tokens, not 8: at time scale 50 eight tokens decode in half a millisecond, which a
    # busy machine's scheduling jitter alone can stretch past a fifth of the slowed run.
    body = {"model": "llama3.2", "prompt": "x", "stream": False, "options": {"num_predict": 64}}
    await http.post("/api/generate", json=body)  # load first
    normal = (await http.post("/api/generate", json=body)).json()
    await _put_fault(sim, mode="slow", factor=20)
    slow = (await http.post("/api/generate", json=body)).json()
    assert slow["eval_duration"] > 5 * normal["eval_duration"]


async def test_refuse_fault_closes_the_port_until_cleared(start_sim: SimFactory) -> None:
    sim = await start_sim(control_listen=("127.0.0.1", 0))
    control = httpx.AsyncClient(base_url=f"http://127.0.0.1:{sim.control_port}")
    api = httpx.AsyncClient(base_url=sim.url, timeout=5)
    async with control, api:
        assert (await control.get("/api/tags")).status_code == 404  # control port: /_sim only
        await control.put("/_sim/fault", json={"mode": "refuse"})
        async with httpx.AsyncClient(base_url=sim.url) as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.get("/api/version")
        await control.delete("/_sim/fault")
        await eventually(lambda: _answers(sim))


async def test_refuse_fault_with_duration_reopens_by_itself(start_sim: SimFactory) -> None:
    sim = await start_sim(fault="refuse:duration_s=0.3")
    async with httpx.AsyncClient(base_url=sim.url) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("/api/version")
    await eventually(lambda: _answers(sim), within=3.0)


async def _answers(sim: SimServer) -> bool:
    try:
        async with httpx.AsyncClient(base_url=sim.url) as client:
            return (await client.get("/api/version")).status_code == 200
    except httpx.ConnectError:
        return False


async def test_fault_given_at_start(start_sim: SimFactory) -> None:
    sim = await start_sim(fault="busy:rate=1.0")
    async with httpx.AsyncClient(base_url=sim.url) as client:
        response = await client.post("/api/embed", json={"model": "nomic-embed-text", "input": "x"})
    assert response.status_code == 503


async def test_bad_fault_is_rejected(sim: SimServer, http: httpx.AsyncClient) -> None:
    response = await http.put("/_sim/fault", json={"mode": "meteor"})
    assert response.status_code == 400 and "unknown fault mode" in response.json()["error"]
    assert (await sim_stats(sim))["fault"] is None
