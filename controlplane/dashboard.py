"""The read-only dashboard on the control plane's HTTP port: ``/`` serves one page, which polls
``/api/state`` (the admin view of every node, as AdminService.ListNodes gives it, learned
speeds included, plus recent routing decisions) and redraws."""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

from google.protobuf.json_format import MessageToDict

from controlplane import convert
from controlplane.fleet import model_key
from controlplane.router import Router
from hopscommon.fleet import LoadedModel

PAGE = resources.files("controlplane").joinpath("dashboard.html")


def page() -> bytes:
    return PAGE.read_bytes()


def state(router: Router) -> dict[str, Any]:
    """Everything the page shows, JSON-ready. Node ids and model names are data, never markup:
    the page inserts them as text."""
    fleet = router.fleet
    learned = convert.learned_by_node(router.learning.learned)
    nodes = []
    for n in sorted(fleet.nodes.values(), key=lambda n: n.node_id):
        view = MessageToDict(
            convert.node_pb(n, fleet, learned.get(n.node_id, ())),
            always_print_fields_with_no_presence=True,
        )
        in_flight = fleet.leases.by_model(n.node_id)
        view["loadedView"] = [_loaded(router, n.node_id, m, in_flight) for m in n.snapshot.loaded]
        nodes.append(view)
    return {
        "generatedAt": time.time(),
        "version": fleet.version,
        "policy": router.policy.name,
        "openLeases": len(fleet.leases),
        "nodes": nodes,
        "recent": [
            {
                "at": d.at,
                "model": d.model,
                "status": d.status,
                "node": d.node_id,
                "reason": d.reason,
            }
            for d in reversed(router.recent)
        ],
    }


def _loaded(
    router: Router, node_id: str, model: LoadedModel, in_flight: dict[str, int]
) -> dict[str, Any]:
    """One loaded model's row: its memory, requests in flight, and the decode and prompt
    speeds learned for it there (None while not measured)."""
    key = model_key(model.name)
    learned = router.learning.learned.get((node_id, key))
    return {
        "name": model.name,
        "sizeVramBytes": model.size_vram_bytes,
        "inFlight": in_flight.get(key, 0),
        "decodeTps": _tps(learned.decode_tps) if learned else None,
        "promptTps": _tps(learned.prompt_tps) if learned else None,
    }


def _tps(tps: float) -> float | None:
    return round(tps, 1) if tps else None
