"""Requests the edge sends to every host itself (unload, delete, copy) end even when a host never
answers: that host is named as failed, nobody waits past the fan-out timeout."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from edge import app as edge_app_module
from edge import inventory as inv
from tests.edge.planeless import edge_app


async def test_a_silent_host_fails_an_unload_after_the_timeout_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(edge_app_module, "FAN_OUT_TIMEOUT_S", 0.5)
    held: list[asyncio.StreamWriter] = []

    async def accept_and_stay_silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept_and_stay_silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with edge_app() as app:
            silent = inv.InventoryNode("silent", f"http://127.0.0.1:{port}", True, "0.33.0", (), ())
            app.cp.inventory = inv.Inventory(nodes=(silent,))
            app.cp.connected.set()
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
                unload = {"model": "llama3.2", "keep_alive": 0}
                # In-process, httpx's own timeouts do not apply: bound the wait here. Without
                # the fan-out timeout the edge would wait the first-byte timeout (600 s).
                answer = await asyncio.wait_for(client.post("/api/generate", json=unload), 10)
        assert answer.status_code == 500
        assert answer.json()["error"] == "/api/generate failed on 1 hosts: silent: ReadTimeout"
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
