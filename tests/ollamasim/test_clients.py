"""The simulator through the real `ollama` and `openai` Python clients."""

from __future__ import annotations

import ollama
import openai
import pytest

from ollamasim.server import SimServer


@pytest.fixture
def client(sim: SimServer) -> ollama.AsyncClient:
    return ollama.AsyncClient(host=sim.url)


@pytest.fixture
def oai(sim: SimServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)


async def test_generate_streaming_and_not(client: ollama.AsyncClient) -> None:
    chunks = [
        c async for c in await client.generate("llama3.2", "Why is the sky blue?", stream=True)
    ]
    assert chunks[-1].done and chunks[-1].done_reason in ("stop", "length")
    assert all(not c.done for c in chunks[:-1])
    streamed = "".join(c.response for c in chunks)
    assert chunks[-1].eval_count == len(chunks) - 1
    whole = await client.generate("llama3.2", "Why is the sky blue?")
    assert whole.response == streamed  # same seed and prompt, same text
    assert whole.eval_count == chunks[-1].eval_count
    assert whole.prompt_eval_count and whole.total_duration and whole.context


async def test_chat_streaming_and_not(client: ollama.AsyncClient) -> None:
    messages = [{"role": "user", "content": "hello"}]
    parts = [c async for c in await client.chat("llama3.1:8b", messages=messages, stream=True)]
    assert parts[-1].done and parts[-1].message.role == "assistant"
    text = "".join(p.message.content or "" for p in parts)
    reply = await client.chat("llama3.1:8b", messages=messages)
    assert reply.message.content == text
    assert reply.eval_count == len(parts) - 1


async def test_chat_tools_and_structured_output(client: ollama.AsyncClient) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    reply = await client.chat(
        "llama3.1:8b", messages=[{"role": "user", "content": "weather?"}], tools=[tool]
    )
    calls = reply.message.tool_calls or []
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(calls[0].function.arguments["city"], str)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    structured = await client.chat(
        "llama3.1:8b", messages=[{"role": "user", "content": "a number"}], format=schema
    )
    import json

    assert isinstance(json.loads(structured.message.content or "")["n"], int)


async def test_thinking_model_thinks_by_default_and_others_refuse(
    client: ollama.AsyncClient,
) -> None:
    await client.pull("qwen3:8b")
    reply = await client.chat("qwen3:8b", messages=[{"role": "user", "content": "hm"}])
    assert reply.message.thinking
    with pytest.raises(ollama.ResponseError) as exc:
        await client.chat("llama3.2", messages=[{"role": "user", "content": "x"}], think=True)
    assert exc.value.status_code == 400
    assert exc.value.error == '"llama3.2" does not support thinking'


async def test_embed_list_ps_show(client: ollama.AsyncClient) -> None:
    embedded = await client.embed("nomic-embed-text", input=["a", "b"])
    assert len(embedded.embeddings) == 2 and len(embedded.embeddings[0]) == 768
    norm = sum(v * v for v in embedded.embeddings[0])
    assert norm == pytest.approx(1.0, abs=1e-4)
    legacy = await client.embeddings("nomic-embed-text", prompt="a")
    assert len(legacy.embedding) == 768
    listed = await client.list()
    assert "llama3.2:latest" in {m.model for m in listed.models}
    loaded = await client.ps()
    assert {m.model for m in loaded.models} == {"nomic-embed-text:latest"}
    shown = await client.show("llama3.2")
    assert shown.modelinfo and shown.capabilities and "completion" in shown.capabilities


async def test_pull_progress_then_the_model_exists(client: ollama.AsyncClient) -> None:
    statuses = [p.status async for p in await client.pull("qwen2.5:0.5b", stream=True)]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert any(s.startswith("pulling ") and s != "pulling manifest" for s in statuses)
    assert "qwen2.5:0.5b" in {m.model for m in (await client.list()).models}
    reply = await client.generate("qwen2.5:0.5b", "hi")
    assert reply.done


async def test_pull_of_unknown_model_fails_in_stream(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError, match="file does not exist"):
        async for _ in await client.pull("no-such-model", stream=True):
            pass


async def test_unknown_model_is_a_404(client: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as exc:
        await client.generate("nope", "hi")
    assert exc.value.status_code == 404
    assert exc.value.error == "model 'nope' not found"


async def test_openai_chat_streaming_and_not(oai: openai.AsyncOpenAI) -> None:
    messages = [{"role": "user", "content": "hello there"}]
    whole = await oai.chat.completions.create(model="llama3.2", messages=messages)  # type: ignore[arg-type]
    assert whole.object == "chat.completion" and whole.choices[0].finish_reason == "stop"
    assert whole.usage is not None and whole.usage.completion_tokens > 0
    stream = await oai.chat.completions.create(
        model="llama3.2",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    text, finish, usage = "", None, None
    async for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == whole.choices[0].message.content
    assert finish == "stop" and usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens


async def test_openai_embeddings_models_and_errors(oai: openai.AsyncOpenAI) -> None:
    result = await oai.embeddings.create(model="nomic-embed-text", input=["x", "y"])
    assert [d.index for d in result.data] == [0, 1] and len(result.data[0].embedding) == 768
    ids = {m.id async for m in oai.models.list()}
    assert "llama3.1:8b" in ids
    assert (await oai.models.retrieve("llama3.1:8b")).owned_by == "library"
    assert (await oai.models.retrieve("Llama3.2")).id == "Llama3.2"  # the name as asked
    with pytest.raises(openai.NotFoundError) as exc:
        await oai.chat.completions.create(
            model="missing", messages=[{"role": "user", "content": "x"}]
        )
    assert exc.value.body["type"] == "not_found_error"  # type: ignore[index]


async def test_openai_legacy_completions(oai: openai.AsyncOpenAI) -> None:
    done = await oai.completions.create(model="llama3.2", prompt="Once", max_tokens=5)
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None and done.usage.completion_tokens == 5
    pieces = [
        c
        async for c in await oai.completions.create(
            model="llama3.2", prompt="Once", max_tokens=5, stream=True
        )
    ]
    assert "".join(c.choices[0].text for c in pieces if c.choices) == done.choices[0].text
