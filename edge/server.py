"""Composition root of the edge: settings -> control-plane client, upstream client, app, uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

import uvicorn

from edge.app import EdgeApp
from edge.cpclient import ControlPlaneClient
from edge.metrics import EdgeMetrics
from edge.proxy import AbortConnection
from edge.settings import EdgeSettings
from edge.upstream import Upstream
from hopscommon.net import bind, connect_host


class _AbortFilter(logging.Filter):
    """A connection cut on purpose (upstream failed inside a fixed-length body) is not a bug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, AbortConnection)


class Edge:
    def __init__(self, settings: EdgeSettings, sock: socket.socket | None = None) -> None:
        self.settings = settings
        self.metrics = EdgeMetrics()
        self.cp = ControlPlaneClient(
            settings.controlplane,
            settings.effective_edge_id,
            settings.pick_timeout,
            settings.controlplane_token,
            settings.channel_credentials(),
            settings.ssl_context(),
        )
        self.upstream = Upstream(settings)
        self.app = EdgeApp(settings, self.cp, self.upstream, self.metrics)
        self.sock = sock if sock is not None else bind(*settings.listen, backlog=4096)
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            http="httptools",
            log_level=settings.log_level.lower(),
            access_log=False,
            timeout_keep_alive=60,
            timeout_graceful_shutdown=30,
            backlog=4096,
        )
        self.server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").addFilter(_AbortFilter())

    @property
    def url(self) -> str:
        return f"http://{connect_host(self.settings.listen[0])}:{self.port}"

    async def serve(self) -> None:
        self.cp.start()
        try:
            await self.server.serve(sockets=[self.sock])
        finally:
            await self.cp.close()
            await self.upstream.close()

    def stop(self) -> None:
        self.server.should_exit = True


@contextlib.asynccontextmanager
async def running(settings: EdgeSettings) -> AsyncIterator[Edge]:
    """Run an edge in the current event loop (for tests); stops it on exit."""
    edge = Edge(settings)
    task = asyncio.create_task(edge.serve())
    while not edge.server.started and not task.done():  # noqa: ASYNC110 - uvicorn exposes a flag
        await asyncio.sleep(0.005)
    try:
        yield edge
    finally:
        edge.stop()
        await task
