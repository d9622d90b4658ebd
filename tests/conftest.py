from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from ollamasim.server import SimServer
from tests.simfixtures import SimFactory, sim_pool


@pytest.fixture
async def start_sim() -> AsyncIterator[SimFactory]:
    """Start simulated hosts on loopback; all are stopped when the test ends."""
    async with sim_pool() as start:
        yield start


@pytest.fixture
async def sim(start_sim: SimFactory) -> SimServer:
    """One default host (gpu-24g profile, 50x time scale)."""
    return await start_sim()


@pytest.fixture
async def http(sim: SimServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim.url, timeout=30) as client:
        yield client
