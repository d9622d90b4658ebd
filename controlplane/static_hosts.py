"""Ollama hosts without an agent: the control plane polls them itself from a static list.

For a host where nothing can be installed. The list is YAML (``EXAMPLE`` below); the first
HOPS's ``hosts.yml`` (a list of URLs, or of mappings with ``url``) loads unchanged.

Each host becomes a Node like any agent's: the same snapshot (from /api/version, /api/tags and
/api/ps, sent to the fleet only when it changed), the same routing, breaker and health handling
(unreachable means unhealthy, not gone), and pull/unload/preload commands run by the poller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import yaml
from hops.v1 import agent_pb2

from controlplane.commands import AgentSession
from controlplane.errors import ControlPlaneError
from controlplane.fleet import Fleet
from controlplane.validation import validate_hello
from hopscommon.fleet import Capacity, Gpu, GpuSource, Hello, Snapshot
from hopscommon.units import parse_bytes
from nodeagent.agent import execute, fingerprint, snapshot_of
from nodeagent.ollama import OllamaClient, OllamaState

log = logging.getLogger("hops.controlplane.static")

EXAMPLE = """\
hosts:
  - http://10.0.0.7:11434                    # node id "10.0.0.7-11434"
  - url: https://gpu-box.example:443
    name: gpu-box                            # node id; default from the URL
    headers: {Authorization: Bearer s3cr3t}  # sent on polls and on routed traffic
    labels: {zone: eu}                       # for label routing
    vram: 24GiB                              # GPU memory, for memory-aware routing
    num_parallel: 4                          # the host's OLLAMA_NUM_PARALLEL
    context_length: 8192                     # its OLLAMA_CONTEXT_LENGTH, where set
    max_in_flight: 0                         # 0: num_parallel x --queue-per-slot
    weight: 1.0
