"""``python -m edge``: parse settings, build, serve until SIGTERM/SIGINT (uvicorn handles them:
it stops accepting, lets open streams finish within the grace period, then exits)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvloop

from edge.server import Edge
from edge.settings import load_settings


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the edge logs one line per request

    async def serve() -> None:
        edge = Edge(settings)
        print(
            f"edge listening on {edge.url} controlplane={','.join(settings.controlplane)}",
            flush=True,
        )
        await edge.serve()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
