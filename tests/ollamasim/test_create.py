"""Making models on the simulator through the real ollama client: blobs, and creates from a
model or from uploaded files, with Ollama's progress lines and errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import ollama
import pytest

from ollamasim.server import SimServer
from tests.simfixtures import SimFactory, sim_stats


async def test_create_from_a_model_and_from_files(sim: SimServer, tmp_path: Path) -> None:
    client = ollama.AsyncClient(host=sim.url)
    lines = [p.status async for p in await client.create("mine", from_="llama3.2", stream=True)]
    assert lines[0].startswith("using existing layer sha256:")
    assert lines[-2:] == ["writing manifest", "success"]
    assert (await client.show("mine")).details.family == "llama"
    assert (await client.generate("mine", "hi")).response

    weights = tmp_path / "w.gguf"
    weights.write_bytes(b"GGUF" + bytes(3000))
    digest = await client.create_blob(weights)
    assert digest == "sha256:" + hashlib.sha256(weights.read_bytes()).hexdigest()
    made = await client.create("fromfile", files={"w.gguf": digest})
    assert made.status == "success"
    assert "fromfile:latest" in {m.model for m in (await client.list()).models}


async def test_blob_and_create_errors(http: httpx.AsyncClient, sim: SimServer) -> None:
    good = "sha256:" + hashlib.sha256(b"abc").hexdigest()
    assert (await http.head(f"/api/blobs/{good}")).status_code == 404
    assert (await http.post(f"/api/blobs/{good}", content=b"abc")).status_code == 201
    assert (await http.post(f"/api/blobs/{good}", content=b"abc")).status_code == 200  # has it
    assert (await http.head(f"/api/blobs/{good}")).status_code == 200
    wrong = "sha256:" + "1" * 64
    assert (await http.post(f"/api/blobs/{wrong}", content=b"abc")).status_code == 400
    assert (await http.post("/api/blobs/md5:abc", content=b"abc")).status_code == 400
    client = ollama.AsyncClient(host=sim.url)
    with pytest.raises(ollama.ResponseError) as missing:
        await client.create("x", from_="ghost")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as unknown_blob:
        await client.create("x", files={"a.gguf": wrong})
    assert unknown_blob.value.status_code == 400
    assert (await http.post("/api/create", json={"model": "x"})).status_code == 400


async def test_a_model_made_from_another_runs_on_its_runner_unless_it_asks_other_options(
    start_sim: SimFactory,
) -> None:
    """Ollama's scheduler keeps runners by weights file: a model made FROM another with only a
    SYSTEM of its own is served by the base's runner (no load; /api/ps lists the base), and
    /api/show names the same weights blob. One whose PARAMETER sets num_ctx asks that length
    by default, so it reloads the runner, and the base reloads it back."""
    sim = await start_sim(models="llama3.2")
    client = ollama.AsyncClient(host=sim.url)
    await client.create("bot", from_="llama3.2", system="You are terse.\nFROM now on, be kind.")
    await client.create("long", from_="llama3.2", parameters={"num_ctx": 8192})
    await client.generate("llama3.2", "hi")
    assert (await client.generate("bot", "hi")).load_duration < 10**6  # under a millisecond
    assert [m.model for m in (await client.ps()).models] == ["llama3.2:latest"]
    assert (await sim_stats(sim))["loads"] == 1
    await client.generate("long", "hi")
    listed = (await client.ps()).models
    assert [(m.model, m.context_length) for m in listed] == [("long:latest", 8192)]
    assert (await client.generate("long", "hi", options={"num_ctx": 8192})).load_duration < 10**6
    await client.generate("bot", "hi")
    assert (await sim_stats(sim))["loads"] == 3  # bot runs at the automatic length: reloaded

    def from_lines(modelfile: str) -> list[str]:
        return [line for line in modelfile.splitlines() if line.startswith("FROM /")]

    base, bot, long = [(await client.show(m)).modelfile or "" for m in ("llama3.2", "bot", "long")]
    assert from_lines(base) == from_lines(bot) == from_lines(long)
    assert from_lines(base)[0].startswith("FROM /root/.ollama/models/blobs/sha256-")
    assert 'SYSTEM """You are terse.\nFROM now on, be kind."""' in bot
    assert "PARAMETER num_ctx 8192" in long
    digests = {m.model: m.digest for m in (await client.list()).models}
    assert len({digests["llama3.2:latest"], digests["bot:latest"], digests["long:latest"]}) == 3


async def test_options_a_request_names_stand_over_the_modelfiles_even_at_the_defaults(
    start_sim: SimFactory,
) -> None:
    """Ollama lays a request's options over its model's PARAMETERs (routes.go modelOptions),
    Ollama's own defaults included: num_batch 512 named reloads an instance loaded with the
    modelfile's 256, and num_gpu -1 (Ollama's choice) matches an instance loaded with 10."""
    sim = await start_sim(models="llama3.2")
    client = ollama.AsyncClient(host=sim.url)
    await client.create("tuned", from_="llama3.2", parameters={"num_batch": 256, "num_gpu": 20})

    async def loads_after(**options: int) -> int:
        await client.generate("tuned", "hi", options=options)
        return int((await sim_stats(sim))["loads"])

    assert await loads_after() == 1
    assert await loads_after(num_batch=256) == 1
    assert await loads_after(num_batch=512) == 2  # the default, named: not the modelfile's
    assert await loads_after() == 3
    assert await loads_after(num_gpu=10) == 4
    assert await loads_after(num_gpu=-1) == 4  # any instance will do
    assert await loads_after() == 5  # the modelfile's 20 again


async def test_a_models_system_prompt_is_evaluated_with_requests_that_bring_none(
    start_sim: SimFactory,
) -> None:
    """Ollama gives a chat without a system message, and a generate without ``system``, the
    model's SYSTEM: its tokens are evaluated and counted with the prompt (one that brings its
    own, or a raw generate, goes without)."""
    sim = await start_sim(models="llama3.2")
    client = ollama.AsyncClient(host=sim.url)
    briefing = "Answer as a ship's engineer would. " * 100  # about 900 tokens
    await client.create("engineer", from_="llama3.2", system=briefing)
    ask = [{"role": "user", "content": "hi"}]
    plain = await client.chat("llama3.2", messages=ask, options={"num_predict": 1})
    briefed = await client.chat("engineer", messages=ask, options={"num_predict": 1})
    assert briefed.prompt_eval_count - plain.prompt_eval_count >= 850
    own = [{"role": "system", "content": "Be brief."}, *ask]
    brought = await client.chat("engineer", messages=own, options={"num_predict": 1})
    assert brought.prompt_eval_count < plain.prompt_eval_count + 10
    generated = await client.generate("engineer", "hi", options={"num_predict": 1})
    assert generated.prompt_eval_count >= 850
    raw = await client.generate("engineer", "hi", raw=True, options={"num_predict": 1})
    assert raw.prompt_eval_count < 10
