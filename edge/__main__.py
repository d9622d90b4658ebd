"""``python -m edge``: parse settings, build, serve until SIGTERM/SIGINT (uvicorn handles them:
it stops accepting, lets open streams finish within the grace period, then exits).

With ``--workers N`` the port is bound once, then N-1 worker processes are forked before any event
loop or gRPC channel exists; every process accepts on the shared socket and keeps its own
control-plane session. The first process stops the others (SIGTERM) when it stops.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from types import FrameType

import uvloop

from edge.server import Edge
from edge.settings import EdgeSettings, load_settings
from hopscommon.net import bind

log = logging.getLogger("hops.edge")


def serve(
    settings: EdgeSettings,
    sock: socket.socket,
    announce: bool,
    on_signal: Callable[[int], None] | None = None,
) -> None:
    async def run() -> None:
        edge = Edge(settings, sock)
        if on_signal is not None:  # pass SIGTERM/SIGINT on as soon as uvicorn gets it
            handle_exit = edge.server.handle_exit

            def forward(sig: int, frame: FrameType | None) -> None:
                on_signal(sig)
                handle_exit(sig, frame)

            edge.server.handle_exit = forward  # type: ignore[method-assign]
        if announce:
            workers = f" workers={settings.workers}" if settings.workers > 1 else ""
            print(
                f"edge listening on {edge.url} controlplane={','.join(settings.controlplane)}"
                + workers,
                flush=True,
            )
        await edge.serve()

    uvloop.run(run())


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s pid=%(process)d %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the edge logs one line per request
    sock = bind(*settings.listen, backlog=4096)
    children: list[int] = []
    for index in range(1, settings.workers):
        pid = os.fork()
        if pid == 0:
            worker = settings
            if settings.edge_id:  # an explicit id must stay unique per control-plane session
                worker = dataclasses.replace(settings, edge_id=f"{settings.edge_id}-w{index}")
            try:
                serve(worker, sock, announce=False)
            finally:
                os._exit(0)
        children.append(pid)

    def stop_children(sig: int = signal.SIGTERM, _frame: object = None) -> None:
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    if children:
        # uvicorn re-raises the signal once it has shut down; here that must not end this process
        # before its workers are reaped.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop_children)
    try:
        serve(settings, sock, announce=True, on_signal=stop_children if children else None)
    finally:
        stop_children()
        for pid in children:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
