"""The edge end to end: real control plane, agents, simulated hosts and edge processes on
loopback, driven by the real ollama, openai and langchain-ollama clients and by raw HTTP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
import zstandard
from hops.v1 import admin_pb2, admin_pb2_grpc

from ollamasim.catalogue import CATALOGUE
from ollamasim.profiles import PROFILES, decode_tokens_per_s
from ollamasim.scheduler import SPAWN_SECONDS
from tests import procs
from tests.integration import fleet
from tests.integration.fleet import Fleet, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared() -> Iterator[Fleet]:
    """Three unlike hosts behind one edge; tests here leave no fault behind."""
    hosts = {
        "big": ["--profile", "gpu-24g"],
        "laptop": ["--profile", "gpu-8g"],
        "cpu": ["--profile", "cpu"],
    }
    with fleet.whole_fleet(hosts) as running:
        yield running


def _sim_stats(url: str) -> dict[str, object]:
    data: dict[str, object] = httpx.get(url + "/_sim/stats", timeout=5).json()
    return data


def test_ollama_client_through_the_edge(shared: Fleet) -> None:
    client = ollama.Client(host=shared.edge.url)
    parts = list(client.chat("llama3.2", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert parts[-1].done and "".join(p.message.content or "" for p in parts)
    assert client.chat("llama3.2", messages=[{"role": "user", "content": "hi"}]).done
    chunks = list(client.generate("llama3.1:8b", "Why?", stream=True))
    assert chunks[-1].done and chunks[-1].eval_count == len(chunks) - 1
    assert client.generate("llama3.1:8b", "Why?").response
    assert len(client.embed("nomic-embed-text", input=["a", "b"]).embeddings) == 2
    names = {m.model for m in client.list().models}
    assert {"llama3.2:latest", "qwen2.5:32b", "all-minilm:latest"} <= names  # union of hosts
    shown = client.show("llama3.2")
    assert shown.capabilities and "completion" in shown.capabilities
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    wait_until(
        lambda: {m.model for m in client.ps().models} >= {"llama3.2:latest"},
        3.0,
        "ps shows what is loaded",
    )
    statuses = [p.status for p in client.pull("qwen2.5:0.5b", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    # Once the pull has answered, the model is listed and runs, as on one Ollama.
    assert "qwen2.5:0.5b" in {m.model for m in client.list().models}
    assert client.generate("qwen2.5:0.5b", "hi", options={"num_predict": 1}).done
    wait_until(lambda: shared.open_leases() == 0, 2.0, "leases closed by their reports")


def test_openai_and_langchain_clients_through_the_edge(shared: Fleet) -> None:
    from langchain_ollama import ChatOllama

    oai = openai.OpenAI(base_url=shared.edge.url + "/v1", api_key="unused", max_retries=0)
    whole = oai.chat.completions.create(
        model="llama3.2", messages=[{"role": "user", "content": "hello"}]
    )
    assert whole.choices[0].message.content
    text = "".join(
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(
            model="llama3.2", messages=[{"role": "user", "content": "hello"}], stream=True
        )
        if c.choices
    )
    assert text == whole.choices[0].message.content  # same host seed + prompt: same words
    assert len(oai.embeddings.create(model="nomic-embed-text", input="x").data[0].embedding) == 768
    assert "llama3.1:8b" in {m.id for m in oai.models.list()}
    assert oai.models.retrieve("llama3.1:8b").id == "llama3.1:8b"
    assert oai.models.retrieve("Llama3.2").id == "Llama3.2"  # as asked, as Ollama answers
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("ghost")
    chat = ChatOllama(model="llama3.2", base_url=shared.edge.url)
    assert chat.invoke("hello").content
    assert "".join(str(c.content) for c in chat.stream("hello"))
    wait_until(lambda: shared.open_leases() == 0, 2.0, "leases closed by their reports")


def test_openai_anthropic_and_responses_replies_teach_their_length(shared: Fleet) -> None:
    """Replies on the /v1 routes carry no durations, but their usage gives the reply's token
    count, which the control plane learns from (one sample per reply)."""
    state_url = fleet.metrics_url(shared.plane).removesuffix("/metrics") + "/api/state"

    def samples() -> int:
        nodes = httpx.get(state_url).json()["nodes"]
        return sum(s["samples"] for n in nodes for s in n["learned"] if s["model"] == "qwen2.5:7b")

    before = samples()
    oai = openai.OpenAI(base_url=shared.edge.url + "/v1", api_key="unused", max_retries=0)
    question = [{"role": "user", "content": "how long?"}]
    assert oai.chat.completions.create(model="qwen2.5:7b", messages=question).usage
    streamed = oai.chat.completions.create(
        model="qwen2.5:7b", messages=question, stream=True, stream_options={"include_usage": True}
    )
    assert any(chunk.usage for chunk in streamed)
    claude = anthropic.Anthropic(base_url=shared.edge.url, api_key="unused", max_retries=0)
    assert claude.messages.create(model="qwen2.5:7b", max_tokens=50, messages=question).usage
    assert oai.responses.create(model="qwen2.5:7b", input="how long?").usage
    wait_until(lambda: samples() == before + 4, 3.0, "four replies learned from")


def test_an_openai_stream_teaches_load_time_and_decode_speed() -> None:
    """The OpenAI SDK streams with neither Ollama's durations nor usage: the edge times the
    stream itself, so the control plane learns a fleet's speeds from OpenAI clients alone."""
    # Time scale 5: the 14b's load (9 GB at 3.5 GB/s) takes 0.51 s, its decoding 333 tokens/s.
    with fleet.whole_fleet({"big": ["--time-scale", "5"]}) as running:
        admin = fleet.admin(running.plane.url)

        def learned() -> list[admin_pb2.LearnedSpeed]:
            node = admin.GetNode(admin_pb2.GetNodeRequest(node_id="big")).node
            return [s for s in node.learned if s.model == "qwen2.5:14b"]

        oai = openai.OpenAI(base_url=running.edge.url + "/v1", api_key="unused", max_retries=0)
        question = [{"role": "user", "content": "how fast?"}]
        chunks = list(
            oai.chat.completions.create(model="qwen2.5:14b", messages=question, stream=True)
        )
        assert not any(c.usage for c in chunks)  # nothing but the stream's own timing to go by
        (speed,) = wait_until(learned, 3.0, "the stream learned from")
        assert speed.samples == 1
        assert 0.5 <= speed.load_seconds < 5.0  # the load, and the prompt, before token one
        assert 0 < speed.decode_tokens_per_second < 2 * 333


def test_openai_replies_not_streamed_teach_decode_speed_then_load_time() -> None:
    """A non-streamed OpenAI reply has usage but no durations, and its first byte is its last:
    the edge times it whole. Sent to a ready instance, that time teaches the decode speed; from
    a load started at once, the load, once the decode speed there is known."""
    # Time scale 5: the 14b's load (9 GB at 3.5 GB/s) takes 0.51 s, its decoding 333 tokens/s.
    with fleet.whole_fleet({"big": ["--time-scale", "5"]}) as running:
        admin = fleet.admin(running.plane.url)

        def node() -> admin_pb2.Node:
            return admin.GetNode(admin_pb2.GetNodeRequest(node_id="big")).node

        def learned(samples: int) -> admin_pb2.LearnedSpeed | None:
            found = [s for s in node().learned if s.model == "qwen2.5:14b"]
            return found[0] if found and found[0].samples == samples else None

        def samples() -> int:
            return sum(s.samples for s in node().learned if s.model == "qwen2.5:14b")

        oai = openai.OpenAI(base_url=running.edge.url + "/v1", api_key="unused", max_retries=0)

        def ask() -> None:
            reply = oai.chat.completions.create(
                model="qwen2.5:14b", messages=[{"role": "user", "content": "how fast?"}]
            )
            assert reply.usage is not None and reply.usage.completion_tokens > 0

        ask()  # loads the model; no decode speed known yet to tell the load from the rest
        first = wait_until(lambda: learned(1), 3.0, "the first reply learned from")
        assert (first.load_seconds, first.decode_tokens_per_second) == (0.0, 0.0)
        wait_until(
            lambda: any(m.name == "qwen2.5:14b" for m in node().snapshot.loaded), 3.0, "loaded"
        )
        ask()  # ready with a free slot: its whole time is the prompt and the decoding
        second = wait_until(lambda: learned(2), 3.0, "the warm reply learned from")
        assert 0 < second.decode_tokens_per_second < 2 * 333
        assert second.load_seconds == 0.0

        unload = {"model": "qwen2.5:14b", "keep_alive": 0}
        assert httpx.post(running.edge.url + "/api/generate", json=unload).status_code == 200
        wait_until(
            lambda: not any(m.name == "qwen2.5:14b" for m in node().snapshot.loaded),
            3.0,
            "unloaded",
        )
        before = samples()  # the unload's own reply may count (Ollama's durations, no tokens)
        ask()  # a load started at once: its time less the decoding at the speed learned
        third = wait_until(lambda: learned(before + 1), 3.0, "the reply after a reload")
        assert 0.3 <= third.load_seconds < 5.0


def _learned_14b(
    admin: admin_pb2_grpc.AdminServiceStub, samples: int
) -> admin_pb2.LearnedSpeed | None:
    """What the control plane learned of qwen2.5:14b on the node "big", once it has learned
    from ``samples`` replies (None before)."""
    node = admin.GetNode(admin_pb2.GetNodeRequest(node_id="big")).node
    found = [s for s in node.learned if s.model == "qwen2.5:14b"]
    return found[0] if found and found[0].samples == samples else None


