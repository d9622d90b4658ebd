"""Hostile request bodies, headers, paths and methods at the edge: always a 4xx (or 503 when no
host can be asked) with an Ollama-shaped error, never a 500, a crash or a hang.

The edge runs in-process (httpx.ASGITransport) with a control plane that cannot be reached and
no inventory, so a well-formed request ends in 503 and anything malformed must fail before that.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.edge.planeless import edge_client

ROUTES = [
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/api/show",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/api/pull",
    "/api/delete",
    "/api/copy",
    "/api/create",
]
ALLOWED = {400, 401, 403, 404, 405, 413, 503}


@pytest.fixture
async def edge() -> AsyncIterator[httpx.AsyncClient]:
    async with edge_client("http://edge", max_body=64 * 1024) as client:
        yield client


def _check(response: httpx.Response) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.text[:200])
    if response.status_code in (404, 405) and response.headers["content-type"].startswith(
        "text/plain"
    ):
        return
    error = response.json()["error"]
    assert isinstance(error, str) or isinstance(error.get("message"), str)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(
        st.sampled_from(
            [
                "model",
                "name",
                "messages",
                "prompt",
                "stream",
                "input",
                "source",
                "destination",
                "keep_alive",
                "options",
                "images",
                "max_tokens",
                "type",
                "content",
            ]
        ),
        json_values,
        max_size=5,
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(ROUTES), body=bodies)
async def test_fuzzed_bodies_get_a_clean_4xx_or_503(
    edge: httpx.AsyncClient, path: str, body: bytes
) -> None:
    method = "DELETE" if path == "/api/delete" else "POST"
    response = await asyncio.wait_for(edge.request(method, path, content=body), 5)
    _check(response)


@pytest.mark.parametrize(
    ("method", "path", "body", "headers"),
    [
        ("POST", "/api/chat", b'{"model": ' + b"[" * 5000 + b"]" * 5000 + b"}", {}),
        ("POST", "/api/chat", b'{"model": "' + b"a" * 70000 + b'"}', {}),
        ("POST", "/api/generate", b'{"model": "x"}', {"content-length": "99999999999"}),
        ("POST", "/api/generate", b'{"model": "bad name !!"}', {}),
        ("POST", "/api/generate", b'{"model": 12}', {}),
        ("POST", "/api/generate", b"\xff\xfe\x00garbage", {}),
        ("PUT", "/api/generate", b"{}", {}),
        ("GET", "/api/../../etc/passwd", b"", {}),
        ("PATCH", "/", b"", {}),
        ("POST", "/api/blobs/sha256-abc", b"data", {}),
        ("POST", "/api/create", b'{"model": "m"}', {"x-hops-node": b"\xe9\xe9\xe9"}),
        ("POST", "/api/chat", b'{"model": "m"}', {"x-hops-session": b"\xff" * 300}),
        # A content part whose type is not a string (raised TypeError: unhashable), and an
        # empty keep_alive on an unload (raised IndexError): Ollama's 400s to give.
        ("POST", "/api/chat", b'{"model": "m", "messages": [{"content": [{"type": []}]}]}', {}),
        ("POST", "/v1/chat/completions", b'{"model": "m", "input": [{"type": {}}]}', {}),
        ("POST", "/api/generate", b'{"model": "m", "keep_alive": ""}', {}),
    ],
)
async def test_hostile_table(
    edge: httpx.AsyncClient, method: str, path: str, body: bytes, headers: dict[str, str | bytes]
) -> None:
    try:
        response = await asyncio.wait_for(
            edge.request(method, path, content=body, headers=headers), 5
        )
    except httpx.LocalProtocolError:
        return  # the client library itself refuses to send it
    _check(response)


header_names = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_!#$%&'*+.^`|~ABCXYZ", min_size=1, max_size=30
)
header_values = st.binary(max_size=200).map(
    lambda b: bytes(c for c in b if c >= 0x20 and c != 0x7F)  # what HTTP allows on the wire
)
header_sets = st.lists(
    st.tuples(
        st.one_of(
            header_names,
            st.sampled_from(
                [
                    "authorization",
                    "content-type",
                    "x-hops-node",
                    "x-hops-session",
                    "x-openwebui-chat-id",
                    "content-encoding",
                    "transfer-encoding",
                    "expect",
                ]
            ),
        ),
        header_values,
    ),
    max_size=8,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(ROUTES), headers=header_sets)
async def test_fuzzed_headers_get_a_clean_4xx_or_503(
    edge: httpx.AsyncClient, path: str, headers: list[tuple[str, bytes]]
) -> None:
    body = b'{"model": "llama3.2", "prompt": "hi", "messages": []}'
    try:
        response = await asyncio.wait_for(
            edge.request("POST", path, content=body, headers=headers), 5
        )
    except httpx.LocalProtocolError:
        return  # the client library itself refuses to send it
    _check(response)
