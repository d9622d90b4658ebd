"""Requests the edge sends to several hosts itself: an unload (also delete, copy) ends even when
a host never answers, naming it; a create made on several hosts stops when its client leaves.
And what model management waits for before it answers: the inventory showing its change."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace

import httpx
import pytest

from edge import inventory as inv
from edge import management
from edge.cpclient import ControlPlaneClient
from hopscommon.fleet import InstalledModel
from tests.edge.planeless import edge_app


async def test_a_silent_host_fails_an_unload_after_the_timeout_naming_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(management, "FAN_OUT_TIMEOUT_S", 0.5)
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


async def test_a_client_that_leaves_stops_a_create_on_several_hosts() -> None:
    """A create from a model goes to every host with that model, one after another: when the
    client leaves during the first, that host's request is closed and the next is never asked."""
    creating: dict[str, asyncio.Event] = {"first": asyncio.Event(), "second": asyncio.Event()}
    closed = asyncio.Event()

    def host(name: str) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def creating_forever(reader: asyncio.StreamReader, _: asyncio.StreamWriter) -> None:
            while await reader.read(65536):  # the request came: creating, never answering
                creating[name].set()
            closed.set()  # the edge closed its request: Ollama stops the create

        return creating_forever

    servers = [await asyncio.start_server(host(n), "127.0.0.1", 0) for n in creating]
    base = InstalledModel(name="base:latest")
    nodes = tuple(
        inv.InventoryNode(
            n, f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}", True, "1", (base,), ()
        )
        for n, s in zip(creating, servers, strict=True)
    )
    body = json.dumps({"model": "mine", "from": "base", "system": "be brief"}).encode()
    messages = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict[str, object]:
        message = next(messages, None)
        if message is not None:
            return message
        await creating["first"].wait()  # the client leaves while the first host creates
        return {"type": "http.disconnect"}

    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/create",
        "query_string": b"",
        "headers": [(b"host", b"edge"), (b"content-type", b"application/json")],
    }
    try:
        async with edge_app() as app:
            app.cp.inventory = inv.Inventory(nodes=nodes)
            app.cp.connected.set()
            await asyncio.wait_for(app(scope, receive, send), 10)  # type: ignore[arg-type]
            await asyncio.wait_for(closed.wait(), 10)
        assert not creating["second"].is_set()
        assert sent == []  # nobody to answer
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()


async def test_until_waits_for_an_inventory_that_passes_and_gives_up_in_time() -> None:
    cp = ControlPlaneClient(("127.0.0.1:1",), "edge", 0.2)
    try:
        node = inv.InventoryNode("a", "http://a.test", True, "1", (InstalledModel(name="m"),), ())
        waiting = asyncio.create_task(cp.until(lambda current: bool(current.nodes), 5.0))
        cp.update(inv.Inventory())  # not yet
        await asyncio.sleep(0)
        assert not waiting.done()
        cp.update(inv.Inventory(nodes=(node,)))
        assert await asyncio.wait_for(waiting, 1.0)
        assert not await cp.until(lambda _: False, 0.05)
    finally:
        await cp.close()


async def test_a_create_answers_once_the_inventory_shows_the_model_on_its_host() -> None:
    """Agents see a new model at their next poll: the end of a create's stream waits until the
    edge's inventory lists the model on the host that made it (its answer was sent at once,
    and a client going on at once got 404)."""
    success = b'{"status":"success"}\n'

    async def created(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        head = "HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
        writer.write(f"{head}content-length: {len(success)}\r\n\r\n".encode() + success)
        await writer.drain()

    server = await asyncio.start_server(created, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    before = inv.InventoryNode("a", url, True, "1", (InstalledModel(name="base:latest"),), ())
    after = replace(before, installed=(*before.installed, InstalledModel(name="mine:latest")))
    asked: list[tuple[bool, bool]] = []
    try:
        async with edge_app() as app:
            app.cp.update(inv.Inventory(nodes=(before,)))
            app.cp.connected.set()

            async def until(check: Callable[[inv.Inventory], bool], within: float) -> bool:
                asked.append(
                    (check(inv.Inventory(nodes=(before,))), check(inv.Inventory(nodes=(after,))))
                )
                return True

            app.cp.until = until  # type: ignore[method-assign]
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://edge") as client:
                body = {"model": "mine", "from": "base"}
                answer = await asyncio.wait_for(
                    client.post("/api/create", json=body, headers={"X-Hops-Node": "a"}), 10
                )
        assert (answer.status_code, answer.content) == (200, success)
        assert asked == [(False, True)]  # waited for "mine" on "a", once
    finally:
        server.close()
        await server.wait_closed()
