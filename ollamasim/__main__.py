"""``python -m ollamasim``: parse settings, build, serve."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import uvloop

from ollamasim.server import SimServer
from ollamasim.settings import load_settings


def main(argv: Sequence[str] | None = None) -> None:
    settings = load_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )

    async def serve() -> None:
        server = SimServer(settings)
        control = (
            f" control on http://127.0.0.1:{server.control_port}" if server.control_port else ""
        )
        print(f"ollamasim ({settings.profile}) listening on {server.url}{control}", flush=True)
        await server.serve()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