def test_an_openai_reply_after_a_long_prompt_teaches_the_prompt_speed_not_decoding() -> None:
    """A non-streamed OpenAI reply to a document-sized prompt: most of its whole time was the
    prompt. It teaches the host's prompt speed (never measured from OpenAI clients before),
    and leaves the decode speed as the short replies taught it."""
    # Time scale 5: the 14b decodes 333 tokens/s and evaluates a prompt at 25x that, 8,333/s;
    # 8,000 tokens take about 1 s, a short reply about 0.1 s.
    with fleet.whole_fleet({"big": ["--time-scale", "5"]}) as running:
        admin = fleet.admin(running.plane.url)

        def learned(samples: int) -> admin_pb2.LearnedSpeed | None:
            return _learned_14b(admin, samples)

        oai = openai.OpenAI(base_url=running.edge.url + "/v1", api_key="unused", max_retries=0)

        def ask(text: str) -> None:
            reply = oai.chat.completions.create(
                model="qwen2.5:14b", messages=[{"role": "user", "content": text}]
            )
            assert reply.usage is not None and reply.usage.completion_tokens > 0

        ask("how fast?")  # loads the model
        wait_until(lambda: learned(1), 3.0, "the first reply learned from")
        ask("and now?")  # ready: its whole time is (nearly all) decoding
        warm = wait_until(lambda: learned(2), 3.0, "the warm reply learned from")
        assert warm.decode_tokens_per_second > 0 and warm.prompt_tokens_per_second == 0.0
        ask(" ".join(f"page{i:05d}" for i in range(3200)))  # 32,000 characters
        document = wait_until(lambda: learned(3), 3.0, "the document's reply learned from")
        assert document.decode_tokens_per_second == warm.decode_tokens_per_second
        assert 8333 / 2 < document.prompt_tokens_per_second < 8333 * 2


def test_a_prompt_another_conversation_left_in_the_cache_does_not_inflate_the_prompt_speed() -> (
    None
):
    """Two conversations with one long system prompt, on one host: the second finds it in the
    prompt cache, so Ollama evaluates (and times) only its own question, though it counts the
    whole prompt. The count of cached tokens in its reply (newer Ollama's) keeps the learned
    prompt speed true; taken whole, it was thousands of times too fast."""
    # The 14b evaluates a prompt at 1,667 tokens/s there (25x its decoding, 67 tokens/s), as
    # Ollama's durations say it in simulated time; the system prompt is 8,000 tokens.
    with fleet.whole_fleet({"big": ["--time-scale", "5"]}) as running:
        admin = fleet.admin(running.plane.url)

        def learned(samples: int) -> admin_pb2.LearnedSpeed | None:
            return _learned_14b(admin, samples)

        system = {"role": "system", "content": " ".join(f"rule{i:05d}" for i in range(3200))}

        def chat(session: str, question: str) -> dict[str, Any]:
            reply = httpx.post(
                running.edge.url + "/api/chat",
                json={
                    "model": "qwen2.5:14b",
                    "messages": [system, {"role": "user", "content": question}],
                    "stream": False,
                    "options": {"num_predict": 4, "num_ctx": 16384},  # 4096 cuts it
                },
                headers={"X-Hops-Session": session},
                timeout=60,
            )
            assert reply.status_code == 200, reply.text
            body: dict[str, Any] = reply.json()
            return body

        first = chat("one", "what is rule 7?")
        assert first["prompt_eval_cached_count"] == 0
        alone = wait_until(lambda: learned(1), 3.0, "the first reply learned from")
        assert 1667 / 2 < alone.prompt_tokens_per_second < 1667 * 2
        second = chat("two", " ".join(f"ask{i:04d}" for i in range(250)))  # 500 tokens new
        assert second["prompt_eval_cached_count"] > 7000
        both = wait_until(lambda: learned(2), 3.0, "the second reply learned from")
        assert 1667 / 2 < both.prompt_tokens_per_second < 1667 * 2


def test_fleet_wide_reads(shared: Fleet) -> None:
    base = shared.edge.url
    root = httpx.get(base + "/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert httpx.head(base + "/").status_code == 200
    assert httpx.get(base + "/api/version").json() == {"version": "0.12.6"}
    assert httpx.head(base + "/api/ps").status_code == 405
    tags = httpx.get(base + "/api/tags").json()["models"]
    assert len({m["name"] for m in tags}) == len(tags)
    # An entry reads as the host's own: details with the trained context and embedding
    # lengths, and the capabilities clients use to tell embedding, vision or tool models.
    own = {m["name"]: m for m in httpx.get(shared.sim_url("laptop") + "/api/tags").json()["models"]}
    for entry in tags:
        if entry["name"] in own:
            for field in ("details", "capabilities", "size", "digest"):
                assert entry[field] == own[entry["name"]][field], (entry["name"], field)
    assert {m["name"]: m["capabilities"] for m in tags}["nomic-embed-text:latest"] == ["embedding"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "expected"),
    [
        (
            "POST",
            "/api/generate",
            b"{oops",
            400,
            {"error": "invalid character 'o' looking for beginning of object key string"},
        ),
        ("POST", "/api/chat", b"", 400, {"error": "missing request body"}),
        ("POST", "/api/chat", b'{"messages": []}', 400, {"error": "model is required"}),
        ("POST", "/api/generate", b'{"prompt": "x"}', 404, {"error": "model '' not found"}),
        (
            "POST",
            "/api/embed",
            b'{"model": " ", "input": "x"}',
            404,
            {"error": "model ' ' not found"},
        ),
        ("POST", "/api/embed", b'{"model": "a b"}', 404, {"error": "model 'a b' not found"}),
        (
            "POST",
            "/api/generate",
            b'{"model": "ghost", "prompt": "x"}',
            404,
            {"error": "model 'ghost' not found"},
        ),
        (
            "POST",
            "/api/embed",
            b'{"model": "ghost", "input": "x"}',
            404,
            {"error": 'model "ghost" not found, try pulling it first'},
        ),
        (
            "POST",
            "/api/show",
            b'{"model": "ghost"}',
            404,
            {"error": "model 'ghost:latest' not found"},
        ),
        (
            "POST",
            "/v1/chat/completions",
            b'{"model": "ghost", "messages": []}',
            404,
            {
                "error": {
                    "message": "model 'ghost' not found",
                    "type": "not_found_error",
                    "param": None,
                    "code": None,
                }
            },
        ),
        ("DELETE", "/api/delete", b'{"model": "ghost"}', 404, {"error": "model 'ghost' not found"}),
        (
            "POST",
            "/api/create",
            b'{"model": "x"}',
            400,
            {"error": "neither 'from' nor 'files' was specified"},
        ),
        ("POST", "/api/create", b'{"model": "x", "from": "ghost"}', 404, None),
        (
            "POST",
            "/api/create",
            b'{"model": "x", "files": {"a.gguf": "sha256:' + b"0" * 64 + b'"}}',
            400,
            None,
        ),
    ],
)
def test_bad_input_gets_its_exact_answer_and_leaves_no_lease(
    shared: Fleet, method: str, path: str, body: bytes, status: int, expected: object
) -> None:
    response = httpx.request(method, shared.edge.url + path, content=body, timeout=10)
    assert response.status_code == status
    if expected is not None:
        assert response.json() == expected
    elif status == 404:
        assert response.json() == {"error": "model 'ghost' not found"}
    else:
        assert "X-Hops-Node" in response.json()["error"]  # how to say where the blobs are
    wait_until(lambda: shared.open_leases() == 0, 2.0, "leases closed by their reports")


def test_unknown_route_oversized_body_and_wrong_method(shared: Fleet) -> None:
    base = shared.edge.url
    missing = httpx.get(base + "/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
    assert httpx.get(base + "/api/chat").status_code == 405
    huge = b'{"model": "llama3.2", "prompt": "' + b"x" * (65 * 1024 * 1024) + b'"}'
    too_big = httpx.post(base + "/api/generate", content=huge, timeout=30)
    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]


def test_routes_the_edge_does_not_know_that_name_no_model_go_to_the_newest_ollama() -> None:
    """A newer Ollama's /api/status (or /api/experimental/...) works through the edge: the
    newest Ollama in the fleet answers it; a route no host has is a host's own 404, and a path
    outside Ollama's /api/ and /v1/ (the simulator's control routes) never leaves the edge."""
    hosts = {"old": ["--version", "0.12.6"], "new": ["--version", "0.33.0"]}
    with fleet.whole_fleet(hosts) as running, httpx.Client(base_url=running.edge.url) as client:
        status = client.get("/api/status")
        assert status.json() == {"cloud": {"disabled": False, "source": "none"}}
        assert (status.headers["x-hops-node"], status.headers["x-hops-route"]) == ("new", "newest")
        searched = client.post("/api/experimental/web_search", json={"query": "hops"})
        assert (searched.status_code, searched.text) == (404, "404 page not found")
        assert searched.headers["x-hops-node"] == "new"  # the host's answer, not the edge's
        control = client.put("/_sim/fault", json={"mode": "refuse"})
        assert control.status_code == 404 and "x-hops-node" not in control.headers
        assert httpx.get(running.sim_url("new") + "/_sim/fault", timeout=5).json() == {
            "fault": None
        }
        fleet.admin(running.plane.url).CordonNode(admin_pb2.CordonNodeRequest(node_id="new"))
        wait_until(
            lambda: client.get("/api/status").headers.get("x-hops-node") == "old",
            5.0,
            "the cordoned host left for the other",
        )


