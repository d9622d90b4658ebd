"""The small HTTP side port of the control plane and the agent: /metrics (Prometheus), /healthz,
plus whatever extra routes the caller adds (the control plane's dashboard). Bound up front, so the
port is known, and served by uvicorn in the caller's event loop."""

from __future__ import annotations

import asyncio

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from hopscommon.net import bind


class AdminHttp:
    def __init__(
        self,
        listen: tuple[str, int],
        registry: CollectorRegistry,
        routes: tuple[BaseRoute, ...] = (),
    ) -> None:
        async def metrics(request: Request) -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

        async def healthz(request: Request) -> Response:
            return PlainTextResponse("ok")

        app = Starlette(routes=[Route("/metrics", metrics), Route("/healthz", healthz), *routes])
        self.host = listen[0]
        self.sock = bind(*listen)
        self.port: int = self.sock.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.server.config.load()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> asyncio.Task[None]:
        self.task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        return self.task

    def stop(self) -> None:
        self.server.should_exit = True
