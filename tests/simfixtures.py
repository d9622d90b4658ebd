"""Reusable helpers for starting simulated Ollama hosts inside a test's event loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import httpx

from ollamasim.catalogue import parse_model_arg
from ollamasim.faults import FaultSpec
from ollamasim.server import SimServer, running
from ollamasim.settings import SimSettings

SimFactory = Callable[..., Awaitable[SimServer]]


def sim_settings(**overrides: Any) -> SimSettings:
    """Loopback, ephemeral port, fast clock; ``models`` may be given as a comma string."""
    base = SimSettings(listen=("127.0.0.1", 0), time_scale=50.0, log_level="error")
    if isinstance(overrides.get("models"), str):
        overrides["models"] = tuple(parse_model_arg(m) for m in overrides["models"].split(","))
    if isinstance(overrides.get("fault"), str):
        overrides["fault"] = FaultSpec.parse(overrides["fault"])
    return replace(base, **overrides)


@contextlib.asynccontextmanager
async def sim_pool() -> AsyncIterator[SimFactory]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(**overrides: Any) -> SimServer:
            return await stack.enter_async_context(running(sim_settings(**overrides)))

        yield start


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 1.0) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds (a bounded loop)."""
    for _ in range(max(int(within / 0.01), 1)):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"condition not met within {within}s")


async def sim_stats(server: SimServer) -> dict[str, Any]:
    port = server.control_port or server.port
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        response = await client.get("/_sim/stats")
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data