def test_newer_routes_through_the_edge(shared: Fleet) -> None:
    """Routes the edge has no entry for go to a host with the model they name: /v1/responses
    (also with a zstd body, as Codex sends it), /v1/audio/transcriptions (the model in a form
    field) and Anthropic's /v1/messages, whose errors from the edge itself come in its shape."""
    base = shared.edge.url
    oai = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0)
    raw = oai.responses.with_raw_response.create(model="llama3.2", input="hi")
    assert raw.headers["x-hops-node"] and raw.parse().output_text
    events = [e.type for e in oai.responses.create(model="llama3.2", input="hi", stream=True)]
    assert events[0] == "response.created" and events[-1] == "response.completed"
    body = json.dumps({"model": "llama3.2", "input": "hi"}).encode()
    zstd = {"content-encoding": "zstd", "content-type": "application/json"}
    packed = httpx.post(
        base + "/v1/responses",
        content=zstandard.ZstdCompressor().compress(body),
        headers=zstd,
        timeout=30,
    )
    assert packed.status_code == 200 and packed.headers["x-hops-node"]
    assert packed.json()["output"][0]["content"][0]["text"]
    garbled = httpx.post(base + "/v1/responses", content=b"\x28\xb5\x2f\xfd junk", headers=zstd)
    assert garbled.status_code == 400
    assert garbled.json()["error"]["message"].startswith("invalid zstd body")
    bomb = zstandard.ZstdCompressor().compress(b" " * (21 * 1024**2))
    too_big = httpx.post(base + "/v1/responses", content=bomb, headers=zstd, timeout=30)
    assert too_big.status_code == 413 and "larger than" in too_big.json()["error"]["message"]

    audio = ("a.wav", b"RIFF\x00\x00\x00\x00WAVE" + bytes(100), "audio/wav")
    heard = oai.audio.transcriptions.with_raw_response.create(model="llama3.2", file=audio)
    assert heard.headers["x-hops-node"] and heard.parse().text

    claude = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0)
    turns = [{"role": "user", "content": "hello"}]
    reply = claude.messages.create(model="llama3.2", max_tokens=50, messages=turns)
    assert reply.content[0].type == "text" and reply.content[0].text
    with claude.messages.stream(model="llama3.2", max_tokens=50, messages=turns) as stream:
        assert "".join(stream.text_stream)
    with pytest.raises(anthropic.NotFoundError) as missing:
        claude.messages.create(model="nowhere:1b", max_tokens=5, messages=turns)
    assert missing.value.body["type"] == "error"  # the edge's answer, in Anthropic's shape
    assert missing.value.body["error"] == {
        "type": "not_found_error",
        "message": "model 'nowhere:1b' not found",
    }
    with pytest.raises(openai.NotFoundError):
        oai.audio.transcriptions.create(model="nowhere:1b", file=audio)
    wait_until(lambda: shared.open_leases() == 0, 2.0, "leases closed by their reports")


def test_a_local_suffix_reaches_the_local_model(shared: Fleet) -> None:
    """Ollama drops a ``:local`` suffix (it forces the local model over a cloud one)."""
    client = ollama.Client(host=shared.edge.url)
    reply = client.generate("llama3.2:local", "hi")
    assert reply.response and reply.model == "llama3.2:local"  # echoed as sent
    wait_until(lambda: shared.open_leases() == 0, 2.0, "lease closed by its report")


def test_metrics_label_made_up_routes_and_models_as_one(shared: Fleet) -> None:
    base = shared.edge.url
    for i in range(3):
        assert httpx.post(base + f"/api/made-up-{i}", json={"x": 1}).status_code == 404
        missing = httpx.post(base + "/api/generate", json={"model": f"invented-{i}"})
        assert missing.status_code == 404
    text = httpx.get(base + "/metrics").text
    assert "made-up" not in text and "invented" not in text
    assert 'route="other"' in text


def test_a_browser_page_reaches_hosts_that_would_refuse_its_origin_and_host(
    shared: Fleet,
) -> None:
    """Hosts (as Ollama on loopback) refuse a foreign Origin or Host with an empty 403; the edge
    checks the Origin itself, then sends neither to the host."""
    origin = "https://chat.example.com"
    browser = {"Origin": origin, "Host": "hops.example.com"}
    body = {"model": "llama3.2", "prompt": "hi", "stream": False}
    refused = httpx.post(shared.sim_url("big") + "/api/generate", json=body, headers=browser)
    assert (refused.status_code, refused.content) == (403, b"")
    assert (
        httpx.post(shared.edge.url + "/api/generate", json=body, headers=browser).status_code == 403
    )
    with fleet.edge([shared.plane.url], ["--origins", origin]) as front:
        for path in ("/api/generate", "/api/tags"):
            answer = httpx.request(
                "POST" if path == "/api/generate" else "GET",
                front.url + path,
                json=body,
                headers=browser,
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["access-control-allow-origin"] == origin


def test_client_disconnect_cancels_on_the_host_within_a_second() -> None:
    endless = ["--time-scale", "1", "--response-tokens", "100000-100000"]
    with fleet.whole_fleet({"big": endless}) as running:
        node_url = running.sim_url("big")
        body = {"model": "llama3.2", "prompt": "long"}
        with (
            httpx.Client(base_url=running.edge.url, timeout=30) as client,
            client.stream("POST", "/api/generate", json=body) as response,
        ):
            assert response.headers["x-hops-node"] == "big"
            lines = response.iter_lines()
            next(lines)
            next(lines)
            assert _sim_stats(node_url)["in_flight"] == 1
        wait_until(lambda: _sim_stats(node_url)["cancelled"] == 1, 1.0, "host saw the cancellation")
        stats = _sim_stats(node_url)
        assert stats["in_flight"] == 0 and stats["tokens_generated"] < 100000  # type: ignore[operator]
        wait_until(lambda: running.open_leases() == 0, 1.0, "lease released")


def test_a_request_that_leaves_before_its_load_starts_is_not_counted_as_loading() -> None:
    """A cold request waiting for a busy model to make room, whose client gives up: Ollama
    never loads for it. The control plane used to count that load as under way, and the busy
    model as evicted, for LOADING_TTL_S (300 s): the next request for it was routed to join a
    load nobody was doing ("loading"); now it is the cold load it is, evicting the idle 8b."""
    slow = ["--profile", "gpu-8g", "--time-scale", "1", "--response-tokens", "100000-100000"]
    with fleet.whole_fleet({"laptop": slow}) as running:
        node_url = running.sim_url("laptop")
        busy = {"model": "llama3.1:8b", "prompt": "long"}
        cold = {"model": "qwen2.5:7b", "prompt": "hi", "stream": False}
        with httpx.Client(base_url=running.edge.url, timeout=30) as client:
            with client.stream("POST", "/api/generate", json=busy) as stream:
                lines = stream.iter_lines()  # held: a dropped iterator closes the response
                next(lines)  # llama3.1:8b is loaded and busy: no room for another
                with pytest.raises(httpx.ReadTimeout):  # waits for it, gives up and closes
                    client.post("/api/generate", json=cold, timeout=httpx.Timeout(30, read=0.5))
                wait_until(lambda: running.open_leases() == 1, 1.0, "its lease closed")
                assert _sim_stats(node_url)["pending_loads"] == 0
            wait_until(lambda: running.open_leases() == 0, 1.0, "the busy stream's lease closed")
            assert [r["name"] for r in _sim_stats(node_url)["runners"]] == ["llama3.1:8b"]
            answer = client.post("/api/generate", json={**cold, "options": {"num_predict": 1}})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-hops-route"] == "cold-evict-idle"


def test_a_show_before_a_chat_leaves_the_load_to_the_chat() -> None:
    """`ollama run` asks /api/show before a chat. Ollama answers it from disk, so
    the control plane must not count it as starting a load: it used to, and the chat after it
    was routed to join that load ("loading") and its load time was never learned."""
    with fleet.whole_fleet({"laptop": ["--profile", "gpu-8g"]}) as running:
        client = ollama.Client(host=running.edge.url)
        assert client.show("qwen2.5:7b").capabilities
        assert running.open_leases() == 0
        with httpx.Client(base_url=running.edge.url, timeout=30) as raw:
            shown = raw.post("/api/show", json={"model": "qwen2.5:7b"})
            assert shown.headers["x-hops-route"] == "no-load"  # was the policy's "cold-fit"
            body = {"model": "qwen2.5:7b", "prompt": "hi", "stream": False}
            answer = raw.post("/api/generate", json={**body, "options": {"num_predict": 1}})
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-hops-route"] == "cold-fit"


def test_bytes_pass_through_unchanged_both_ways() -> None:
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(fleet.controlplane())
        echo = stack.enter_context(
            procs.running("tests.fakes.echo_ollama", ["--listen", "127.0.0.1:0"])
        )
        stack.enter_context(fleet.agent([plane.url], echo.url, "echo"))
        front = stack.enter_context(fleet.edge([plane.url]))
        from tests.fakes.echo_ollama import NDJSON_CHUNKS, SSE_BYTES

        wait_until(lambda: httpx.get(front.url + "/api/tags").json()["models"], 3.0, "echo")
        sent = b'{"model":"echo","prompt":"hi", "unknown_option": {"deep": [true, null]}}'
        with httpx.stream("POST", front.url + "/api/generate", content=sent) as response:
            received = b"".join(response.iter_raw())
        assert received == b"".join(NDJSON_CHUNKS)
        # Reported, though its final chunk has a count the edge cannot read.
        in_flight = admin_pb2.ListNodesRequest()
        wait_until(
            lambda: fleet.admin(plane.url).ListNodes(in_flight).nodes[0].in_flight_total == 0,
            3.0,
            "the lease reported",
        )
        seen = httpx.get(echo.url + "/_echo/last").json()
        assert base64.b64decode(seen["body"]) == sent
        headers = json.loads(seen["headers"])
        assert headers["host"] == echo.url.removeprefix("http://")
        sse = httpx.post(
            front.url + "/v1/chat/completions",
            content=b'{"model":"echo","messages":[{"role":"user","content":"x"}]}',
        )
        assert sse.content == SSE_BYTES


def test_refused_and_busy_hosts_are_skipped_before_the_first_byte() -> None:
    hosts = {"a": ["--control-listen", "127.0.0.1:0"], "b": []}
    # a slow agent poll keeps "a" looking healthy, so the edge itself meets the refusal
    with fleet.whole_fleet(
        hosts,
        plane_args=["--policy", "round_robin", "--breaker-failures", "100"],
        agent_args=["--poll-interval", "30"],
    ) as running:
        control = running.hosts["a"].wait_for(r"control on (\S+)").group(1)
        client = ollama.Client(host=running.edge.url)
        httpx.put(control + "/_sim/fault", json={"mode": "refuse"}, timeout=5)
        for _ in range(4):
            assert client.generate("llama3.2", "x").done
        httpx.delete(control + "/_sim/fault", timeout=5)  # listening again
        httpx.put(control + "/_sim/fault", json={"mode": "busy"}, timeout=5)
        for _ in range(4):
            assert client.generate("llama3.2", "x").done
        busy = _sim_stats(control)["busy_rejections"]
        assert busy >= 1  # type: ignore[operator]
        metrics = httpx.get(running.edge.url + "/metrics").text
        assert 'hops_edge_retries_total{reason="ConnectError"}' in metrics
        assert 'hops_edge_retries_total{reason="http_503"}' in metrics
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases closed by their reports")


def test_host_dropping_mid_stream_gives_a_clean_error_line() -> None:
    with fleet.whole_fleet({"only": []}) as running:
        httpx.put(
            running.sim_url("only") + "/_sim/fault",
            json={"mode": "drop", "after_chunks": 2},
            timeout=5,
        )
        with httpx.stream(
            "POST", running.edge.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}
        ) as response:
            lines = [json.loads(line) for line in response.iter_lines()]
        assert len(lines) == 3 and "error" in lines[-1] and "mid-stream" in lines[-1]["error"]
        with pytest.raises(ollama.ResponseError, match="mid-stream"):
            list(ollama.Client(host=running.edge.url).generate("llama3.2", "x", stream=True))
        # Anthropic's stream gets its own error event, which its client raises.
        claude = anthropic.Anthropic(base_url=running.edge.url, api_key="unused", max_retries=0)
        turns = [{"role": "user", "content": "x"}]
        with (
            pytest.raises(anthropic.APIStatusError, match="mid-stream"),
            claude.messages.stream(model="llama3.2", max_tokens=50, messages=turns) as stream,
        ):
            list(stream.text_stream)
        wait_until(lambda: running.open_leases() == 0, 1.0, "leases released")


