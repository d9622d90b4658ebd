"""The simulated Ollama scheduler: which models are resident, loading, evicting and expiring.

It follows server/sched.go where a load balancer can see the difference:
- runners are kept by weights file, not by name: a copy, or a model made FROM another with only
  its own SYSTEM or TEMPLATE, is served by the runner of whichever of them loaded first, which
  /api/ps lists under that one's name; one with other adapters, or whose PARAMETERs (a
  request's defaults) ask other runner options, reloads that runner;
- a request for a loaded model takes the fast path and never queues for the scheduler;
- any other request waits in the pending queue, bounded by OLLAMA_MAX_QUEUE (503 beyond it), and
  loads happen one at a time in arrival order;
- room is made by evicting idle runners (shortest keep-alive, then least recently used); a busy
  runner is never evicted: the load waits until one goes idle;
- a model too big for free memory on an empty GPU is split between GPU and CPU;
- each runner has OLLAMA_NUM_PARALLEL slots (one for embedding-only models and a few
  architectures); extra requests wait for a slot without limit;
- keep-alive starts when a runner goes idle; 0 unloads at once, negative never;
- a load belongs to the request that started it: if that request goes away first, the load
  stops and nothing stays loaded (Ollama loads with the request's context); the next request
  waiting for the model starts its own;
- a request asking for another context length than the loaded instance's reloads it, and so does
  one asking for none (the automatic length) when the instance was loaded with an explicit one
  that differs; two automatic ones never do; so does one asking other runner options (num_gpu,
  num_batch, num_thread, use_mmap, main_gpu: hopscommon.runner_options).

All methods run on the event loop. Durations given to it are simulated seconds; real sleeps are
divided by the time scale.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from hopscommon.fleet import runs_one_at_a_time
from hopscommon.runner_options import RunnerOptions, needs_reload, with_defaults
from ollamasim.catalogue import ModelSpec
from ollamasim.errors import ServerBusy
from ollamasim.stats import Stats

KV_BYTES_PER_TOKEN_PER_BILLION = 8 * 1024
FOREVER_S = 292 * 365 * 24 * 3600.0
SPAWN_SECONDS = 0.3


@dataclass(slots=True)
class CacheSlot:
    """One parallel slot's KV cache: the text (prompt and reply) its last request left there."""

    text: str = ""
    in_use: bool = False
    last_used: float = 0.0


