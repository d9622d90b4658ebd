"""A quick version of bench/long_context.py: on hosts whose automatic context lengths differ
(Ollama 0.15.5 picks them from the VRAM), a document goes to the host that reads it whole,
though a smaller, faster card would start on it sooner and cut it."""

from __future__ import annotations

import argparse

import httpx
import pytest
from hops.v1 import admin_pb2

from bench.long_context import HOSTS, MODEL, SLOTS, SPEED, VERSION, run_one
from tests.integration import fleet

pytestmark = pytest.mark.slow


def chat(
    edge: str, text: str, route: str = "/api/chat", node: str = "", **extra: object
) -> httpx.Response:
    """One unstreamed chat turn carrying ``text`` (for MODEL, unless ``extra`` names another),
    through the edge at ``edge`` (aimed at ``node`` when given); ``extra``: more body fields."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], **extra}
    reply = httpx.post(
        edge + route,
        json={**body, "stream": False},
        headers={"X-Hops-Node": node} if node else {},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    return reply


def test_documents_go_where_the_context_length_holds_them_whole() -> None:
    args = argparse.Namespace(seed=7, requests=30, rate=0.5, doc_share=0.3, doc_tokens=10_000)
    result = run_one("memory_aware", args)
    docs = [(c["node"], c["route"], c["prompt_tokens_sent"]) for c in result["chats"] if c["doc"]]
    assert result["context_lengths"] == {"big": 32768, "mid": 4096, "small": 4096}
    assert len(docs) >= 5, result
    assert result["truncated_prompts"] == 0, docs
    assert result["documents_read_in_part"] == 0, docs
    assert result["documents_by_host"]["big"] == len(docs), docs
    # The old big card is slow: the short chats go to the faster ones.
    assert result["short_by_host"]["big"] <= 2, result["short_by_host"]


def test_a_prompt_no_host_holds_whole_says_so_in_x_hops_route() -> None:
    sim = ["--version", VERSION, "--time-scale", "20", "--num-parallel", str(SLOTS)]
    hosts = {
        node: ["--profile", profile, *sim, "--speed", str(SPEED.get(node, 1.0))]
        for node, profile in HOSTS.items()
    }
    with fleet.whole_fleet(hosts, agent_args=["--num-parallel", str(SLOTS)]) as running:
        fleet.warm_everywhere(running, MODEL, HOSTS)
        text = " ".join(f"line{i:05d}" for i in range(16_000))  # 40,000 tokens
        reply = chat(running.edge.url, text, options={"num_predict": 4})
        assert reply.headers["x-hops-route"].endswith("over-context")
        assert reply.json()["prompt_eval_count"] == 32768  # cut, on the host that cuts least
        assert reply.headers["x-hops-node"] == "big"


def test_an_embedding_input_goes_where_it_is_embedded_whole() -> None:
    """bge-m3 (trained for 8192 tokens) runs at 4096 on the 12 GB card and 8192 on the 24 GB
    one: a 6,000-token chunk goes to the latter though the former is faster; short inputs
    still go to the former."""
    sim = ["--version", VERSION, "--time-scale", "20", "--models", "bge-m3:latest"]
    hosts = {"big": ["--profile", "gpu-24g", *sim, "--speed", "0.35"]}
    hosts["mid"] = ["--profile", "gpu-12g", *sim]
    with fleet.whole_fleet(hosts) as running:
        fleet.warm_everywhere(running, "bge-m3:latest", hosts, "/api/embed")

        def embed(texts: list[str]) -> httpx.Response:
            reply = httpx.post(
                running.edge.url + "/api/embed",
                json={"model": "bge-m3", "input": texts},
                timeout=60,
            )
            assert reply.status_code == 200, reply.text
            return reply

        long = embed(["a few words", "word " * 4800])  # 6,000 tokens
        assert long.headers["x-hops-node"] == "big", long.headers["x-hops-route"]
        assert long.json()["prompt_eval_count"] > 6000
        short = embed(["a few words", "and a few more"])
        assert short.headers["x-hops-node"] == "mid", short.headers["x-hops-route"]


def test_a_declared_context_length_is_routed_by_before_any_reply() -> None:
    """The 12 GB card's Ollama runs with OLLAMA_CONTEXT_LENGTH=16384 and its agent declares
    it (--context-length): the first document, before any reply has shown a length, goes to
    that card (faster, and the smaller of two that read it whole) and is read whole. Taken at
    its VRAM tier (4096), it went to the slow 24 GB card."""
    sim = ["--version", VERSION, "--time-scale", "20"]
    hosts = {
        "big": ["--profile", "gpu-24g", *sim, "--speed", "0.35"],
        "mid": ["--profile", "gpu-12g", *sim, "--context-length", "16384"],
    }
    declared = {"mid": ["--context-length", "16384"]}
    with fleet.whole_fleet(hosts, agent_args_of=declared) as running:
        document = " ".join(f"line{i:05d}" for i in range(4_000))  # 10,000 tokens
        reply = chat(running.edge.url, document, options={"num_predict": 4})
        assert reply.headers["x-hops-node"] == "mid", reply.headers["x-hops-route"]
        assert "over-context" not in reply.headers["x-hops-route"]
        assert reply.json()["prompt_eval_count"] >= 10_000  # read whole


def test_a_reply_asked_short_leaves_its_prompt_room_on_the_shorter_context() -> None:
    """Replies run to 300 tokens here. A 3,900-token prompt with them would outgrow the 12 GB
    card's 4096 (Ollama would drop its start mid-reply), so it goes to the slow 24 GB card; the
    same prompt asking for at most 8 tokens (num_predict, or OpenAI's max_tokens) fits the
    faster card and goes there."""
    sim = ["--version", VERSION, "--time-scale", "20", "--response-tokens", "300-300"]
    hosts = {
        "big": ["--profile", "gpu-24g", *sim, "--speed", "0.35"],
        "mid": ["--profile", "gpu-12g", *sim],
    }
    with fleet.whole_fleet(hosts) as running:
        fleet.warm_everywhere(running, MODEL, hosts)
        edge = running.edge.url
        # A reply on each host teaches its decode speed (the old card's is slow) and the
        # model's usual reply: 300 tokens.
        stub = fleet.admin(running.plane.url)
        for node in hosts:
            chat(edge, "hi", node=node)

        def taught() -> bool:
            return all(
                learned.decode_tokens_per_second > 0
                for node in hosts
                for learned in stub.GetNode(admin_pb2.GetNodeRequest(node_id=node)).node.learned
            )

        fleet.wait_until(taught, 5.0, "the replies learned from")
        # Three documents of 3,900 tokens (three conversations: no affinity between them).
        document = " ".join(f"line{i:05d}" for i in range(1_559))
        short = chat(edge, "a " + document, options={"num_predict": 8})
        assert short.headers["x-hops-node"] == "mid", short.headers["x-hops-route"]
        assert short.json()["eval_count"] == 8
        openai = chat(edge, "b " + document, "/v1/chat/completions", max_tokens=8)
        assert openai.headers["x-hops-node"] == "mid", openai.headers["x-hops-route"]
        whole = chat(edge, "c " + document)
        assert whole.headers["x-hops-node"] == "big", whole.headers["x-hops-route"]


def test_a_prompt_is_fitted_with_what_the_model_adds_to_it() -> None:
    """A model made with a long SYSTEM (about 1,300 tokens) carries it in every chat that
    brings none; the edge cannot see it, but replies show it. Once two short chats have, a
    3,000-token document (4,300 tokens with the briefing) goes to the card that holds it
    whole, not the faster 4096 one that would cut it."""
    sim = ["--version", VERSION, "--time-scale", "20"]
    hosts = {
        "big": ["--profile", "gpu-24g", *sim, "--speed", "0.1"],
        "mid": ["--profile", "gpu-12g", *sim],
    }
    with fleet.whole_fleet(hosts) as running:
        edge = running.edge.url
        briefing = "Answer as the ship's engineer would, in full. " * 115
        made = httpx.post(
            edge + "/api/create",
            json={"model": "engineer", "from": MODEL, "system": briefing, "stream": False},
            timeout=60,
        )
        assert made.status_code == 200, made.text
        stub = fleet.admin(running.plane.url)

        def everywhere() -> bool:
            listed = stub.ListModels(admin_pb2.ListModelsRequest()).models
            return any(m.name == "engineer:latest" and len(m.installed_on) == 2 for m in listed)

        fleet.wait_until(everywhere, 5.0, "the new model on both hosts")
        for node in hosts:  # what the briefing adds, learned from Ollama's counts
            taught = chat(edge, "hi", node=node, model="engineer", options={"num_predict": 4})
            assert taught.json()["prompt_eval_count"] > 1_300

        def added() -> float:
            listed = stub.ListModels(admin_pb2.ListModelsRequest()).models
            return next(m.prompt_added_tokens for m in listed if m.name == "engineer:latest")

        shown = fleet.wait_until(added, 5.0, "what the briefing adds, as the admin sees it")
        assert shown == pytest.approx(taught.json()["prompt_eval_count"] - 1, abs=30)
        document = " ".join(f"line{i:05d}" for i in range(1_200))  # 3,000 tokens
        reply = chat(edge, document, model="engineer", options={"num_predict": 4})
        assert reply.headers["x-hops-node"] == "big", reply.headers["x-hops-route"]
        assert reply.json()["prompt_eval_count"] > 4_300  # read whole