def test_a_runner_failing_mid_stream_reaches_the_client_and_the_breaker() -> None:
    """Ollama reports a runner that dies after its 200 inside the stream. The client gets
    Ollama's own word; the control plane hears a host failure, not a success."""
    with fleet.whole_fleet({"only": []}) as running:
        httpx.put(
            running.sim_url("only") + "/_sim/fault",
            json={"mode": "stream_error", "after_chunks": 2},
            timeout=5,
        )
        with pytest.raises(ollama.ResponseError, match="runner process has terminated"):
            list(ollama.Client(host=running.edge.url).generate("llama3.2", "x", stream=True))
        admin = fleet.admin(running.plane.url)

        def breaker() -> admin_pb2.Breaker:
            return admin.GetNode(admin_pb2.GetNodeRequest(node_id="only")).node.breaker

        wait_until(lambda: breaker().consecutive_failures == 1, 2.0, "the failure heard")
        assert breaker().last_failure.startswith(
            "failed mid-stream (http 200): llama runner process has terminated"
        )
        body = {"model": "llama3.2", "messages": [{"role": "user", "content": "x"}], "stream": True}
        with httpx.stream("POST", running.edge.url + "/v1/chat/completions", json=body) as response:
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert response.status_code == 200 and "data: [DONE]" not in events  # Ollama's way
        wait_until(lambda: breaker().consecutive_failures == 2, 2.0, "two failures heard")
        assert breaker().last_failure == "failed mid-stream (http 200)"
        metrics = httpx.get(running.edge.url + "/metrics").text
        assert 'hops_edge_stream_errors_total{node="only"} 2.0' in metrics
        wait_until(lambda: running.open_leases() == 0, 1.0, "leases closed by their reports")


def _breakers(running: Fleet) -> dict[str, tuple[int, str]]:
    """node id -> (consecutive failures, last failure) as the admin API shows them."""
    nodes = fleet.admin(running.plane.url).ListNodes(admin_pb2.ListNodesRequest()).nodes
    return {n.node_id: (n.breaker.consecutive_failures, n.breaker.last_failure) for n in nodes}


def test_requests_ollama_refuses_with_a_500_fail_no_host() -> None:
    """A client's own mistakes that Ollama answers with 500 reach the client in Ollama's words
    and take no host out of routing, however often they come: before, six of them opened the
    breaker of every host they were retried on, and the fleet answered everyone 503."""
    hosts = {"a": ["--models", "llava:7b,llama3.2"], "b": ["--models", "llava:7b,llama3.2"]}
    with fleet.whole_fleet(hosts) as running:
        client = ollama.Client(host=running.edge.url)
        not_an_image = base64.b64encode(b"%PDF-1.7").decode()
        generate = running.edge.url + "/api/generate"
        bad_format = {"model": "llama3.2", "prompt": "x", "format": "xml", "stream": False}
        turn = [{"role": "user", "content": "x"}]
        bad_option = {"model": "llama3.2", "messages": turn, "options": {"temperature": "hot"}}
        for _ in range(4):  # the breakers open at 3 failures in a row
            refused = httpx.post(generate, json=bad_format, timeout=30)
            assert refused.status_code == 500 and "invalid format" in refused.json()["error"]
            pinned = httpx.post(generate, json=bad_format, headers={"X-Hops-Node": "a"}, timeout=30)
            assert pinned.status_code == 500  # the only candidate: no next host to compare
            refused = httpx.post(running.edge.url + "/api/chat", json=bad_option, timeout=30)
            assert refused.json() == {"error": 'option "temperature" must be of type float32'}
            with pytest.raises(ollama.ResponseError, match="image: unknown format") as failed:
                client.generate("llava:7b", "what is it?", images=[not_an_image])
            assert failed.value.status_code == 500
        # The OpenAI route's error shape, as the OpenAI SDK meets it.
        chat = openai.OpenAI(base_url=running.edge.url + "/v1", api_key="x", max_retries=0)
        image = {"url": "data:image/png;base64," + not_an_image}
        with pytest.raises(openai.InternalServerError, match="image: unknown format"):
            chat.chat.completions.create(
                model="llava:7b",
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": image}]}],
            )
        # Known as the request's own: answered by the first host, tried on no other.
        assert "http_500" not in httpx.get(running.edge.url + "/metrics").text
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases closed by their reports")
        assert _breakers(running) == {"a": (0, ""), "b": (0, "")}
        assert client.generate("llama3.2", "x").done

        # An error the edge does not know is tried on the next host; the same error there
        # follows the request (here a runner that fails on every host it reaches).
        for node_id in hosts:
            httpx.put(running.sim_url(node_id) + "/_sim/fault", json={"mode": "error"}, timeout=5)
        plain = {"model": "llama3.2", "prompt": "x", "stream": False}
        for _ in range(4):
            failed = httpx.post(generate, json=plain, timeout=30)
            assert failed.status_code == 500
            assert failed.json()["error"].startswith("llama runner process has terminated")
        assert (
            'hops_edge_retries_total{reason="http_500"} 4.0'
            in httpx.get(running.edge.url + "/metrics").text
        )
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases closed by their reports")
        assert _breakers(running) == {"a": (0, ""), "b": (0, "")}

        # Failing on the first host only, it is that host's: the retry succeeds, and it counts.
        second = failed.headers["x-hops-node"]  # the last tried answered
        (first,) = set(hosts) - {second}
        httpx.delete(running.sim_url(second) + "/_sim/fault", timeout=5)
        served = httpx.post(generate, json=plain, timeout=30)
        assert served.status_code == 200 and served.headers["x-hops-node"] == second
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases closed by their reports")
        failures, last = _breakers(running)[first]
        assert failures == 1 and last.startswith("http 500: llama runner process has terminated")
        assert _breakers(running)[second] == (0, "")


def test_a_request_that_crashes_every_runner_takes_out_one_host_not_the_fleet() -> None:
    """A prompt on which every runner dies mid-reply, sent again and again by its client: its
    host's breaker opens after three, as for a host failing everything; the next host it meets
    fails it alike (the same request, the same error), which is the request's fault: before,
    it opened every breaker in turn and the fleet answered 503."""
    with fleet.whole_fleet({"a": [], "b": []}) as running:
        for node_id in ("a", "b"):
            httpx.put(
                running.sim_url(node_id) + "/_sim/fault",
                json={"mode": "stream_error", "after_chunks": 2},
                timeout=5,
            )
        client = ollama.Client(host=running.edge.url)
        for _ in range(6):
            with pytest.raises(ollama.ResponseError, match="runner process has terminated"):
                list(client.generate("llama3.2", "the poison prompt", stream=True))
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases closed by their reports")
        assert sorted(failures for failures, _ in _breakers(running).values()) == [0, 3]
        for node_id in ("a", "b"):
            httpx.delete(running.sim_url(node_id) + "/_sim/fault", timeout=5)
        assert client.generate("llama3.2", "another prompt").done


