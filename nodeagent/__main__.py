"""``python -m nodeagent``: parse settings, build, run until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import uvloop

from hopscommon.http_admin import AdminHttp
from hopscommon.net import connect_host
from nodeagent.agent import Agent
from nodeagent.settings import load_settings


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll is noise

    async def run() -> None:
        agent = Agent(settings)
        http = (
            AdminHttp(settings.metrics_listen, agent.metrics.registry)
            if settings.metrics_listen
            else None
        )
        served = http.start() if http else None
        task = asyncio.create_task(agent.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        print(
            f"nodeagent node={agent.hello.node_id} ollama={settings.ollama_url} "
            f"controlplanes={','.join(settings.controlplane)}"
            + (f" metrics on http://{connect_host(http.host)}:{http.port}/metrics" if http else ""),
            flush=True,
        )
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if http is not None and served is not None:
            http.stop()
            await served

    uvloop.run(run())


if __name__ == "__main__":
    main()