"""
KEYS = frozenset(
    {
        "url",
        "name",
        "headers",
        "labels",
        "vram",
        "num_parallel",
        "context_length",
        "max_in_flight",
        "weight",
    }
)
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class HostsFileError(ValueError):
    """The static hosts file cannot be used; the message says where and why."""


@dataclass(frozen=True, slots=True)
class StaticHost:
    node_id: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    vram_bytes: int = 0
    capacity: Capacity = field(default_factory=Capacity)
    weight: float = 1.0

    def hello(self) -> Hello:
        return Hello(
            node_id=self.node_id,
            ollama_url=self.url,
            labels=self.labels,
            capacity=self.capacity,
            instance_id=f"static:{self.url}",
            hostname="(polled by the control plane)",
            agent_version="static",
            weight=self.weight,
            upstream_headers=self.headers,
        )


def _node_id(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}-{parts.port or (443 if parts.scheme == 'https' else 80)}"


def _string_map(value: Any, what: str, where: str) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise HostsFileError(f"{where}: {what} must be a mapping of names to values")
    pairs = []
    for k, v in value.items():
        if not isinstance(k, str) or not k or isinstance(v, dict | list) or v is None:
            raise HostsFileError(f"{where}: {what} entry {k!r} must map a name to a plain value")
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if "\n" in text or "\r" in text:
            raise HostsFileError(f"{where}: {what} {k!r} must be one line")
        pairs.append((k, text))
    return tuple(sorted(pairs))


def _number(entry: dict[str, Any], key: str, default: float, where: str) -> float:
    """A number from 0 to 2**32 - 1: the capacities travel as uint32 (the admin RPCs show them)."""
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 2**32:
        most = 2**32 - 1
        raise HostsFileError(f"{where}: {key} must be a number from 0 to {most}, got {value!r}")
    return value


def parse_hosts(document: Any, source: str = "hosts file") -> list[StaticHost]:
    """The hosts in a parsed YAML document (``hosts:`` list or a bare list)."""
    entries = document.get("hosts") if isinstance(document, dict) else document
    if entries is None:
        return []
    if not isinstance(entries, list):
        raise HostsFileError(f"{source}: expected a list under 'hosts'")
    hosts: list[StaticHost] = []
    for i, raw in enumerate(entries):
        where = f"{source}: host #{i + 1}"
        entry: dict[str, Any] = {"url": raw} if isinstance(raw, str) else raw
        if not isinstance(entry, dict):
            raise HostsFileError(f"{where}: expected a URL or a mapping with 'url'")
        unknown = sorted(set(entry) - KEYS)
        if unknown:
            raise HostsFileError(f"{where}: unknown keys {unknown}; known: {sorted(KEYS)}")
        url = str(entry.get("url") or "").rstrip("/")
        vram = entry.get("vram", 0)
        try:
            vram_bytes = parse_bytes(str(vram)) if vram else 0
        except ValueError as exc:
            raise HostsFileError(f"{where}: vram: {exc}") from None
        host = StaticHost(
            node_id=str(entry.get("name") or (_node_id(url) if url else "")),
            url=url,
            headers=_string_map(entry.get("headers"), "headers", where),
            labels=_string_map(entry.get("labels"), "labels", where),
            vram_bytes=vram_bytes,
            capacity=Capacity(
                num_parallel=max(1, int(_number(entry, "num_parallel", 1, where))),
                max_in_flight=int(_number(entry, "max_in_flight", 0, where)),
                context_length=int(_number(entry, "context_length", 0, where)),
            ),
            weight=float(_number(entry, "weight", 1.0, where)) or 1.0,
        )
        for name, value in host.headers:
            if not HEADER_NAME.fullmatch(name) or not value.isascii():
                raise HostsFileError(f"{where}: header {name!r} needs a token name and ASCII value")
        try:
            validate_hello(host.hello())
        except ControlPlaneError as exc:
            raise HostsFileError(f"{where}: {exc}") from None
        if any(h.node_id == host.node_id for h in hosts):
            raise HostsFileError(f"{where}: node id {host.node_id!r} is used twice")
        hosts.append(host)
    return hosts


def load_hosts(path: str) -> list[StaticHost]:
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except OSError as exc:
        raise HostsFileError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise HostsFileError(f"{path} is not valid YAML: {exc}") from None
    return parse_hosts(document, path)


class StaticPoller:
    """Polls one host and speaks for it in the fleet, as its agent would."""

    def __init__(self, host: StaticHost, fleet: Fleet, interval: float) -> None:
        self.host = host
        self.fleet = fleet
        self.interval = interval
        self.ollama = OllamaClient(host.url, headers=dict(host.headers))
        self.session = AgentSession(host.node_id)
        self._last_good = OllamaState(healthy=False)
        self._fingerprint: tuple[Any, ...] | None = None
        self._sequence = 0
        self._poke = asyncio.Event()

    def observe(self, state: OllamaState) -> Snapshot:
        if state.healthy:
            self._last_good = state
        used = sum(m.size_vram_bytes for m in state.loaded)
        vram = self.host.vram_bytes
        gpus = (
            (Gpu(0, "declared", total_bytes=vram, free_bytes=max(vram - used, 0)),) if vram else ()
        )
        return snapshot_of(
            state, self._last_good, gpus, GpuSource.STATIC if vram else GpuSource.NONE
        )

    async def poll_once(self) -> bool:
        """Probe the host; hand the fleet a new snapshot when something changed."""
        snapshot = self.observe(await self.ollama.probe())
        mark = fingerprint(snapshot)
        if mark == self._fingerprint:
            self.fleet.seen(self.host.node_id, self.session)
            return False
        if not snapshot.ollama_healthy and self._fingerprint is not None:
            log.warning(
                "static host unhealthy node=%s error=%s", self.host.node_id, snapshot.ollama_error
            )
        self._fingerprint = mark
        self._sequence += 1
        self.fleet.update(
            self.host.node_id, self.session, replace(snapshot, sequence=self._sequence)
        )
        return True

    async def run(self) -> None:
        """Attach, then poll and run commands until cancelled; detach on the way out."""
        try:
            self.fleet.attach(self.host.hello(), self.session)
        except ControlPlaneError as exc:
            log.error("static host refused node=%s reason=%s", self.host.node_id, exc)
            return
        log.info("static host attached node=%s url=%s", self.host.node_id, self.host.url)
        commands = asyncio.create_task(self._commands())
        try:
            while True:
                await self.poll_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), self.interval)
                self._poke.clear()
        finally:
            commands.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await commands
            self.session.close("control plane stopping")
            self.fleet.detach(self.host.node_id, self.session)
            await self.ollama.close()

    async def _commands(self) -> None:
        """What admins send to this node arrives in the session's outbox, as for an agent; each
        command runs on its own, so a long pull does not hold up an unload."""
        running: set[asyncio.Task[None]] = set()
        try:
            while True:
                frame = await self.session.outbox.get()
                if frame.WhichOneof("message") == "command":
                    task = asyncio.create_task(self._run(frame.command))
                    running.add(task)
                    task.add_done_callback(running.discard)
        finally:
            for task in running:
                task.cancel()

    async def _run(self, command: agent_pb2.Command) -> None:
        try:
            async for message in execute(self.ollama, command, self.poll_once):
                event = message.progress if message.HasField("progress") else message.result
                self.session.deliver(event)
        finally:
            self._poke.set()


async def run_all(hosts: list[StaticHost], fleet: Fleet, interval: float) -> None:
    """Poll every host until cancelled."""
    pollers = [StaticPoller(h, fleet, interval) for h in hosts]
    await asyncio.gather(*(p.run() for p in pollers))