def test_no_healthy_host_is_503_with_retry_after() -> None:
    with fleet.whole_fleet({"only": []}) as running:
        fleet.admin(running.plane.url).CordonNode(admin_pb2.CordonNodeRequest(node_id="only"))
        response = httpx.post(
            running.edge.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}
        )
        assert response.status_code == 503 and int(response.headers["retry-after"]) >= 1
        assert "error" in response.json()
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases closed by their reports")


def test_control_plane_unreachable_without_inventory_is_503() -> None:
    with fleet.edge(["127.0.0.1:1"], ["--pick-timeout", "0.3"]) as front:
        response = httpx.post(
            front.url + "/api/generate", json={"model": "llama3.2", "prompt": "x"}, timeout=10
        )
        assert response.status_code == 503
        assert response.json() == {"error": "control plane unreachable and no usable inventory"}
        assert httpx.get(front.url + "/api/tags", timeout=10).status_code == 503


def test_fail_open_serves_from_last_inventory_and_fail_closed_does_not() -> None:
    with (
        fleet.whole_fleet({"only": []}) as running,
        fleet.edge([running.plane.url], ["--fail-open-for", "0"]) as closed,
    ):
        body = {"model": "llama3.2", "prompt": "x", "stream": False}
        for front in (running.edge, closed):
            wait_until(
                lambda f=front: httpx.get(f.url + "/api/tags").status_code == 200,
                3.0,
                "edge has an inventory",
            )
            assert httpx.post(front.url + "/api/generate", json=body).status_code == 200
        running.plane.stop()
        served = httpx.post(running.edge.url + "/api/generate", json=body, timeout=10)
        assert served.status_code == 200
        assert served.headers["x-hops-route"] == "fail-open"
        assert httpx.get(running.edge.url + "/api/tags").json()["models"]
        refused = httpx.post(closed.url + "/api/generate", json=body, timeout=10)
        assert refused.status_code == 503
        metrics = httpx.get(running.edge.url + "/metrics").text
        assert "hops_edge_fail_open_picks_total 1.0" in metrics
        assert (
            'hops_edge_requests_total{model="llama3.2",node="only",route="/api/generate",'
            'status="200"}' in metrics
        )


