"""Making models on a host: blob uploads (``HEAD``/``POST /api/blobs/{digest}``) and
``POST /api/create`` from an installed model (``from``) or from uploaded blobs (``files``), with
Ollama's progress lines.

A blob is kept as its digest and size (the bytes are checked, not stored). A model made from
files is sized by them and otherwise a generic llama-family completion model: the simulator does
not read GGUF metadata.

A model made from another keeps its weights, so its runner too (Ollama's scheduler keeps runners
by weights file): with only SYSTEM, TEMPLATE, LICENSE, MESSAGE or per-request PARAMETERs (stop
words, temperature) added, the base's loaded runner serves it. PARAMETERs that set how the runner
loads (num_ctx, num_gpu, ...) are its requests' defaults, and adapters its own: asking other ones
than the loaded runner's reloads it, as Ollama does.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from hopscommon import names
from hopscommon.runner_options import runner_options, with_defaults
from ollamasim.catalogue import parse_model_arg
from ollamasim.errors import BadRequest, NotFound
from ollamasim.host import Host
from ollamasim.wire import NDJSON_TYPE, dumps, json_response, read_json, typed

DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
LAYERS = ("system", "template", "parameters", "license", "messages", "adapters")


def _digest(raw: str) -> str:
    """``sha256:<hex>`` (lower-case) for a valid blob digest, else BadRequest."""
    match = DIGEST.fullmatch(raw)
    if match is None:
        raise BadRequest("invalid digest format")
    return "sha256:" + match.group(1).lower()


async def blob_exists(request: Request, host: Host) -> Response:
    found = _digest(request.path_params["digest"]) in host.blobs
    return Response(b"", status_code=200 if found else 404)


async def upload_blob(request: Request, host: Host) -> Response:
    digest = _digest(request.path_params["digest"])
    if digest in host.blobs:
        return Response(b"", status_code=200)
    hasher, size = hashlib.sha256(), 0
    async for chunk in request.stream():
        hasher.update(chunk)
        size += len(chunk)
    if "sha256:" + hasher.hexdigest() != digest:
        raise BadRequest("digest mismatch")
    host.blobs[digest] = size
    return Response(b"", status_code=201)


async def create(request: Request, host: Host) -> Response:
    data = await read_json(request, "CreateRequest")
    raw = typed(data, "model", str, "CreateRequest") or typed(data, "name", str, "CreateRequest")
    if not raw:
        raise BadRequest("model is required")
    shown = names.normalize(raw)
    if shown is None:
        raise BadRequest("invalid model name")
    source = typed(data, "from", str, "CreateRequest") or ""
    files = typed(data, "files", dict, "CreateRequest") or {}
    statuses: list[dict[str, Any]] = []
    if source:
        base = host.find(source)
        if base is None:
            raise NotFound(f"model '{source}' not found")
        spec = base.spec
        statuses.append({"status": f"using existing layer sha256:{spec.digest}"})
    elif files:
        digests = [_digest(str(d)) for d in files.values()]
        missing = [d for d in digests if d not in host.blobs]
        if missing:
            raise BadRequest(f"blob {missing[0]} not found: upload it first")
        spec = parse_model_arg(f"{shown}={sum(host.blobs[d] for d in digests)}B")
        spec = replace(spec, weights=digests[0].removeprefix("sha256:"))
        statuses.append({"status": "parsing GGUF"})
        statuses += [{"status": f"using existing layer {d}"} for d in digests]
    else:
        raise BadRequest("neither 'from' nor 'files' was specified")
    # New layers make a new manifest, on the same weights.
    if any(data.get(key) for key in LAYERS):
        lines = _modelfile_lines(data, host)
        digest = hashlib.sha256(f"{spec.digest}/{shown}/{dumps(data)}".encode()).hexdigest()
        parameters = typed(data, "parameters", dict, "CreateRequest") or {}
        num_ctx = parameters.get("num_ctx")
        if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx <= 0:
            num_ctx = spec.num_ctx
        adapters = (typed(data, "adapters", dict, "CreateRequest") or {}).values()
        spec = replace(
            spec,
            digest=digest,
            lines=spec.lines + lines,
            system=typed(data, "system", str, "CreateRequest") or spec.system,
            num_ctx=num_ctx,
            options=with_defaults(spec.options, runner_options(parameters)),
            adapters=spec.adapters + tuple(_digest(str(d)) for d in adapters),
        )
        statuses.append({"status": f"creating new layer sha256:{digest}"})
    statuses += [{"status": "writing manifest"}, {"status": "success"}]
    host.install(spec.renamed(shown))
    if typed(data, "stream", bool, "CreateRequest") is False:
        return json_response({"status": "success"})
    return StreamingResponse(
        iter([(dumps(line) + "\n").encode() for line in statuses]), media_type=NDJSON_TYPE
    )


def _modelfile_lines(data: dict[str, Any], host: Host) -> tuple[str, ...]:
    """The Modelfile lines a create's own layers stand for, as /api/show writes them after the
    FROM, ADAPTER and projector lines (native._modelfile writes those from the spec)."""
    lines = []
    for raw in (typed(data, "adapters", dict, "CreateRequest") or {}).values():
        digest = _digest(str(raw))
        if digest not in host.blobs:
            raise BadRequest(f"blob {digest} not found: upload it first")
    for key in ("template", "system"):
        text = typed(data, key, str, "CreateRequest")
        if text:
            lines.append(f'{key.upper()} """{text}"""')
    for name, value in (typed(data, "parameters", dict, "CreateRequest") or {}).items():
        for one in value if isinstance(value, list) else [value]:
            shown = dumps(one) if isinstance(one, str) else str(one).lower()
            lines.append(f"PARAMETER {name} {shown}")
    return tuple(lines)
