"""Browsers at the edge, as at Ollama: preflights answered, allowed origins told so, others
refused; the edge runs in-process with no control plane (so a request that passes ends in 503)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from tests.edge.planeless import edge_client


@pytest.fixture
async def edge() -> AsyncIterator[httpx.AsyncClient]:
    settings = {"origins": ("https://*.example.com",), "api_keys": ("k",)}
    async with edge_client("http://hops:11434", **settings) as client:
        yield client


async def test_a_preflight_from_an_allowed_origin_needs_no_key(edge: httpx.AsyncClient) -> None:
    for origin in ("http://localhost:5173", "app://obsidian.md", "https://chat.example.com"):
        preflight = await edge.options(
            "/api/chat",
            headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 204, origin
        assert preflight.headers["access-control-allow-origin"] == origin
        allowed = preflight.headers["access-control-allow-headers"].split(",")
        assert {"Authorization", "X-Hops-Session", "X-Hops-Labels"} <= set(allowed)


async def test_an_allowed_origin_can_read_every_answer_even_an_error(
    edge: httpx.AsyncClient,
) -> None:
    origin = {"Origin": "http://127.0.0.1:8080"}
    unauthorized = await edge.post("/api/chat", json={"model": "m"}, headers=origin)
    assert unauthorized.status_code == 401
    assert unauthorized.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
    keyed = {**origin, "Authorization": "Bearer k"}
    no_plane = await edge.post("/api/chat", json={"model": "m"}, headers=keyed)
    assert no_plane.status_code == 503
    assert no_plane.headers["access-control-allow-origin"] == "http://127.0.0.1:8080"
    assert "X-Hops-Node" in no_plane.headers["access-control-expose-headers"]


async def test_other_origins_are_refused_before_anything_else(edge: httpx.AsyncClient) -> None:
    for method in ("OPTIONS", "POST"):
        refused = await edge.request(
            method, "/api/chat", json={"model": "m"}, headers={"Origin": "https://evil.test"}
        )
        assert refused.status_code == 403
        assert "origin https://evil.test is not allowed" in refused.json()["error"]
        assert "access-control-allow-origin" not in refused.headers


async def test_requests_without_a_foreign_origin_are_not_cors(edge: httpx.AsyncClient) -> None:
    same = await edge.get("/", headers={"Origin": "http://hops:11434"})  # the edge's own page
    assert same.status_code == 200 and "access-control-allow-origin" not in same.headers
    # No Origin: an ordinary request, here with the wrong method.
    plain = await edge.options("/api/chat", headers={"Authorization": "Bearer k"})
    assert plain.status_code == 405