def test_copy_and_delete_apply_to_every_host_with_the_model() -> None:
    with fleet.whole_fleet({"a": [], "b": [], "c": ["--profile", "cpu"]}) as running:
        base = running.edge.url
        copied = httpx.post(
            base + "/api/copy", json={"source": "llama3.1:8b", "destination": "mine:v1"}
        )
        assert (copied.status_code, copied.content) == (200, b"")
        for node in ("a", "b"):  # the cpu profile has no llama3.1:8b
            names = {
                m["name"] for m in httpx.get(running.sim_url(node) + "/api/tags").json()["models"]
            }
            assert "mine:v1" in names

        def listed() -> set[str]:
            return {m["name"] for m in httpx.get(base + "/api/tags").json()["models"]}

        # Once a copy or a delete has answered, the fleet shows it, as one Ollama would: the
        # copy runs at once (it used to be 404 until the agents' next poll).
        assert "mine:v1" in listed()
        body = {"model": "mine:v1", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
        assert httpx.post(base + "/api/generate", json=body, timeout=30).status_code == 200
        deleted = httpx.request("DELETE", base + "/api/delete", json={"model": "mine:v1"})
        assert deleted.status_code == 200
        assert "mine:v1" not in listed()


def test_a_copy_runs_warm_on_the_instance_of_the_model_it_copies() -> None:
    """`ollama cp` gives the same files a second name; Ollama serves the copy from the runner
    already loaded, which /api/ps lists under the first name only. The copy goes there warm,
    and the fleet loads the files once."""
    hosts = {"big": ["--profile", "gpu-24g"], "laptop": ["--profile", "gpu-8g"]}
    with fleet.whole_fleet(hosts) as running, httpx.Client(base_url=running.edge.url) as client:
        copied = client.post("/api/copy", json={"source": "llama3.2", "destination": "mycopy"})
        assert copied.status_code == 200
        body = {"prompt": "hi", "stream": False, "options": {"num_predict": 1}}
        first = client.post("/api/generate", json={"model": "llama3.2", **body}, timeout=30)
        node = first.headers["x-hops-node"]

        def listed() -> bool:
            tags = {m["name"] for m in client.get("/api/tags").json()["models"]}
            ps = {m["name"] for m in client.get("/api/ps").json()["models"]}
            return "mycopy:latest" in tags and "llama3.2:latest" in ps

        wait_until(listed, 5.0, "the copy installed and llama3.2 loaded, fleet-wide")
        copy = client.post("/api/generate", json={"model": "mycopy", **body}, timeout=30)
        assert copy.status_code == 200, copy.text
        assert (copy.headers["x-hops-node"], copy.headers["x-hops-route"]) == (node, "warm")
        loads = [_sim_stats(running.sim_url(n))["loads"] for n in hosts]
        assert sorted(loads) == [0, 1]


def test_a_model_made_from_another_runs_warm_on_the_others_runner() -> None:
    """`ollama create bot` FROM llama3.2 with a SYSTEM of its own: another manifest, the same
    weights, and Ollama serves it from llama3.2's loaded runner. The agents read that from the
    modelfiles, so bot goes there warm and the fleet loads the weights once."""
    hosts = {"big": ["--profile", "gpu-24g"], "laptop": ["--profile", "gpu-8g"]}
    with fleet.whole_fleet(hosts) as running, httpx.Client(base_url=running.edge.url) as client:
        ollama.Client(host=running.edge.url).create("bot", from_="llama3.2", system="Be terse.")
        body = {"prompt": "hi", "stream": False, "options": {"num_predict": 1}}
        first = client.post("/api/generate", json={"model": "llama3.2", **body}, timeout=30)
        node = first.headers["x-hops-node"]
        wait_until(
            lambda: (
                "llama3.2:latest" in {m["name"] for m in client.get("/api/ps").json()["models"]}
            ),
            5.0,
            "llama3.2 loaded, fleet-wide",
        )
        bot = client.post("/api/generate", json={"model": "bot", **body}, timeout=30)
        assert bot.status_code == 200, bot.text
        assert (bot.headers["x-hops-node"], bot.headers["x-hops-route"]) == (node, "warm")
        loads = [_sim_stats(running.sim_url(n))["loads"] for n in hosts]
        assert sorted(loads) == [0, 1]


def test_a_model_with_a_num_ctx_of_its_own_reloads_the_runner_it_shares() -> None:
    """`ollama create long` FROM llama3.2 with PARAMETER num_ctx 8192: the same weights, so the
    same runner, which Ollama reloads at 8192 for a request for long naming no length (the
    modelfile's PARAMETERs are its defaults). The agent reads the parameter from the modelfile,
    so the route says the reload rather than warm, and once long is listed it runs warm."""
    with fleet.whole_fleet({"a": []}) as running, httpx.Client(base_url=running.edge.url) as client:
        ollama.Client(host=running.edge.url).create(
            "long", from_="llama3.2", parameters={"num_ctx": 8192}
        )
        admin = fleet.admin(running.plane.url)

        def read() -> bool:
            (node,) = admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
            models = {m.name: m for m in node.snapshot.installed}
            return "long:latest" in models and models["long:latest"].num_ctx == 8192

        wait_until(read, 5.0, "long's num_ctx read from its modelfile")
        sim = running.sim_url("a")
        httpx.post(sim + "/api/generate", json={"model": "llama3.2"}, timeout=30).raise_for_status()

        def listed() -> dict[str, int]:
            ps = client.get("/api/ps").json()["models"]
            return {m["name"]: m["context_length"] for m in ps}

        wait_until(lambda: listed() == {"llama3.2:latest": 4096}, 5.0, "llama3.2 loaded")
        body = {"prompt": "hi", "stream": False, "options": {"num_predict": 1}}
        first = client.post("/api/generate", json={"model": "long", **body}, timeout=30)
        assert first.status_code == 200, first.text
        assert first.headers["x-hops-route"] == "reload-fit"
        wait_until(lambda: listed() == {"long:latest": 8192}, 5.0, "long listed at 8192")
        body["prompt"] = "another"  # no session affinity: warm on its own merit
        again = client.post("/api/generate", json={"model": "long", **body}, timeout=30)
        assert again.headers["x-hops-route"] == "warm"
        assert _sim_stats(sim)["loads"] == 2


def test_a_model_with_an_adapter_reloads_the_runner_of_its_weights(tmp_path: Path) -> None:
    """`ollama create tuned` FROM llama3.2 with an ADAPTER: the same weights, so the same
    runner, which Ollama reloads with the adapter for tuned and without it for llama3.2. The
    agent reads the adapter from the modelfile, so each route says the reload rather than
    warm (or a cold load beside the other), and the model listed runs warm."""
    with fleet.whole_fleet({"a": []}) as running, httpx.Client(base_url=running.edge.url) as client:
        adapter = tmp_path / "lora.gguf"
        adapter.write_bytes(b"GGUF" + bytes(range(256)) * 8)
        made = ollama.Client(host=running.edge.url, timeout=30)
        made.create("tuned", from_="llama3.2", adapters={"lora.gguf": made.create_blob(adapter)})
        admin = fleet.admin(running.plane.url)

        def read() -> bool:
            (node,) = admin.ListNodes(admin_pb2.ListNodesRequest()).nodes
            models = {m.name: m for m in node.snapshot.installed}
            tuned, base = models.get("tuned:latest"), models["llama3.2:latest"]
            return (
                tuned is not None and bool(tuned.adapters_id) and tuned.runner_id == base.runner_id
            )

        wait_until(read, 5.0, "tuned's adapter read from its modelfile")
        sim = running.sim_url("a")
        httpx.post(sim + "/api/generate", json={"model": "llama3.2"}, timeout=30).raise_for_status()

        def listed() -> list[str]:
            return [m["name"] for m in client.get("/api/ps").json()["models"]]

        wait_until(lambda: listed() == ["llama3.2:latest"], 5.0, "llama3.2 loaded")
        body = {"prompt": "hi", "stream": False, "options": {"num_predict": 1}}
        routes = []
        for model, shown in (("tuned", "tuned:latest"), ("llama3.2", "llama3.2:latest")):
            for prompt in ("one", "two"):  # no session affinity: warm on its own merit
                body["prompt"] = prompt
                sent = client.post("/api/generate", json={"model": model, **body}, timeout=30)
                assert sent.status_code == 200, sent.text
                routes.append(sent.headers["x-hops-route"])
                wait_until(lambda shown=shown: listed() == [shown], 5.0, f"{shown} listed")
        assert routes == ["reload-fit", "warm", "reload-fit", "warm"]
        assert _sim_stats(sim)["loads"] == 3


def test_ollama_stop_unloads_the_model_on_every_host() -> None:
    with fleet.whole_fleet({"a": [], "b": [], "c": ["--profile", "gpu-8g"]}) as running:
        for node in ("a", "b"):  # loaded on two hosts; c has it installed, not loaded
            loaded = httpx.post(
                running.sim_url(node) + "/api/generate",
                json={"model": "llama3.2", "prompt": ""},
                timeout=30,
            )
            assert loaded.json()["done_reason"] == "load"
        client = ollama.Client(host=running.edge.url)
        wait_until(lambda: len(client.ps().models) == 2, 3.0, "both loads in the inventory")

        def resident(node: str) -> list[str]:
            ps = httpx.get(running.sim_url(node) + "/api/ps").json()
            return [m["name"] for m in ps["models"]]

        stopped = client.generate("llama3.2", keep_alive=0)  # what `ollama stop` sends
        assert (stopped.done_reason, stopped.model, stopped.response) == ("unload", "llama3.2", "")
        assert resident("a") == resident("b") == []
        httpx.post(running.sim_url("c") + "/api/generate", json={"model": "llama3.2"}, timeout=30)
        unloaded = client.chat("llama3.2", messages=[], keep_alive="0s")
        assert (unloaded.done_reason, unloaded.message.content) == ("unload", "")
        assert resident("c") == []
        with pytest.raises(ollama.ResponseError) as missing:
            client.generate("no-such-model", keep_alive=0)
        assert (missing.value.status_code, missing.value.error) == (
            404,
            "model 'no-such-model' not found",
        )
        # A prompt with keep_alive 0 is an ordinary request: one host runs it, then unloads.
        ran = client.generate("llama3.2", "Why?", keep_alive=0)
        assert ran.done_reason in ("stop", "length") and ran.response
        wait_until(lambda: running.open_leases() == 0, 2.0, "no lease left open")


def test_a_reload_at_a_longer_context_is_known_to_evict_what_it_will() -> None:
    """Ollama gives an instance the KV cache of its whole context length. Learned from what
    /api/ps lists, a reload of llama3.1:8b at 32768 tokens on an 8 GB card is routed as the
    eviction of llama3.2, idle beside it, which it is; its file and a fixed headroom made it
    look as if it fit, and llama3.2 stayed counted as warm there."""
    with (
        fleet.whole_fleet({"laptop": ["--profile", "gpu-8g"]}) as running,
        httpx.Client(base_url=running.edge.url, timeout=60) as client,
    ):
        body = {"prompt": "hi", "stream": False, "options": {"num_predict": 1}}

        def listed() -> list[str]:
            return sorted(m["name"] for m in client.get("/api/ps").json()["models"])

        for model in ("llama3.1:8b", "llama3.2"):
            assert client.post("/api/generate", json={"model": model, **body}).is_success
        wait_until(lambda: listed() == ["llama3.1:8b", "llama3.2:latest"], 5.0, "both listed")
        long = {**body, "options": {"num_predict": 1, "num_ctx": 32768}}
        reply = client.post("/api/generate", json={"model": "llama3.1:8b", **long})
        assert reply.headers["x-hops-route"] == "reload-evict-idle"
        wait_until(lambda: listed() == ["llama3.1:8b"], 5.0, "llama3.2 evicted, as predicted")


def test_short_replies_and_embeds_run_warm_on_the_cpu_host_a_long_reply_loads_on_the_gpu() -> None:
    """A request whose reply may run to a few tokens (OpenAI's max_tokens, Ollama's
    num_predict) takes little of a slow host's time: it runs where its model is warm, on the
    CPU host, rather than load it on the idle GPU. So does an embedding of that (generation)
    model, which decodes nothing. With no limit, the usual reply there would take far longer
    than a load on the GPU."""
    replies = ["--response-tokens", "600-600"]  # 33 s at the CPU host's 18 tokens/s
    hosts = {"cpu": ["--profile", "cpu", *replies], "gpu": ["--profile", "gpu-24g", *replies]}
    with fleet.whole_fleet(hosts) as running:
        # One usual reply, run on the CPU host: its length and the speed there are learned.
        first = httpx.post(
            running.edge.url + "/api/chat",
            json={"model": "llama3.2", "messages": [{"role": "user", "content": "tell me"}]},
            headers={"X-Hops-Node": "cpu"},
            timeout=60,
        )
        assert first.status_code == 200
        client = openai.OpenAI(base_url=running.edge.url + "/v1", api_key="unused")
        short = client.chat.completions.with_raw_response.create(
            model="llama3.2", messages=[{"role": "user", "content": "yes or no?"}], max_tokens=3
        )
        assert (short.headers["x-hops-node"], short.headers["x-hops-route"]) == ("cpu", "warm")
        assert short.parse().usage.completion_tokens <= 3
        native = httpx.post(
            running.edge.url + "/api/chat",
            json={
                "model": "llama3.2",
                "messages": [{"role": "user", "content": "one word"}],
                "stream": False,
                "options": {"num_predict": 3},
            },
            timeout=30,
        )
        assert (native.headers["x-hops-node"], native.headers["x-hops-route"]) == ("cpu", "warm")
        embedded = httpx.post(
            running.edge.url + "/api/embed",
            json={"model": "llama3.2", "input": ["a chunk of text", "another"]},
            timeout=30,
        )
        assert embedded.status_code == 200, embedded.text
        assert (embedded.headers["x-hops-node"], embedded.headers["x-hops-route"]) == (
            "cpu",
            "warm",
        )
        vectors = client.embeddings.with_raw_response.create(model="llama3.2", input="a chunk")
        assert (vectors.headers["x-hops-node"], vectors.headers["x-hops-route"]) == ("cpu", "warm")
        assert len(vectors.parse().data) == 1
        usual = httpx.post(
            running.edge.url + "/api/chat",
            json={"model": "llama3.2", "messages": [{"role": "user", "content": "go on"}]},
            timeout=60,
        )
        assert usual.status_code == 200
        assert (usual.headers["x-hops-node"], usual.headers["x-hops-route"]) == ("gpu", "cold-fit")
        assert [_sim_stats(running.sim_url(n))["loads"] for n in ("cpu", "gpu")] == [1, 1]


def test_a_request_goes_where_its_context_length_is_loaded() -> None:
    """Ollama reloads a model for a request with another num_ctx than the loaded instance's:
    with the model loaded at 8192 on one host and at the default on the other, each request
    goes to the host loaded as it asks, and neither host reloads."""
    with fleet.whole_fleet({"a": [], "b": []}) as running:
        for node, options in (("a", {"num_ctx": 8192}), ("b", {})):
            httpx.post(
                running.sim_url(node) + "/api/generate",
                json={"model": "llama3.2", "options": options, "keep_alive": "1h"},
                timeout=30,
            ).raise_for_status()
        contexts = {8192, 4096}
        wait_until(
            lambda: (
                {
                    m["context_length"]
                    for m in httpx.get(running.edge.url + "/api/ps").json()["models"]
                }
                == contexts
            ),
            3.0,
            "both loads in the inventory",
        )
        for i, (num_ctx, node) in enumerate(((4096, "b"), (8192, "a"), (4096, "b"))):
            answer = httpx.post(
                running.edge.url + "/api/generate",
                json={
                    "model": "llama3.2",
                    "prompt": f"{i} at {num_ctx}",
                    "options": {"num_ctx": num_ctx},
                },
                timeout=30,
            )
            assert answer.headers["x-hops-node"] == node, num_ctx
            assert answer.headers["x-hops-route"] == "warm"
        assert [_sim_stats(running.sim_url(n))["loads"] for n in ("a", "b")] == [1, 1]


def test_a_request_naming_no_context_avoids_an_instance_another_client_reloaded() -> None:
    """Ollama runs a request naming no num_ctx at the host's automatic length and reloads an
    instance loaded with an explicit other one. Once a reply has shown a host's automatic
    length, plain requests go to the host whose instance runs at it, not to the one a client
    asking num_ctx 8192 just reloaded (which would reload it again, and then again for that
    client: the thrash mixed clients cause on one Ollama)."""
    with fleet.whole_fleet({"a": [], "b": []}) as running:
        plain = {"model": "llama3.2", "keep_alive": "1h"}
        for node in ("a", "b"):
            httpx.post(running.sim_url(node) + "/api/generate", json=plain, timeout=30)
        wait_until(
            lambda: len(httpx.get(running.edge.url + "/api/ps").json()["models"]) == 2,
            3.0,
            "both loaded",
        )
        with httpx.Client(base_url=running.edge.url, timeout=30) as client:
            learn = client.post(
                "/api/generate", json={**plain, "prompt": "hi"}, headers={"X-Hops-Node": "a"}
            )
            assert learn.headers["x-hops-route"] == "warm"  # ran at a's automatic length
            admin = fleet.admin(running.plane.url)
            wait_until(  # the edge reports after the reply ends: learned once that arrives
                lambda: (
                    admin.GetNode(
                        admin_pb2.GetNodeRequest(node_id="a")
                    ).node.automatic_context_length
                ),
                3.0,
                "a's automatic length learned",
            )
            learned = admin.GetNode(admin_pb2.GetNodeRequest(node_id="a")).node
            assert dict(learned.automatic_context_length) == {"llama3.2:latest": 4096}
            httpx.post(
                running.sim_url("a") + "/api/generate",
                json={**plain, "options": {"num_ctx": 8192}},
                timeout=30,
            ).raise_for_status()
            wait_until(
                lambda: (
                    8192 in {m["context_length"] for m in client.get("/api/ps").json()["models"]}
                ),
                3.0,
                "a listed at 8192",
            )
            for i in range(3):
                answer = client.post("/api/generate", json={**plain, "prompt": f"turn {i}"})
                assert answer.headers["x-hops-node"] == "b", i
                assert answer.headers["x-hops-route"] == "warm"
        assert [_sim_stats(running.sim_url(n))["loads"] for n in ("a", "b")] == [2, 1]


def test_clients_asking_two_context_lengths_settle_on_two_hosts() -> None:
    """Open WebUI asking num_ctx 8192 beside plain API calls, on two hosts: after the first
    plain request shows host a's automatic length (by reloading a, as Ollama does), each kind
    keeps to its own host; a reload of the other kind's instance is priced with the reload it
    would cause them. (It used to reload one host in turn on every switch.)"""
    with fleet.whole_fleet({"a": [], "b": []}) as running:
        with httpx.Client(base_url=running.edge.url, timeout=30) as client:

            def ask(num_ctx: int | None, i: int) -> str:
                options = {"num_predict": 3, **({"num_ctx": num_ctx} if num_ctx else {})}
                body = {"model": "llama3.1:8b", "prompt": f"{i}", "options": options}
                answer = client.post("/api/generate", json={**body, "stream": False})
                assert answer.status_code == 200, answer.text
                return str(answer.headers["x-hops-node"])

            first = ask(8192, 0)
            assert ask(None, 1) == first  # its automatic length unknown: taken to match
            admin = fleet.admin(running.plane.url)
            wait_until(  # learned once the agent lists the reload (it polls every second)
                lambda: admin.GetNode(
                    admin_pb2.GetNodeRequest(node_id=first)
                ).node.automatic_context_length.get("llama3.1:8b"),
                3.0,
                "the automatic length learned",
            )
            homes = {ask(8192, 2), ask(None, 3)}
            assert len(homes) == 2  # the 8192 clients moved to the other host
            for i in range(4, 10):
                assert ask(8192 if i % 2 else None, i) in homes
        loads = {n: _sim_stats(running.sim_url(n))["loads"] for n in ("a", "b")}
        assert loads == {first: 2, ({"a", "b"} - {first}).pop(): 1}


def test_clients_asking_other_runner_options_keep_to_their_own_host() -> None:
    """Open WebUI can send num_thread (or num_gpu, use_mmap, ...) beside plain API calls; Ollama
    reloads for each switch. Once one kind has loaded the model on a host, the other kind goes
    to the second host, and from then on each keeps to its own: two loads in ten requests."""
    with fleet.whole_fleet({"a": [], "b": []}) as running:
        with httpx.Client(base_url=running.edge.url, timeout=30) as client:

            def ask(threads: bool, i: int) -> str:
                options = {"num_predict": 3, **({"num_thread": 8} if threads else {})}
                body = {"model": "llama3.1:8b", "prompt": f"{i}", "options": options}
                answer = client.post("/api/generate", json={**body, "stream": False})
                assert answer.status_code == 200, answer.text
                return str(answer.headers["x-hops-node"])

            first = ask(True, 0)
            other = ask(False, 1)
            assert other != first
            for i in range(2, 10):
                assert ask(i % 2 == 0, i) == (first if i % 2 == 0 else other)
        loads = {n: _sim_stats(running.sim_url(n))["loads"] for n in ("a", "b")}
        assert loads == {"a": 1, "b": 1}
        admin = fleet.admin(running.plane.url)

        def shown() -> dict[str, dict[str, str]]:
            return {
                n: dict(admin.GetNode(admin_pb2.GetNodeRequest(node_id=n)).node.runner_options)
                for n in (first, other)
            }

        # The options of a routed load are the instance's once a snapshot lists the load (the
        # agent polls every 0.2 s; the ten requests can all finish before it does).
        wanted = {first: {"llama3.1:8b": "num_thread=8"}, other: {}}
        wait_until(lambda: shown() == wanted, 5.0, "the loaded instance's options")
        # A preload is a request with Ollama's defaults: it reloads the model there.
        preload = admin_pb2.PreloadModelRequest(node_id=first, model="llama3.1:8b")
        assert admin.PreloadModel(preload).ok
        assert _sim_stats(running.sim_url(first))["loads"] == 2
        node = admin.GetNode(admin_pb2.GetNodeRequest(node_id=first)).node
        assert dict(node.runner_options) == {}


def test_concurrent_embeds_spread_over_hosts_as_ollama_runs_one_at_a_time() -> None:
    """Hosts with OLLAMA_NUM_PARALLEL=4 still run an embedding model one request at a time;
    their /api/tags capabilities say which models those are. Two embeds at once go to the two
    hosts that have it loaded, not both to one (where the second would wait)."""
    four = ["--num-parallel", "4", "--time-scale", "1"]
    with fleet.whole_fleet({"a": four, "b": four}, agent_args=["--num-parallel", "4"]) as running:
        embed = {"model": "nomic-embed-text", "input": ["chunk"] * 200, "keep_alive": "1h"}
        for node in ("a", "b"):
            httpx.post(
                running.sim_url(node) + "/api/embed", json={**embed, "input": ""}, timeout=30
            ).raise_for_status()
        wait_until(
            lambda: len(httpx.get(running.edge.url + "/api/ps").json()["models"]) == 2,
            3.0,
            "both loaded",
        )

        def send(_: int) -> str:
            answer = httpx.post(running.edge.url + "/api/embed", json=embed, timeout=30)
            assert answer.status_code == 200, answer.text
            return answer.headers["x-hops-node"]

        with ThreadPoolExecutor(2) as pool:
            assert sorted(pool.map(send, range(2))) == ["a", "b"]


def test_an_embedding_runs_warm_on_the_cpu_host_as_it_decodes_nothing() -> None:
    """An embedding model's requests have no reply to decode: warm on the CPU host, an embed
    runs there (its inputs' evaluation is its whole cost) rather than load the model on the
    idle GPU. Ollama's route and OpenAI's both."""
    hosts = {"cpu": ["--profile", "cpu"], "gpu": ["--profile", "gpu-24g"]}
    with fleet.whole_fleet(hosts) as running:
        model = "nomic-embed-text:latest"
        fleet.warm_everywhere(running, model, ["cpu"], route="/api/embed")
        native = httpx.post(
            running.edge.url + "/api/embed",
            json={"model": "nomic-embed-text", "input": ["a chunk of text", "another"]},
            timeout=30,
        )
        assert native.status_code == 200, native.text
        assert (native.headers["x-hops-node"], native.headers["x-hops-route"]) == ("cpu", "warm")
        client = openai.OpenAI(base_url=running.edge.url + "/v1", api_key="unused")
        vectors = client.embeddings.with_raw_response.create(
            model="nomic-embed-text", input="one more chunk"
        )
        assert (vectors.headers["x-hops-node"], vectors.headers["x-hops-route"]) == ("cpu", "warm")
        assert len(vectors.parse().data) == 1
        assert [_sim_stats(running.sim_url(n))["loads"] for n in ("cpu", "gpu")] == [1, 0]


def test_an_embed_teaches_its_models_load_and_evaluation_speed_on_its_host() -> None:
    """Ollama's /api/embed reply ends with its whole time, its load's and its inputs' tokens,
    after vectors far longer than the tail the edge keeps: the control plane learns the load of
    the model there and how fast the host evaluates its inputs (the whole time less the load),
    as the simulated host runs them. Embeds used to teach nothing."""
    with fleet.whole_fleet({"cpu": ["--profile", "cpu", "--time-scale", "5"]}) as running:
        chunks = [" ".join(f"word{i}x{j}" for j in range(60)) for i in range(30)]
        for _ in range(2):  # one loads the model, one finds it warm
            answer = httpx.post(
                running.edge.url + "/api/embed",
                json={"model": "nomic-embed-text", "input": chunks},
                timeout=30,
            )
            assert answer.status_code == 200, answer.text
            assert len(answer.json()["embeddings"]) == len(chunks)
        admin = fleet.admin(running.plane.url)
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases closed by their reports")
        node = admin.GetNode(admin_pb2.GetNodeRequest(node_id="cpu")).node
        learned = {s.model: s for s in node.learned}["nomic-embed-text:latest"]
    profile, size = PROFILES["cpu"], CATALOGUE["nomic-embed-text:latest"].size_bytes
    evaluating = decode_tokens_per_s(profile, size, 1.0) * profile.prompt_speedup
    assert learned.prompt_tokens_per_second == pytest.approx(evaluating, rel=0.15)
    load = SPAWN_SECONDS + size / profile.load_speed_bytes_per_s
    assert learned.load_seconds == pytest.approx(load, rel=0.25)  # 115 ms, as the host timed it


def test_ollama_create_works_without_naming_a_host(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The ollama client cannot send X-Hops-Node: a create from a model is made on every host
    that has the model; uploaded blobs go to one host, the create made of them goes there; both
    new models then serve through the edge. Blob lookups and pushes need no host named either."""
    with fleet.whole_fleet({"a": [], "b": ["--profile", "gpu-8g"]}) as running:
        client = ollama.Client(host=running.edge.url, timeout=30)
        statuses = [
            p.status for p in client.create("mine", from_="llama3.2", system="terse", stream=True)
        ]
        assert statuses[-2:] == ["writing manifest", "success"]
        for node in ("a", "b"):
            tags = httpx.get(running.sim_url(node) + "/api/tags").json()["models"]
            assert "mine:latest" in {m["name"] for m in tags}
        weights = tmp_path / "m.gguf"
        weights.write_bytes(b"GGUF" + bytes(range(256)) * 40)
        digest = client.create_blob(weights)  # HEAD (404), then POST to the blob home
        placed = [n for n in ("a", "b") if _has_blob(running.sim_url(n), digest)]
        assert placed == ["a"]  # the host holding the largest model
        again = httpx.post(running.edge.url + f"/api/blobs/{digest}", content=weights.read_bytes())
        assert again.status_code == 200  # already in the fleet: not uploaded twice
        assert _has_blob(running.sim_url("b"), digest) is False
        assert client.create("fromfile", files={"m.gguf": digest}).status == "success"
        # Once a create has answered, its model is listed and runs, as on one Ollama.
        assert {"mine:latest", "fromfile:latest"} <= {m.model for m in client.list().models}
        assert client.generate("mine", "hi").response
        assert client.generate("fromfile", "hi").response
        pushed = httpx.post(running.edge.url + "/api/push", json={"model": "ghost"})
        assert pushed.status_code == 404
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases closed by their reports")


def _has_blob(url: str, digest: str) -> bool:
    return httpx.head(url + f"/api/blobs/{digest}").status_code == 200


def test_a_blob_upload_streams_to_the_host_named() -> None:
    """A blob goes to its host as it arrives, and the upload completes (the edge's disconnect
    watcher used to take the body's messages, and the upload hung)."""
    with fleet.whole_fleet({"a": []}) as running:
        data = b"GGUF" + bytes(range(256)) * 40
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        sent = httpx.post(
            running.edge.url + f"/api/blobs/{digest}",
            content=iter([data[:5000], data[5000:]]),
            headers={"X-Hops-Node": "a"},
            timeout=10,
        )
        assert sent.status_code == 201
        assert httpx.head(running.sim_url("a") + f"/api/blobs/{digest}").status_code == 200


def test_a_host_that_never_answers_is_skipped_after_the_first_byte_timeout() -> None:
    hosts = {"a": ["--control-listen", "127.0.0.1:0"], "b": []}
    with fleet.whole_fleet(
        hosts, plane_args=["--policy", "round_robin"], edge_args=["--first-byte-timeout", "0.5"]
    ) as running:
        control = running.hosts["a"].wait_for(r"control on (\S+)").group(1)
        httpx.put(control + "/_sim/fault", json={"mode": "hang"}, timeout=5)
        for _ in range(2):  # round robin: one of the two starts on the hanging host
            response = httpx.post(
                running.edge.url + "/api/generate",
                json={"model": "llama3.2", "prompt": "x", "stream": False},
                timeout=10,
            )
            assert response.status_code == 200 and response.headers["x-hops-node"] == "b"
        assert _sim_stats(control)["faults_injected"] == {"hang": 1}
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases closed")


def test_a_closed_edge_session_releases_its_leases() -> None:
    import grpc
    from hops.v1 import router_pb2, router_pb2_grpc

    with fleet.whole_fleet({"only": []}) as running:
        channel = grpc.insecure_channel(running.plane.url)
        router = router_pb2_grpc.RouterServiceStub(channel)
        session = router.EdgeSession(router_pb2.EdgeSessionRequest(edge_id="doomed"))
        assert next(session).inventory.nodes
        for _ in range(3):
            picked = router.Pick(router_pb2.PickRequest(edge_id="doomed", model="llama3.2"))
            assert picked.status == router_pb2.PICK_STATUS_OK
        assert running.open_leases() == 3
        session.cancel()  # the edge is gone
        channel.close()
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases released")


def test_saturated_fleet_queues_requests_then_answers_503() -> None:
    slow = ["--time-scale", "2", "--response-tokens", "60-60"]
    with fleet.whole_fleet(
        {"only": slow}, plane_args=["--admission-wait", "30"], agent_args=["--max-in-flight", "1"]
    ) as running:
        body = {"model": "llama3.2", "prompt": "x", "stream": False}

        def post(_: int) -> httpx.Response:
            return httpx.post(running.edge.url + "/api/generate", json=body, timeout=60)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(3) as pool:
            responses = list(pool.map(post, range(3)))
        assert [r.status_code for r in responses] == [200, 200, 200]
        routes = sorted(r.headers["x-hops-route"] for r in responses)
        assert sum(route.startswith("queued ") for route in routes) >= 2  # held, not piled on
        assert _sim_stats(running.sim_url("only"))["waiting_for_slot"] == 0
    with fleet.whole_fleet(
        {"only": ["--time-scale", "1", "--response-tokens", "2000-2000"]},
        plane_args=["--admission-wait", "0.3"],
        agent_args=["--max-in-flight", "1"],
    ) as running:
        with (
            httpx.Client(base_url=running.edge.url, timeout=30) as client,
            client.stream(
                "POST", "/api/generate", json={"model": "llama3.2", "prompt": "x"}
            ) as held,
        ):
            lines = held.iter_lines()  # keep it referenced: a collected iterator closes the stream
            next(lines)
            refused = httpx.post(running.edge.url + "/api/generate", json=body, timeout=10)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        wait_until(lambda: running.open_leases() == 0, 2.0, "leases released")


def test_a_stream_that_stalls_past_the_idle_timeout_ends_with_an_error_line() -> None:
    with fleet.whole_fleet({"only": []}, edge_args=["--idle-timeout", "0.2"]) as running:
        httpx.put(
            running.sim_url("only") + "/_sim/fault",
            json={"mode": "slow", "factor": 10000},
            timeout=5,
        )  # ~0.7 s between tokens
        with httpx.stream(
            "POST",
            running.edge.url + "/api/generate",
            json={"model": "llama3.2", "prompt": "x"},
            timeout=30,
        ) as response:
            lines = [json.loads(line) for line in response.iter_lines()]
        assert "error" in lines[-1] and "stopped sending" in lines[-1]["error"]
        assert not any(line.get("done") for line in lines)
        wait_until(lambda: running.open_leases() == 0, 2.0, "lease released")
        wait_until(
            lambda: _sim_stats(running.sim_url("only"))["cancelled"] == 1,
            2.0,
            "the host was told to stop",
        )


def test_api_keys_guard_the_edge_and_never_reach_the_host(tmp_path) -> None:  # type: ignore[no-untyped-def]
    keys = tmp_path / "admin-keys"
    keys.write_text("admin-secret\n")
    with contextlib.ExitStack() as stack:
        plane = stack.enter_context(fleet.controlplane())
        echo = stack.enter_context(
            procs.running("tests.fakes.echo_ollama", ["--listen", "127.0.0.1:0"])
        )
        stack.enter_context(fleet.agent([plane.url], echo.url, "echo"))
        front = stack.enter_context(
            fleet.edge([plane.url], ["--api-keys", "user-secret", "--admin-keys-file", str(keys)])
        )
        wait_until(
            lambda: httpx.get(
                front.url + "/api/tags", headers={"Authorization": "Bearer user-secret"}
            ).json()["models"],
            3.0,
            "inventory",
        )
        body = b'{"model":"echo","prompt":"hi"}'
        anonymous = httpx.post(front.url + "/api/generate", content=body)
        assert anonymous.status_code == 401 and "Bearer" in anonymous.json()["error"]
        wrong = httpx.post(
            front.url + "/v1/chat/completions",
            content=body,
            headers={"Authorization": "Bearer guess"},
        )
        assert wrong.status_code == 401 and wrong.json()["error"]["message"]
        ok = httpx.post(
            front.url + "/api/generate",
            content=body,
            headers={"Authorization": "Bearer user-secret"},
        )
        assert ok.status_code == 200
        seen = json.loads(httpx.get(echo.url + "/_echo/last").json()["headers"])
        assert "authorization" not in seen
        pull = httpx.post(
            front.url + "/api/pull",
            json={"model": "x"},
            headers={"Authorization": "Bearer user-secret"},
        )
        assert pull.status_code == 403
        assert httpx.get(front.url + "/").status_code == 200
        assert "secret" not in front.output()
