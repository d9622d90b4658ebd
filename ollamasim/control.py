"""The simulator's own control routes under /_sim (outside Ollama's namespace): counters that tests
assert on, and faults switched at run time."""

from __future__ import annotations

import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from ollamasim.errors import BadRequest
from ollamasim.faults import FaultSpec
from ollamasim.host import Host
from ollamasim.wire import json_response


def _runner_view(host: Host) -> list[dict[str, Any]]:
    scale = host.settings.time_scale
    return [
        {
            "name": r.spec.name,
            "ready": r.ready.is_set(),
            "refs": r.refs,
            "active": r.active,
            "num_parallel": r.num_parallel,
            "size": r.size,
            "size_vram": r.size_vram,
            "keep_alive_s": r.keep_alive,
            "expires_in_s": round(r.expires_at(scale) - time.time(), 3),
        }
        for r in host.scheduler.runners.values()
    ]


async def stats(request: Request, host: Host) -> Response:
    active = host.faults.active()
    return json_response(
        {
            **host.stats.to_json(),
            "pending_loads": host.scheduler.pending,
            "memory_used": host.scheduler.memory_used(),
            "memory_total": host.scheduler.memory_bytes,
            "runners": _runner_view(host),
            "fault": active.to_json() if active else None,
            "faults_injected": dict(host.faults.injected),
        }
    )


async def reset_stats(request: Request, host: Host) -> Response:
    host.stats.reset()
    host.faults.injected.clear()
    return json_response({"ok": True})


async def get_fault(request: Request, host: Host) -> Response:
    active = host.faults.active()
    return json_response({"fault": active.to_json() if active else None})


async def put_fault(request: Request, host: Host) -> Response:
    try:
        data = json.loads(await request.body() or b"null")
        spec = FaultSpec.from_json(data if isinstance(data, dict) else {})
    except (json.JSONDecodeError, ValueError) as exc:
        raise BadRequest(f"bad fault: {exc}") from None
    host.faults.set(spec)
    if spec.mode == "refuse" and host.refuse_connections is not None:
        host.refuse_connections(spec.duration_s)
    return json_response({"fault": spec.to_json()})


async def delete_fault(request: Request, host: Host) -> Response:
    host.faults.set(None)
    if host.refuse_connections is not None:
        host.refuse_connections(0.0)
    return json_response({"fault": None})


async def config(request: Request, host: Host) -> Response:
    s = host.settings
    return json_response(
        {
            "profile": s.profile,
            "gpu_name": host.profile.gpu_name,
            "vram": host.vram,
            "ram": host.ram,
            "models": sorted(m.spec.name for m in host.installed.values()),
            "time_scale": s.time_scale,
            "num_parallel": s.num_parallel,
            "max_loaded_models": host.scheduler.max_loaded,
            "max_queue": s.max_queue,
            "keep_alive_s": s.keep_alive,
            "seed": s.seed,
            "version": s.version,
        }
    )
