"""The simulator refuses what Ollama refuses from browsers and foreign Host names: a proxy that
forwards a browser's Origin, or the Host it was reached by, fails against it as against Ollama."""

from __future__ import annotations

import httpx
import pytest

from hopscommon import cors
from tests.simfixtures import SimFactory


async def test_origins_default_to_ollamas_and_others_get_an_empty_403(
    start_sim: SimFactory,
) -> None:
    sim = await start_sim()
    async with httpx.AsyncClient(base_url=sim.url) as client:
        for origin in ("http://localhost:3000", "app://obsidian.md", "vscode-webview://abc"):
            ok = await client.get("/api/tags", headers={"Origin": origin})
            assert ok.status_code == 200
            assert ok.headers["access-control-allow-origin"] == origin
        refused = await client.post(
            "/api/generate", json={"model": "llama3.2"}, headers={"Origin": "https://evil.example"}
        )
        assert (refused.status_code, refused.content) == (403, b"")
        assert "/api/generate" not in await sim_requests(client)  # refused before the route
        same = await client.get("/api/version", headers={"Origin": sim.url})  # its own page
        assert same.status_code == 200 and "access-control-allow-origin" not in same.headers


async def sim_requests(client: httpx.AsyncClient) -> dict[str, int]:
    requests: dict[str, int] = (await client.get("/_sim/stats")).json()["requests"]
    return requests


async def test_a_preflight_from_an_allowed_origin_is_answered_204(start_sim: SimFactory) -> None:
    sim = await start_sim(origins=("https://*.example.com",))
    async with httpx.AsyncClient(base_url=sim.url) as client:
        preflight = await client.options(
            "/api/chat",
            headers={
                "Origin": "https://chat.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://chat.example.com"
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert "Content-Type" in preflight.headers["access-control-allow-headers"]
        other = await client.options("/api/chat", headers={"Origin": "https://example.org"})
        assert other.status_code == 403
        plain = await client.options("/api/chat")  # no Origin: not CORS, the router's 405
        assert (plain.status_code, plain.text) == (405, "405 method not allowed")


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("127.0.0.1:11434", True),
        ("localhost", True),
        ("[::1]:11434", True),
        ("10.0.0.7:11434", True),
        ("0.0.0.0", True),
        ("gpu-box.local", True),
        ("ollama.internal:80", True),
        ("", True),
        ("ollama.example.com", False),
        ("8.8.8.8:11434", False),
        ("localhost.evil.com", False),
    ],
)
def test_a_loopback_server_accepts_only_local_host_names(host: str, allowed: bool) -> None:
    assert cors.local_host(host) is allowed


async def test_a_foreign_host_header_gets_an_empty_403_on_loopback(start_sim: SimFactory) -> None:
    sim = await start_sim()
    async with httpx.AsyncClient(base_url=sim.url) as client:
        refused = await client.get("/api/tags", headers={"Host": "ollama.example.com"})
        assert (refused.status_code, refused.content) == (403, b"")
        control = await client.get("/_sim/stats", headers={"Host": "ollama.example.com"})
        assert control.status_code == 200  # the simulator's own routes are not Ollama's
