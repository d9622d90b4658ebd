"""The agent: polls Ollama and the GPUs, keeps the current snapshot, fans it out to one Link per
control plane, and runs the commands those control planes send."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import psutil
from hops.v1 import agent_pb2, fleet_pb2

from hopscommon.fleet import Capacity, Gpu, GpuSource, Hello, Snapshot
from hopscommon.fleet_convert import hello_pb, snapshot_pb
from hopscommon.ollama_json import count
from nodeagent import VERSION
from nodeagent.gpu import GpuProbe
from nodeagent.link import Link
from nodeagent.metrics import AgentMetrics
from nodeagent.ollama import OllamaClient, OllamaError, OllamaState
from nodeagent.settings import AgentSettings

log = logging.getLogger("hops.nodeagent")

EXPIRY_BUCKET_S = 15.0
GPU_FREE_BUCKET = 256 * 1024**2
MEMORY_BUCKET = 512 * 1024**2


def fingerprint(s: Snapshot) -> tuple[Any, ...]:
    """What counts as a change worth sending. Expiry times move on every poll while a model is
    busy, and free memory jitters, so both are compared coarsely."""
    return (
        s.ollama_healthy,
        s.ollama_error[:40],
        s.ollama_version,
        tuple(
            sorted(
                (
                    m.name,
                    m.digest,
                    m.size_bytes,
                    m.runner_id,
                    m.num_ctx,
                    m.runner_options,
                    m.adapters_id,
                )
                for m in s.installed
            )
        ),
        tuple(
            sorted(
                (
                    m.name,
                    m.size_bytes,
                    m.size_vram_bytes,
                    m.context_length,
                    int(m.expires_at // EXPIRY_BUCKET_S),
                )
                for m in s.loaded
            )
        ),
        s.gpu_source,
        tuple((g.index, g.name, g.total_bytes, g.free_bytes // GPU_FREE_BUCKET) for g in s.gpus),
        s.system_memory_total_bytes,
        s.system_memory_free_bytes // MEMORY_BUCKET,
    )


def snapshot_of(
    state: OllamaState,
    last_good: OllamaState,
    gpus: tuple[Gpu, ...],
    source: GpuSource,
    memory_total: int = 0,
    memory_free: int = 0,
) -> Snapshot:
    """What a node reports, from one probe of its Ollama. While Ollama does not answer, its disk
    still holds the last models seen: the fleet should say "no healthy host" for them, not "no
    such model"."""
    return Snapshot(
        taken_at=time.time(),
        ollama_healthy=state.healthy,
        ollama_error=state.error,
        ollama_version=state.version or last_good.version,
        installed=state.installed if state.healthy else last_good.installed,
        loaded=state.loaded,
        gpus=gpus,
        gpu_source=source,
        system_memory_total_bytes=memory_total,
        system_memory_free_bytes=memory_free,
    )


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.ollama = OllamaClient(settings.ollama_url)
        self.gpus = GpuProbe(settings.gpu, settings.gpu_memory, settings.gpu_name)
        self.hello = Hello(
            node_id=settings.effective_node_id,
            ollama_url=settings.effective_advertise_url,
            labels=tuple(sorted(settings.label)),
            capacity=Capacity(
                num_parallel=settings.num_parallel,
                max_loaded_models=settings.max_loaded_models,
                max_queue=settings.max_queue,
                max_in_flight=settings.max_in_flight,
                context_length=settings.context_length,
            ),
            instance_id=os.urandom(8).hex(),
            hostname=socket.gethostname(),
            agent_version=VERSION,
            weight=settings.weight,
        )
        self.hello_pb: agent_pb2.Hello = hello_pb(self.hello)
        self.current: fleet_pb2.NodeSnapshot | None = None
        self.observed: Snapshot | None = None  # the last observation, sent or not
        self.published = 0
        self.metrics = AgentMetrics()
        self.metrics.watch(self)
        self._last_good = OllamaState(healthy=False)
        self._fingerprint: tuple[Any, ...] | None = None
        self._sequence = 0
        self._poke = asyncio.Event()
        self.links = [Link(address, self) for address in settings.controlplane]
        self._tasks: set[asyncio.Task[None]] = set()

    async def observe(self) -> Snapshot:
        state = await self.ollama.probe()
        source, gpus = await self.gpus.probe(sum(m.size_vram_bytes for m in state.loaded))
        memory = psutil.virtual_memory()
        if state.healthy:
            self._last_good = state
        return snapshot_of(state, self._last_good, gpus, source, memory.total, memory.available)

    async def poll_once(self) -> bool:
        """Observe; when something changed, publish a new snapshot to every link. True if sent."""
        with self.metrics.poll_seconds.time():
            observed = await self.observe()
        self.observed = observed
        mark = fingerprint(observed)
        if mark == self._fingerprint:
            return False
        if self._fingerprint is not None and not observed.ollama_healthy:
            log.warning("ollama unhealthy: %s", observed.ollama_error)
        self._fingerprint = mark
        self._sequence += 1
        message = snapshot_pb(observed)
        message.sequence = self._sequence
        self.current = message
        for link in self.links:
            link.offer_snapshot(message)
        self.published += 1
        return True

    def poke(self) -> None:
        """Poll again now (after a command changed what Ollama holds)."""
        self._poke.set()

    async def run(self) -> None:
        """Poll forever and keep every link connected; cancel to stop."""
        for link in self.links:
            self._spawn(link.run())
        try:
            while True:
                await self.poll_once()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._poke.wait(), self.settings.poll_interval)
                self._poke.clear()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.ollama.close()

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def execute(self, command: agent_pb2.Command) -> AsyncIterator[agent_pb2.ConnectRequest]:
        """Run one command against the local Ollama: progress frames, then a result frame."""
        ok = False
        try:
            async for frame in execute(self.ollama, command, self.poll_once):
                ok = frame.HasField("result") and frame.result.ok
                yield frame
        finally:
            self.metrics.commands.labels(command.WhichOneof("kind"), "ok" if ok else "failed").inc()
            self.poke()


async def execute(
    ollama: OllamaClient, command: agent_pb2.Command, refresh: Callable[[], Awaitable[object]]
) -> AsyncIterator[agent_pb2.ConnectRequest]:
    """Run ``command`` against ``ollama``: progress frames, then a result frame. ``refresh`` runs
    after a success, so the control plane learns the new state before the result. Shared by the
    agent and by the control plane's poller of hosts without an agent."""
    cid = command.command_id
    kind = command.WhichOneof("kind")
    try:
        if kind == "pull":
            async for p in ollama.pull(command.pull.model, command.pull.insecure):
                yield agent_pb2.ConnectRequest(
                    progress=agent_pb2.CommandProgress(
                        command_id=cid,
                        status=str(p.get("status", "")),
                        digest=str(p.get("digest", "")),
                        total=count(p.get("total")) or 0,
                        completed=count(p.get("completed")) or 0,
                    )
                )
        elif kind == "unload":
            await ollama.unload(command.unload.model)
        elif kind == "preload":
            await ollama.preload(command.preload.model, command.preload.keep_alive)
        else:
            raise OllamaError(f"unknown command {kind!r}")
    except OllamaError as exc:
        log.warning("command failed id=%s kind=%s error=%s", cid, kind, exc)
        yield agent_pb2.ConnectRequest(
            result=agent_pb2.CommandResult(command_id=cid, ok=False, error=str(exc))
        )
        return
    await refresh()
    yield agent_pb2.ConnectRequest(result=agent_pb2.CommandResult(command_id=cid, ok=True))
