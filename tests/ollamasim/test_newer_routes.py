"""The simulator's newer compatibility routes through the real clients: OpenAI's Responses API
(with a zstd body, as Codex sends it) and audio transcriptions, and Anthropic's Messages API."""

from __future__ import annotations

import json

import anthropic
import httpx
import openai
import pytest
import zstandard

from ollamasim.catalogue import CATALOGUE
from ollamasim.server import SimServer
from tests.simfixtures import SimFactory

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


@pytest.fixture
def oai(sim: SimServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture
def claude(sim: SimServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=sim.url, api_key="unused", max_retries=0)


async def test_responses_whole_and_streamed_agree(oai: openai.AsyncOpenAI) -> None:
    whole = await oai.responses.create(
        model="llama3.2", input="why is the sky blue?", instructions="be brief"
    )
    assert whole.status == "completed" and whole.output_text
    assert whole.usage and whole.usage.output_tokens > 0
    events = [
        e
        async for e in await oai.responses.create(
            model="llama3.2", input="why is the sky blue?", instructions="be brief", stream=True
        )
    ]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-1] == "response.completed"
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed == whole.output_text  # same seed and prompt, same text
    assert [e.sequence_number for e in events] == list(range(1, len(events) + 1))


async def test_responses_tool_call_and_length_limit(oai: openai.AsyncOpenAI) -> None:
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER}
    called = await oai.responses.create(
        model="llama3.1:8b",
        input="weather in Paris?",
        tools=[tool],
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and json.loads(calls[0].arguments)
    short = await oai.responses.create(model="llama3.2", input="talk", max_output_tokens=3)
    assert short.status == "incomplete" and short.usage and short.usage.output_tokens == 3


async def test_responses_take_a_zstd_body_and_refuse_a_bad_one(http: httpx.AsyncClient) -> None:
    body = json.dumps({"model": "llama3.2", "input": "hi"}).encode()
    headers = {"content-encoding": "zstd", "content-type": "application/json"}
    ok = await http.post(
        "/v1/responses", content=zstandard.ZstdCompressor().compress(body), headers=headers
    )
    assert ok.status_code == 200 and ok.json()["output"][0]["content"][0]["text"]
    bad = await http.post("/v1/responses", content=b"not zstd", headers=headers)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    missing = await http.post("/v1/responses", json={"model": "nope:1b", "input": "hi"})
    assert missing.status_code == 404
    assert missing.json()["error"]["message"] == "model 'nope:1b' not found"


async def test_transcription_names_its_model_in_the_form(oai: openai.AsyncOpenAI) -> None:
    audio = ("a.wav", b"RIFF\x00\x00\x00\x00WAVEfmt " + bytes(200), "audio/wav")
    said = await oai.audio.transcriptions.create(model="llama3.2", file=audio)
    assert said.text
    with pytest.raises(openai.NotFoundError):
        await oai.audio.transcriptions.create(model="nope:1b", file=audio)


async def test_anthropic_messages_whole_streamed_and_errors(
    claude: anthropic.AsyncAnthropic,
) -> None:
    turns = [{"role": "user", "content": "hello"}]
    whole = await claude.messages.create(
        model="llama3.2",
        max_tokens=400,
        system="be kind",
        messages=turns,
    )
    assert whole.stop_reason in ("end_turn", "max_tokens") and whole.content[0].type == "text"
    async with claude.messages.stream(
        model="llama3.2",
        max_tokens=400,
        system="be kind",
        messages=turns,
    ) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == whole.content[0].text and final.usage.output_tokens == whole.usage.output_tokens
    short = await claude.messages.create(model="llama3.2", max_tokens=2, messages=turns)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 2
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.messages.create(model="nope:1b", max_tokens=5, messages=turns)
    assert missing.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "model 'nope:1b' not found"},
        "request_id": missing.value.body["request_id"],
    }
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.create(model="llama3.2", max_tokens=0, messages=turns)


async def test_anthropic_tool_use(claude: anthropic.AsyncAnthropic) -> None:
    tool = {"name": "get_weather", "description": "weather", "input_schema": WEATHER}
    reply = await claude.messages.create(
        model="llama3.1:8b",
        max_tokens=100,
        messages=[{"role": "user", "content": "weather in Paris?"}],
        tools=[tool],
    )
    uses = [b for b in reply.content if b.type == "tool_use"]
    assert reply.stop_reason == "tool_use" and uses and uses[0].name == "get_weather"


async def test_thinking_comes_first_in_both_apis(start_sim: SimFactory) -> None:
    """Asked to reason, a thinking model's reply opens with a reasoning item (Responses) or a
    thinking block (Messages), then the text; the clients' stream helpers rebuild the same."""
    sim = await start_sim(models=(CATALOGUE["qwen3:8b"],))
    oai = openai.AsyncOpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)
    whole = await oai.responses.create(model="qwen3:8b", input="hm", reasoning={"effort": "low"})
    assert [item.type for item in whole.output] == ["reasoning", "message"]
    async with oai.responses.stream(
        model="qwen3:8b", input="hm", reasoning={"effort": "low"}
    ) as stream:
        rebuilt = await stream.get_final_response()
    assert rebuilt.output_text == whole.output_text
    plain = await oai.responses.create(model="qwen3:8b", input="hm")
    assert [item.type for item in plain.output] == ["message"]  # no reasoning unless asked

    claude = anthropic.AsyncAnthropic(base_url=sim.url, api_key="unused", max_retries=0)
    thinking = {"type": "enabled", "budget_tokens": 100}
    turns = [{"role": "user", "content": "hm"}]
    reply = await claude.messages.create(
        model="qwen3:8b", max_tokens=400, messages=turns, thinking=thinking
    )
    assert [block.type for block in reply.content] == ["thinking", "text"]
    async with claude.messages.stream(
        model="qwen3:8b", max_tokens=400, messages=turns, thinking=thinking
    ) as stream:
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["thinking", "text"]
