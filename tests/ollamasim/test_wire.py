"""Framing, status codes and error texts, checked with raw HTTP against the reference."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from ollamasim.inference import UNREADABLE_IMAGE
from tests.simfixtures import SimFactory


async def test_root_and_head(http: httpx.AsyncClient) -> None:
    root = await http.get("/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert root.headers["content-type"].startswith("text/plain")
    head = await http.head("/")
    assert head.status_code == 200 and head.content == b""
    assert (await http.head("/api/tags")).status_code == 200
    assert (await http.head("/api/ps")).status_code == 405


async def test_unknown_path_and_wrong_method(http: httpx.AsyncClient) -> None:
    missing = await http.get("/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert missing.headers["content-type"].startswith("text/plain")
    wrong = await http.get("/api/chat")
    assert (wrong.status_code, wrong.text) == (405, "405 method not allowed")


async def test_version_is_numeric(http: httpx.AsyncClient) -> None:
    assert (await http.get("/api/version")).json() == {"version": "0.12.6"}


async def test_ndjson_stream_framing(http: httpx.AsyncClient) -> None:
    body = {"model": "llama3.2", "prompt": "count", "options": {"num_predict": 7}}
    async with http.stream("POST", "/api/generate", json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        assert "content-length" not in response.headers
        raw = b"".join([chunk async for chunk in response.aiter_raw()])
    lines = raw.split(b"\n")
    assert lines[-1] == b""  # every line ends in exactly one newline, nothing after the last
    objects = [json.loads(line) for line in lines[:-1]]
    assert len(objects) == 8
    assert [o["done"] for o in objects] == [False] * 7 + [True]
    final = objects[-1]
    assert final["done_reason"] == "length" and final["eval_count"] == 7
    for key in ("total_duration", "load_duration", "prompt_eval_count", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0
    assert final["created_at"].endswith("Z") and final["model"] == "llama3.2"


async def test_non_streaming_is_one_json_object(http: httpx.AsyncClient) -> None:
    response = await http.post(
        "/api/chat",
        json={
            "model": "LLAMA3.2:Latest",
            "messages": [{"role": "user", "content": "x"}],
            "stream": False,
        },
    )
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["model"] == "LLAMA3.2:Latest"  # echoed as sent, matched case-insensitively
    assert body["done"] is True and body["message"]["role"] == "assistant"


async def test_sse_stream_ends_with_done(http: httpx.AsyncClient) -> None:
    body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True}
    response = await http.post("/v1/chat/completions", json=body)
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [e for e in response.text.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    first = json.loads(events[0].removeprefix("data: "))
    assert first["object"] == "chat.completion.chunk"
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["system_fingerprint"] == "fp_ollama" and first["id"].startswith("chatcmpl-")
    finish = json.loads(events[-2].removeprefix("data: "))
    assert finish["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/generate", {"model": "ghost", "prompt": "x"}, 404, "model 'ghost' not found"),
        ("/api/generate", {"prompt": "x"}, 404, "model '' not found"),
        ("/api/chat", {"messages": []}, 400, "model is required"),
        ("/api/chat", {"model": "ghost", "messages": []}, 404, "model 'ghost' not found"),
        (
            "/api/embed",
            {"model": "ghost", "input": "x"},
            404,
            'model "ghost" not found, try pulling it first',
        ),
        ("/api/embed", {"input": "x"}, 404, "model '' not found"),
        ("/api/embed", {"model": "a b", "input": "x"}, 404, "model 'a b' not found"),
        ("/api/embeddings", {"prompt": "x"}, 400, "model is required"),
        ("/api/show", {"model": "ghost"}, 404, "model 'ghost:latest' not found"),
        ("/api/copy", {"source": "ghost", "destination": "x"}, 404, 'model "ghost" not found'),
        (
            "/api/generate",
            {"model": "nomic-embed-text", "prompt": "x"},
            400,
            '"nomic-embed-text" does not support generate',
        ),
        (
            "/api/generate",
            {"model": "llama3.2", "prompt": "x", "keep_alive": "300"},
            400,
            'time: missing unit in duration "300"',
        ),
        (
            "/api/generate",
            {"model": "llama3.2", "keep_alive": ""},  # an unload with an empty duration
            400,
            'time: invalid duration ""',
        ),
        (
            "/api/generate",
            {"model": "llama3.2", "prompt": "x", "raw": True, "system": "s"},
            400,
            "raw mode does not support template, system, or context",
        ),
        (
            "/api/generate",
            {"model": 7},
            400,
            "json: cannot unmarshal number into Go struct field GenerateRequest.model"
            " of type string",
        ),
        ("/api/embed", {"model": "nomic-embed-text", "input": 5}, 400, "invalid input type"),
        (
            "/api/chat",
            {
                "model": "gemma3:27b",
                "messages": [{"role": "user", "content": "x"}],
                "tools": [{"type": "function", "function": {"name": "f"}}],
            },
            400,
            "registry.ollama.ai/library/gemma3:27b does not support tools",
        ),
    ],
)
async def test_error_shapes_and_codes(
    http: httpx.AsyncClient, path: str, body: dict[str, object], status: int, error: str
) -> None:
    response = await http.post(path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json() == {"error": error}


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"", "missing request body"),
        (b"{not json", "invalid character 'n' looking for beginning of object key string"),
        (b'{"model": "llama3.2"', "unexpected EOF"),
        (b"[1]", "json: cannot unmarshal array into Go value of type api.GenerateRequest"),
    ],
)
async def test_malformed_bodies_are_400(http: httpx.AsyncClient, raw: bytes, error: str) -> None:
    response = await http.post("/api/generate", content=raw)
    assert (response.status_code, response.json()) == (400, {"error": error})


async def test_delete_and_copy(http: httpx.AsyncClient) -> None:
    copied = await http.post("/api/copy", json={"source": "llama3.2", "destination": "mine"})
    assert (copied.status_code, copied.content) == (200, b"")
    tags = {m["name"]: m["digest"] for m in (await http.get("/api/tags")).json()["models"]}
    assert tags["mine:latest"] == tags["llama3.2:latest"]
    deleted = await http.request("DELETE", "/api/delete", json={"model": "mine"})
    assert (deleted.status_code, deleted.content) == (200, b"")
    again = await http.request("DELETE", "/api/delete", json={"model": "mine"})
    assert (again.status_code, again.json()) == (404, {"error": "model 'mine' not found"})


async def test_openai_error_shape(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/chat/completions", json={"model": "x", "messages": []})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "[] is too short - 'messages'",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    missing = await http.get("/v1/models/ghost")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"temperature": "hot"}, 'option "temperature" must be of type float32'),
        ({"top_p": True}, 'option "top_p" must be of type float32'),
        ({"top_k": 1.5e3, "seed": "7"}, 'option "seed" must be of type integer'),
        ({"stop": "END"}, 'option "stop" must be of type array'),
        ({"stop": ["END", 3]}, 'option "stop" must be of an array of strings'),
        ({"use_mmap": 1}, 'option "use_mmap" must be of type boolean'),
    ],
)
async def test_a_wrongly_typed_option_is_ollamas_500(
    http: httpx.AsyncClient, options: dict[str, object], error: str
) -> None:
    body = {"model": "llama3.2", "prompt": "x", "options": options, "stream": False}
    response = await http.post("/api/generate", json=body)
    assert (response.status_code, response.json()) == (500, {"error": error})
    assert (await http.get("/api/ps")).json()["models"] == []  # refused before any load
    fine = {"temperature": 1, "stop": ["END"], "top_k": 40.0, "unknown_knob": "ignored"}
    ok = await http.post("/api/generate", json={**body, "options": fine})
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("value", "quoted"),
    [("xml", r'"\"xml\""'), (5, '"5"'), (["a", 1], r'"[\"a\",1]"')],
)
async def test_a_format_neither_json_nor_a_schema_fails_once_the_model_is_loaded(
    http: httpx.AsyncClient, value: object, quoted: str
) -> None:
    """The runner checks ``format`` (llm/server.go Completion), so the model loads first, and
    the error quotes the value's JSON with Go's %q."""
    body = {"model": "llama3.2", "prompt": "x", "format": value}
    response = await http.post("/api/generate", json=body)  # streamed: the status still says
    assert response.status_code == 500
    expected = f'invalid format: {quoted}; expected "json" or a valid JSON Schema object'
    assert response.json() == {"error": expected}
    assert [m["name"] for m in (await http.get("/api/ps")).json()["models"]] == ["llama3.2:latest"]
    chat = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "format": value}
    assert (await http.post("/api/chat", json=chat)).json() == {"error": expected}


PNG = b"\x89PNG\r\n\x1a\n" + bytes(24)
NOT_AN_IMAGE = base64.b64encode(b"%PDF-1.7 not an image").decode()


async def test_an_image_the_runner_cannot_read_fails_once_the_model_is_loaded(
    start_sim: SimFactory,
) -> None:
    sim = await start_sim(models="llava:7b,llama3.2")
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as http:
        turn = {"role": "user", "content": "what is this?", "images": [NOT_AN_IMAGE]}
        chat = {"model": "llava:7b", "messages": [turn], "stream": True}
        response = await http.post("/api/chat", json=chat)
        assert response.status_code == 500
        assert response.json() == {"error": "failed to process inputs: image: unknown format"}
        assert [m["name"] for m in (await http.get("/api/ps")).json()["models"]] == ["llava:7b"]
        assert (await http.get("/_sim/stats")).json()["failed"] == 1
        generate = {"model": "llava:7b", "prompt": "x", "images": [NOT_AN_IMAGE], "stream": False}
        assert (await http.post("/api/generate", json=generate)).status_code == 500
        readable = base64.b64encode(PNG).decode()
        assert (
            await http.post("/api/generate", json={**generate, "images": [readable]})
        ).is_success
        # A model without vision ignores images; images that are not base64 are the decoder's.
        text_only = {**generate, "model": "llama3.2"}
        assert (await http.post("/api/generate", json=text_only)).is_success
        bad = await http.post("/api/generate", json={**generate, "images": ["abc%"]})
        assert (bad.status_code, bad.json()) == (
            400,
            {"error": "illegal base64 data at input byte 3"},
        )
        # The OpenAI route takes base64 data URIs of JPEG, PNG and WebP, and its error shape.
        part = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + NOT_AN_IMAGE}}
        body = {"model": "llava:7b", "messages": [{"role": "user", "content": [part]}]}
        openai = await http.post("/v1/chat/completions", json=body)
        assert openai.status_code == 500
        assert openai.json()["error"]["message"] == UNREADABLE_IMAGE
        assert openai.json()["error"]["type"] == "api_error"
        part["image_url"] = {"url": "data:image/gif;base64," + NOT_AN_IMAGE}
        gif = await http.post("/v1/chat/completions", json=body)
        assert (gif.status_code, gif.json()["error"]["message"]) == (400, "invalid image input")


async def test_v1_models_data_is_null_without_models(start_sim: SimFactory) -> None:
    sim = await start_sim(models=())
    async with httpx.AsyncClient(base_url=sim.url) as client:
        assert (await client.get("/v1/models")).json() == {"object": "list", "data": None}
        assert (await client.get("/api/tags")).json() == {"models": []}


async def test_same_seed_same_text_other_seed_other_text(start_sim: SimFactory) -> None:
    texts = []
    for seed in (1, 1, 2):
        sim = await start_sim(seed=seed)
        async with httpx.AsyncClient(base_url=sim.url) as client:
            body = {"model": "llama3.2", "prompt": "tell me", "stream": False}
            texts.append((await client.post("/api/generate", json=body)).json()["response"])
    assert texts[0] == texts[1] != texts[2]