class Runner:
    """One loaded (or loading) model instance, shared by every request for its weights (every
    model whose spec has its ``runner``)."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        size: int,
        size_vram: int,
        context_length: int,
        num_parallel: int,
        keep_alive: float,
        context_auto: bool = True,
        options: RunnerOptions = (),
    ) -> None:
        self.spec = spec
        self.size = size
        self.size_vram = size_vram
        self.context_length = context_length
        self.context_auto = context_auto  # loaded by a request that named no num_ctx
        self.options = options  # the runner options of the request that loaded it
        self.keep_alive = keep_alive
        self.refs = 0
        self.ready = asyncio.Event()
        self.slots = asyncio.Semaphore(num_parallel)
        self.active = 0
        self.expiry: asyncio.TimerHandle | None = None
        self.idle_expires_at = 0.0
        self.last_used = time.monotonic()
        self.cache_slots = [CacheSlot() for _ in range(num_parallel)]
        self.num_parallel = num_parallel

    @property
    def vram_fraction(self) -> float:
        return self.size_vram / self.size if self.size else 0.0

    def expires_at(self, scale: float) -> float:
        """Wall-clock time this runner unloads if nothing else uses it."""
        if self.keep_alive < 0:
            return time.time() + FOREVER_S
        if self.refs > 0 or not self.ready.is_set():
            return time.time() + self.keep_alive / scale
        return self.idle_expires_at

    def take_cache_slot(self, prompt: str, multiuser: bool) -> tuple[CacheSlot, int]:
        """The KV-cache slot a request runs in, and how many characters of its prompt that slot
        holds already, picked as Ollama's runner does (LoadCacheSlot; the caller holds one of the
        runner's parallel slots, so one is free). By default the free slot whose text shares the
        longest prefix with the prompt (the first on a tie, an empty one counting 0), whatever
        else it held: a new conversation takes over one that shares only the template's start.
        With OLLAMA_MULTIUSER_CACHE: the slot holding exactly a prefix of the prompt (the
        conversation's own), else the least recently used free one, given the longest prefix
        found in any slot. Character-wise on purpose: the rendered prompt stands in for its
        tokens."""

        def shared(slot: CacheSlot) -> int:
            return len(os.path.commonprefix([slot.text, prompt]))  # noqa: RUF071

        free = [slot for slot in self.cache_slots if not slot.in_use]
        if not multiuser:
            chosen = max(free, key=shared)
            cached = shared(chosen)
        else:
            longest = max(self.cache_slots, key=shared)
            cached = shared(longest)
            if cached == len(longest.text) and not longest.in_use:
                chosen = longest
            else:
                chosen = min(free, key=lambda slot: slot.last_used)
        chosen.in_use = True
        chosen.last_used = time.monotonic()
        return chosen, cached

    @staticmethod
    def leave_cache_slot(slot: CacheSlot, text: str) -> None:
        """The request in ``slot`` is over; its prompt and what it generated stay cached."""
        slot.text = text
        slot.in_use = False


def _eviction_order(runner: Runner) -> tuple[float, float]:
    # sched.go sorts by keep-alive (a negative one counts as forever), then takes the first idle.
    keep = FOREVER_S if runner.keep_alive < 0 else runner.keep_alive
    return keep, runner.last_used


@dataclass(frozen=True, slots=True)
class Grant:
    """A runner handed to one request, and how long the hand-over took (load_duration)."""

    runner: Runner
    load_seconds: float


class Scheduler:
    """Owns the runners of one host."""

    def __init__(
        self,
        *,
        memory_bytes: int,
        on_gpu: bool,
        max_loaded: int,
        max_queue: int,
        num_parallel: int,
        default_keep_alive: float,
        default_context: int,
        load_seconds: Callable[[int], float],
        time_scale: float,
        stats: Stats,
    ) -> None:
        self.memory_bytes = memory_bytes
        self.on_gpu = on_gpu
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.num_parallel = num_parallel
        self.default_keep_alive = default_keep_alive
        self.default_context = default_context
        self.load_seconds = load_seconds
        self.scale = time_scale
        self.stats = stats
        self.runners: dict[str, Runner] = {}
        self.pending = 0
        self._load_lock = asyncio.Lock()
        self._idle = asyncio.Event()

    async def sleep(self, simulated_seconds: float) -> None:
        if simulated_seconds > 0:
            await asyncio.sleep(simulated_seconds / self.scale)

    def context_for(self, spec: ModelSpec, num_ctx: int | None) -> int:
        wanted = num_ctx if num_ctx and num_ctx > 0 else self.default_context
        return max(min(wanted, spec.context_length), 1)

    def parallel_for(self, spec: ModelSpec) -> int:
        """Slots a runner of ``spec`` gets: sched.go load() forces one for some models."""
        return 1 if runs_one_at_a_time(spec.capabilities, spec.family) else self.num_parallel

    def memory_needed(self, spec: ModelSpec, context: int) -> int:
        slots = self.parallel_for(spec)
        kv = context * slots * KV_BYTES_PER_TOKEN_PER_BILLION * spec.params_billions
        return spec.size_bytes + int(kv)

    def memory_used(self) -> int:
        return sum(r.size_vram if self.on_gpu else r.size for r in self.runners.values())

    def loaded(self, spec: ModelSpec) -> Runner | None:
        runner = self.runners.get(spec.weights)
        return runner if runner is not None and runner.ready.is_set() else None

    async def acquire(
        self,
        spec: ModelSpec,
        *,
        keep_alive: float | None,
        num_ctx: int | None,
        options: RunnerOptions = (),
    ) -> Grant:
        """Hand a ready runner for ``spec`` to one request, loading it first when needed.

        Raises ServerBusy when the pending queue is full. The caller must call :meth:`release`
        exactly once for every grant. A caller cancelled while it waits leaves the queue, and
        one cancelled during the load it started stops that load (sched.go loads with the
        request's context): the model is not left loaded for nobody.
        """
        start = time.monotonic()
        num_ctx = num_ctx or spec.num_ctx or None  # the modelfile's PARAMETERs are defaults
        options = with_defaults(spec.options, options)
        runner = self.runners.get(spec.weights)
        if (
            runner is not None
            and runner.ready.is_set()
            and not self._needs_reload(runner, spec, num_ctx, options)
        ):
            self._hold(runner, keep_alive)
            return Grant(runner, time.monotonic() - start)
        if self.pending >= self.max_queue:
            self.stats.busy_rejections += 1
            raise ServerBusy()
        self.pending += 1
        runner = await self._load_for(spec, keep_alive, num_ctx, options)
        return Grant(runner, time.monotonic() - start)

    def release(self, runner: Runner) -> None:
        """Return a grant; an idle runner starts its keep-alive clock (or unloads at 0)."""
        runner.refs -= 1
        runner.last_used = time.monotonic()
        if runner.refs > 0:
            return
        self._start_idle_clock(runner)
        self._wake_idle_waiters()

    def unload(self, spec: ModelSpec) -> bool:
        """keep_alive 0 on an empty request: unload now if idle, else when the last request ends."""
        runner = self.runners.get(spec.weights)
        if runner is None:
            return False
        runner.keep_alive = 0
        if runner.refs == 0 and runner.ready.is_set():
            self._remove(runner)
            self.stats.unloads += 1
        return True

    def _hold(self, runner: Runner, keep_alive: float | None) -> None:
        runner.refs += 1
        if keep_alive is not None:
            runner.keep_alive = keep_alive  # last writer wins, for every client of this runner
        if runner.expiry is not None:
            runner.expiry.cancel()
            runner.expiry = None

    def _needs_reload(
        self, runner: Runner, spec: ModelSpec, num_ctx: int | None, options: RunnerOptions
    ) -> bool:
        """sched.go needsReload: other adapters or runner options than the loaded instance's; or
        for the context length, an explicit one must match the instance's, and an automatic one
        matches an automatic instance whatever its length, an explicit one only at the same
        length."""
        if runner.spec.adapters != spec.adapters or needs_reload(runner.options, options):
            return True
        if not num_ctx and runner.context_auto:
            return False
        return self.context_for(runner.spec, num_ctx) != runner.context_length

    async def _load_for(
        self,
        spec: ModelSpec,
        keep_alive: float | None,
        num_ctx: int | None,
        options: RunnerOptions,
    ) -> Runner:
        try:
            async with self._load_lock:
                runner = self.runners.get(spec.weights)
                if runner is not None and self._needs_reload(runner, spec, num_ctx, options):
                    # Set to expire at once, as sched.go does: it goes when idle even if this
                    # request leaves before its reload starts.
                    runner.keep_alive = 0
                    await self._wait_until_idle(runner)
                    if self.runners.get(spec.weights) is runner:
                        self._remove(runner)
                        self.stats.unloads += 1
                    runner = None
                if runner is not None:
                    self._hold(runner, keep_alive)
                    return runner
                context = self.context_for(spec, num_ctx)
                size = self.memory_needed(spec, context)
                await self._make_room(size)
                free = self.memory_bytes - self.memory_used()
                runner = Runner(
                    spec,
                    size=size,
                    size_vram=min(size, max(free, 0)) if self.on_gpu else 0,
                    context_length=context,
                    num_parallel=self.parallel_for(spec),
                    keep_alive=self.default_keep_alive if keep_alive is None else keep_alive,
                    context_auto=not num_ctx or num_ctx <= 0,
                    options=options,
                )
                self.runners[spec.weights] = runner
                self._hold(runner, None)
                try:
                    await self.sleep(self.load_seconds(spec.size_bytes))
                except asyncio.CancelledError:
                    self._remove(runner)  # its request left: the load stops, half done
                    raise
                runner.ready.set()
                self.stats.loads += 1
                return runner
        finally:
            self.pending -= 1

    async def _make_room(self, size: int) -> None:
        while self.runners:
            fits = size <= self.memory_bytes - self.memory_used()
            if fits and (self.max_loaded <= 0 or len(self.runners) < self.max_loaded):
                return
            idle = [r for r in self.runners.values() if r.refs == 0 and r.ready.is_set()]
            if idle:
                victim = min(idle, key=_eviction_order)
                self._remove(victim)
                self.stats.evictions += 1
                continue
            await self._idle.wait()

    async def _wait_until_idle(self, runner: Runner) -> None:
        while runner.refs > 0:
            await self._idle.wait()

    def _wake_idle_waiters(self) -> None:
        self._idle.set()
        self._idle = asyncio.Event()

    def _start_idle_clock(self, runner: Runner) -> None:
        if runner.keep_alive == 0:
            self._remove(runner)
            self.stats.unloads += 1
            return
        if runner.keep_alive < 0:
            runner.idle_expires_at = time.time() + FOREVER_S
            return
        delay = runner.keep_alive / self.scale
        runner.idle_expires_at = time.time() + delay
        loop = asyncio.get_running_loop()
        runner.expiry = loop.call_later(delay, self._expire, runner)

    def _expire(self, runner: Runner) -> None:
        runner.expiry = None
        if runner.refs == 0 and self.runners.get(runner.spec.weights) is runner:
            self._remove(runner)
            self.stats.unloads += 1

    def _remove(self, runner: Runner) -> None:
        if runner.expiry is not None:
            runner.expiry.cancel()
            runner.expiry = None
        if self.runners.get(runner.spec.weights) is runner:
            del self.runners[runner.spec.weights]
        self._wake_idle_waiters()
