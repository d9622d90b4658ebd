"""Running the simulator under uvicorn, with the one thing uvicorn cannot do by itself: stop
listening and start again on the same port (the ``refuse`` fault), so clients see real
connection-refused errors rather than resets."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import uvicorn

from hopscommon.net import bind, connect_host
from ollamasim.app import SimApp, create_app
from ollamasim.settings import SimSettings
from ollamasim.wire import DropConnection

log = logging.getLogger("ollamasim")


class _DropFilter(logging.Filter):
    """Injected connection drops are on purpose; keep them out of uvicorn's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        return not isinstance(exc, DropConnection)


class SimServer:
    """One simulated host: its API listener, an optional control listener, and refusal."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.app: SimApp = create_app(settings)
        self.app.host.refuse_connections = self.refuse
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            http="httptools",
            log_level=settings.log_level,
            access_log=False,
            timeout_keep_alive=30,
            timeout_graceful_shutdown=2,
            backlog=2048,
        )
        self.uvicorn = uvicorn.Server(config)
        self.sock = bind(*settings.listen)
        self.port: int = self.sock.getsockname()[1]
        self.control_sock = bind(*settings.control_listen) if settings.control_listen else None
        self.control_port: int | None = (
            self.control_sock.getsockname()[1] if self.control_sock else None
        )
        self.app.control_port = self.control_port
        self._api_servers: list[asyncio.base_events.Server] = []
        self._reopen: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = asyncio.Event()
        logging.getLogger("uvicorn.error").addFilter(_DropFilter())

    @property
    def url(self) -> str:
        return f"http://{connect_host(self.settings.listen[0])}:{self.port}"

    def _protocol(self, _loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
        # The same construction uvicorn.Server.startup uses for its own listeners.
        cfg = self.uvicorn.config
        protocol: Any = cfg.http_protocol_class
        made: asyncio.Protocol = protocol(
            config=cfg,
            server_state=self.uvicorn.server_state,
            app_state=self.uvicorn.lifespan.state,
            _loop=_loop,
        )
        return made

    async def serve(self) -> None:
        """Serve until ``stop()``; the API socket is already bound, so clients may connect."""
        if not self.uvicorn.config.loaded:
            self.uvicorn.config.load()
        task = asyncio.create_task(self.uvicorn.serve(sockets=[self.sock]))
        # uvicorn exposes readiness only as a flag.
        while not self.uvicorn.started and not task.done():  # noqa: ASYNC110
            await asyncio.sleep(0.005)
        if not task.done():
            await self._started()
        await task

    async def _started(self) -> None:
        self._api_servers = list(self.uvicorn.servers)
        if self.control_sock is not None:
            loop = asyncio.get_running_loop()
            control = await loop.create_server(self._protocol, sock=self.control_sock)
            self.uvicorn.servers.append(control)
        fault = self.settings.fault
        if fault is not None and fault.mode == "refuse":
            self.refuse(fault.duration_s)
        self.ready.set()

    def stop(self) -> None:
        self.uvicorn.should_exit = True

    def refuse(self, seconds: float | None) -> None:
        """Stop listening on the API port for ``seconds`` (None: until cleared; 0: listen now)."""
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        loop = asyncio.get_running_loop()
        if seconds == 0:
            if not self._api_servers:
                self._spawn(self._listen_again())
            return
        for server in self._api_servers:
            server.close()
        self._api_servers = []
        # Like a host that went down: idle keep-alive connections close too (requests in
        # flight finish first), so pooled clients must reconnect and are refused.
        for connection in list(self.uvicorn.server_state.connections):
            connection.shutdown()
        log.warning("fault: refusing connections on port %d", self.port)
        if seconds is not None:
            self._reopen = loop.call_later(seconds, lambda: self._spawn(self._listen_again()))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen_again(self) -> None:
        if self._api_servers or self.uvicorn.should_exit:
            return
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            self._protocol, sock=bind(self.settings.listen[0], self.port)
        )
        self._api_servers = [server]
        self.uvicorn.servers.append(server)
        active = self.app.host.faults.active()
        if active is not None and active.mode == "refuse":
            self.app.host.faults.set(None)
        log.warning("fault cleared: listening again on port %d", self.port)


@contextlib.asynccontextmanager
async def running(settings: SimSettings) -> AsyncIterator[SimServer]:
    """Run a simulator in the current event loop (for tests); stops it on exit."""
    server = SimServer(settings)
    task = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        await task
        raise RuntimeError("simulator exited during start-up")
    try:
        yield server
    finally:
        server.stop()
        await task
