"""An edge served in-process with no control plane it can reach (so a request that passes the
edge's own checks ends in 503), for tests of what the edge answers by itself."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from edge.app import EdgeApp
from edge.cpclient import ControlPlaneClient
from edge.metrics import EdgeMetrics
from edge.settings import EdgeSettings
from edge.upstream import Upstream


@contextlib.asynccontextmanager
async def edge_app(**settings: Any) -> AsyncIterator[EdgeApp]:
    config = EdgeSettings(
        controlplane=("127.0.0.1:1",), pick_timeout=0.2, fail_open_for=0, **settings
    )
    cp = ControlPlaneClient(config.controlplane, "planeless", config.pick_timeout)
    upstream = Upstream(config)
    try:
        yield EdgeApp(config, cp, upstream, EdgeMetrics())
    finally:
        await cp.close()
        await upstream.close()


@contextlib.asynccontextmanager
async def edge_client(base_url: str, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with edge_app(**settings) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client
