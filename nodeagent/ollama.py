"""The agent's view of its local Ollama: probes for the snapshot, and the commands it runs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import httpx

from hopscommon import runner_options
from hopscommon.fleet import Details, InstalledModel, LoadedModel
from hopscommon.ollama_json import count
from hopscommon.runner_options import RunnerOptions

# Models whose runner is not known yet are read with /api/show, this many per probe at most (a
# host with many models learns them over a few polls rather than delaying one by as many shows).
SHOWS_PER_PROBE = 4
_BLOB = re.compile(r"sha256[-:]([0-9a-fA-F]{64})")


class OllamaError(Exception):
    """Ollama answered with an error or could not be reached."""


@dataclass(frozen=True, slots=True)
class OllamaState:
    healthy: bool
    error: str = ""
    version: str = ""
    installed: tuple[InstalledModel, ...] = ()
    loaded: tuple[LoadedModel, ...] = ()


def parse_time(text: Any) -> float:
    """Go RFC 3339 (with nanoseconds and an offset) to epoch seconds; 0 when missing or odd."""
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return 0.0


def _details(raw: Any) -> Details:
    d = raw if isinstance(raw, dict) else {}
    families = d.get("families")
    return Details(
        family=str(d.get("family") or ""),
        parameter_size=str(d.get("parameter_size") or ""),
        quantization_level=str(d.get("quantization_level") or ""),
        format=str(d.get("format") or ""),
        families=tuple(str(f) for f in families) if isinstance(families, list) else (),
        parent_model=str(d.get("parent_model") or ""),
        context_length=_uint32(d.get("context_length")),
        embedding_length=_uint32(d.get("embedding_length")),
    )


def _uint32(value: Any) -> int:
    """A non-negative integer field, 0 when absent or not one (a uint32 on the wire)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return min(max(int(value), 0), 2**32 - 1)


def _capabilities(value: Any) -> tuple[str, ...]:
    return tuple(c for c in value if isinstance(c, str)) if isinstance(value, list) else ()


def _name(entry: dict[str, Any]) -> str:
    return str(entry.get("model") or entry.get("name") or "")


def parse_tags(body: Any) -> tuple[InstalledModel, ...]:
    models = body.get("models") if isinstance(body, dict) else None
    return tuple(
        InstalledModel(
            name=_name(m),
            digest=str(m.get("digest") or ""),
            size_bytes=count(m.get("size")) or 0,
            modified_at=parse_time(m.get("modified_at")),
            details=_details(m.get("details")),
            capabilities=_capabilities(m.get("capabilities")),
        )
        for m in (models or [])
        if isinstance(m, dict) and _name(m)
    )


def parse_ps(body: Any) -> tuple[LoadedModel, ...]:
    models = body.get("models") if isinstance(body, dict) else None
    return tuple(
        LoadedModel(
            name=_name(m),
            digest=str(m.get("digest") or ""),
            size_bytes=count(m.get("size")) or 0,
            size_vram_bytes=count(m.get("size_vram")) or 0,
            expires_at=parse_time(m.get("expires_at")),
            context_length=_uint32(m.get("context_length")),
            details=_details(m.get("details")),
        )
        for m in (models or [])
        if isinstance(m, dict) and _name(m)
    )


@dataclass(frozen=True, slots=True)
class Runs:
    """What a model's modelfile says of the runner that serves it."""

    runner_id: str = ""  # a hash of its weights blob; "" = not known
    num_ctx: int = 0  # PARAMETER num_ctx; 0 = none
    options: RunnerOptions = ()  # the other PARAMETERs that set how the runner loads
    adapters_id: str = ""  # a hash of its adapters and projectors; "" = none


def read_modelfile(modelfile: str) -> Runs:
    """From the modelfile `/api/show` returns. Ollama's scheduler (server/sched.go) keys runners
    by the weights file, and reuses one for a request with the same adapters, projectors and
    runner options, the modelfile's PARAMETERs being a request's defaults; it reloads the
    runner for one asking other ones. So the runner_id is a hash of the weights (show writes
    them as the first FROM), and the rest come apart: the ADAPTER blobs and projectors (the
    FROM blobs after the weights) as a hash in their order, and the PARAMETERs that set how the
    runner loads. SYSTEM, TEMPLATE, stop words and the like do not count. No runner_id when a
    FROM or ADAPTER names no blob (nothing to go by)."""
    weights = ""
    over: list[str] = []  # adapters and projectors, in order
    loads: dict[str, int | bool] = {}
    quoted = False
    for line in modelfile.splitlines():
        inside = quoted
        if line.count('"""') % 2:  # a multi-line value (SYSTEM, TEMPLATE) opens or closes
            quoted = not quoted
        if inside:
            continue
        command, _, rest = line.strip().partition(" ")
        command = command.upper()
        if command in ("FROM", "ADAPTER"):
            blob = _BLOB.search(rest)
            if blob is None:
                return Runs()
            if command == "FROM" and not weights:
                weights = blob.group(1).lower()
            else:
                over.append(f"{command} {blob.group(1).lower()}")
        elif command == "PARAMETER":
            name, _, text = rest.strip().partition(" ")
            value = _parameter(text.strip().strip('"'))
            if name.lower() in runner_options.LOAD_PARAMETERS and value is not None:
                loads[name.lower()] = value
    if not weights:
        return Runs()
    num_ctx = loads.pop("num_ctx", 0)
    if isinstance(num_ctx, bool) or not 0 < num_ctx < 2**31:  # the wire's uint32 holds it
        num_ctx = 0
    return Runs(
        hashlib.sha256(weights.encode()).hexdigest(),
        num_ctx,
        runner_options.in_effect(runner_options.runner_options(loads)),
        hashlib.sha256("\n".join(over).encode()).hexdigest() if over else "",
    )


