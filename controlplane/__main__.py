"""``python -m controlplane``: parse settings, build, serve until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

import uvloop

from controlplane.server import ControlPlane
from controlplane.settings import load_settings


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )

    async def serve() -> None:
        plane = ControlPlane(settings)
        await plane.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        metrics = (
            f" metrics on http://{settings.metrics_listen[0]}:{plane.metrics_port}/metrics"
            if (settings.metrics_listen)
            else ""
        )
        port = plane.router_servicer.route_port
        route = f" route socket on port {port}" if port else " route socket off"
        print(
            f"controlplane serving on {plane.address} policy={settings.policy}{route}{metrics}",
            flush=True,
        )
        await stop.wait()
        await plane.stop(grace=5.0)

    uvloop.run(serve())


if __name__ == "__main__":
    main()