def _parameter(text: str) -> int | bool | None:
    """A PARAMETER's value as Ollama's show writes a number or a flag; None for anything else."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return None


class OllamaClient:
    """One pooled async HTTP client to the local Ollama."""

    def __init__(
        self,
        base_url: str,
        *,
        probe_timeout: float = 3.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(probe_timeout, read=probe_timeout),
            headers=headers,
        )
        self._runs: dict[str, Runs] = {}  # manifest digest -> what its modelfile says

    async def close(self) -> None:
        await self.http.aclose()

    async def _get(self, path: str) -> Any:
        response = await self.http.get(path)
        response.raise_for_status()
        return response.json()

    async def probe(self) -> OllamaState:
        """/api/version, /api/tags and /api/ps at once; unhealthy if any of them fails."""
        try:
            version, tags, ps = await asyncio.gather(
                self._get("/api/version"), self._get("/api/tags"), self._get("/api/ps")
            )
        except (httpx.HTTPError, ValueError, RecursionError) as exc:
            return OllamaState(healthy=False, error=f"{type(exc).__name__}: {exc}"[:300])
        return OllamaState(
            healthy=True,
            version=str(version.get("version", "")) if isinstance(version, dict) else "",
            installed=await self._with_runner_ids(parse_tags(tags)),
            loaded=parse_ps(ps),
        )

    async def _with_runner_ids(
        self, installed: tuple[InstalledModel, ...]
    ) -> tuple[InstalledModel, ...]:
        """``installed`` with what each model's modelfile says of its runner, reading the
        modelfiles of a few models not read before (by manifest digest: a new pull or create
        has a new one). A show that fails on the way or with a server error is tried again at
        the next probe; one refused with a 4xx is not."""
        first_name: dict[str, str] = {}
        for m in installed:
            if m.digest:
                first_name.setdefault(m.digest, m.name)
        unread = [d for d in first_name if d not in self._runs][:SHOWS_PER_PROBE]
        read = await asyncio.gather(*(self._read_modelfile(first_name[d]) for d in unread))
        known = {d: self._runs[d] for d in first_name if d in self._runs}
        known.update((d, r) for d, r in zip(unread, read, strict=True) if r is not None)
        self._runs = known  # forgets models no longer installed
        return tuple(_with_runs(m, known.get(m.digest)) for m in installed)

    async def _read_modelfile(self, model: str) -> Runs | None:
        try:
            response = await self.http.post("/api/show", json={"model": model})
        except httpx.HTTPError:
            return None
        if response.status_code >= 500:
            return None
        if response.status_code != 200:
            return Runs()
        try:
            body = response.json()
        except (ValueError, RecursionError):
            return Runs()
        modelfile = body.get("modelfile") if isinstance(body, dict) else None
        return read_modelfile(modelfile) if isinstance(modelfile, str) else Runs()

    async def pull(self, model: str, insecure: bool = False) -> AsyncIterator[dict[str, Any]]:
        """Progress lines of /api/pull; raises OllamaError on an error line or status."""
        body = {"model": model, "insecure": insecure, "stream": True}
        timeout = httpx.Timeout(10.0, read=None)
        try:
            async with self.http.stream("POST", "/api/pull", json=body, timeout=timeout) as resp:
                if resp.status_code != 200:
                    raise OllamaError(_error_text(await resp.aread(), resp.status_code))
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    try:
                        progress = json.loads(line)
                    except (ValueError, RecursionError):
                        progress = None
                    if not isinstance(progress, dict):
                        raise OllamaError(f"unreadable pull progress: {line[:200]!r}")
                    if "error" in progress:
                        raise OllamaError(str(progress["error"]))
                    yield progress
        except httpx.HTTPError as exc:
            raise OllamaError(f"{type(exc).__name__}: {exc}") from exc

    async def unload(self, model: str) -> None:
        await self._generate({"model": model, "keep_alive": 0})

    async def preload(self, model: str, keep_alive: str = "") -> None:
        body: dict[str, Any] = {"model": model}
        if keep_alive:
            body["keep_alive"] = _keep_alive_value(keep_alive)
        await self._generate(body)

    async def _generate(self, body: dict[str, Any]) -> None:
        try:
            response = await self.http.post(
                "/api/generate", json=body, timeout=httpx.Timeout(10.0, read=None)
            )
        except httpx.HTTPError as exc:
            raise OllamaError(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise OllamaError(_error_text(response.content, response.status_code))


def _with_runs(model: InstalledModel, runs: Runs | None) -> InstalledModel:
    if runs is None or not runs.runner_id:
        return model
    return replace(
        model,
        runner_id=runs.runner_id,
        num_ctx=runs.num_ctx,
        runner_options=runs.options,
        adapters_id=runs.adapters_id,
    )


def _keep_alive_value(text: str) -> Any:
    """A bare number is seconds for Ollama only as a JSON number, not as a string."""
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        return text


def _error_text(body: bytes, status: int) -> str:
    try:
        data = json.loads(body)
        if isinstance(data, dict) and "error" in data:
            return f"{status}: {data['error']}"
    except (ValueError, RecursionError):
        pass
    return f"{status}: {body[:200].decode(errors='replace')}"
