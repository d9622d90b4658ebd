"""Admission control: when every host that could serve a request is saturated, the request waits
here, in a bounded per-model queue, instead of piling onto Ollama's unbounded hidden queue.

A host is saturated when its requests in flight reach its cap (``max_in_flight`` from the agent,
else ``num_parallel x queue_per_slot``). Waiters are woken oldest first, across models, when a
lease closes on a host that has their model, so a busy model cannot starve a quiet one. A request
for a model others already wait for joins the line behind them instead of taking the slot one of
them was woken for (first come, first served). Capacity can also appear without a lease closing
(a host joins, a cordon lifts), so while anyone waits, the oldest waiter of each model tries again
every TICK_S. A waiter that is not placed within ``max_wait`` seconds gets SATURATED (the edge
answers 503 with Retry-After), and so, at once and without ranking any host, does a request that
finds its model's line full. A show or a pull takes no slot (Ollama answers it outside its
scheduler), so it never waits here.

A request may also wait here while hosts are free, when one at its cap would serve it much
sooner (a long prompt, with only a CPU host free: the router's PickOutcome.better_busy); such a
request takes a free host, not a 503, when its wait runs out or its model's line is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace

from controlplane.fleet import model_key
from controlplane.model import RouteRequest
from controlplane.router import PickOutcome, PickStatus, Router

TICK_S = 0.1
QUEUE_FULL = "the wait queue is full"


@dataclass(eq=False)
class _Waiter:
    key: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)


class Admission:
    """Owned by the event loop; ``on_release`` is the lease table's close hook."""

    def __init__(self, router: Router, *, max_wait: float, per_model: int) -> None:
        self.router = router
        self.max_wait = max_wait
        self.per_model = per_model
        self.queue: deque[_Waiter] = deque()
        self.waiting: Counter[str] = Counter()
        # Of those, the ones waiting while hosts are free, for a busy one that serves sooner.
        self.choosing: Counter[str] = Counter()
        self.ticker: asyncio.Task[None] | None = None

    async def pick(self, request: RouteRequest) -> PickOutcome:
        """Pick now, or wait in line: behind others waiting for the model, or for a slot when
        every candidate is saturated; refused at once when the line is full."""
        outcome, wait = self.admit(request)
        if wait:
            return await self.wait(request, outcome)
        assert outcome is not None
        return outcome

    def admit(self, request: RouteRequest) -> tuple[PickOutcome | None, bool]:
        """What can be decided now, without waiting: (the answer, False), or (what to wait
        with, True): the saturated outcome of a pick, or None to join the line behind others
        without picking (first come, first served)."""
        if self.max_wait > 0 and request.runs_model:  # a show or a pull takes no slot
            key = model_key(request.model)
            ahead = self.waiting[key]
            # Those ahead may wait by choice, with hosts free: then this one is ranked too
            # (it may take a free host, or wait as well), not refused or put behind them.
            if ahead >= self.per_model and not self.choosing[key]:
                return self._line_full(), False
            if ahead and not self.choosing[key]:
                return None, True
        outcome = self.router.pick(request, may_wait=self.max_wait > 0)
        return outcome, self.must_wait(outcome)

    def _line_full(self) -> PickOutcome:
        """SATURATED at once when the line for the model is full: those in it have first claim
        on any slot, and under overload ranking every newcomer against a full fleet only to
        refuse it cost more than the picks that were served."""
        self.router.metrics.picks.labels(self.router.policy.name, "saturated").inc()
        return PickOutcome(
            PickStatus.SATURATED,
            self.router.policy.name,
            message=f"every host with this model is at its concurrency limit; {QUEUE_FULL}",
            retry_after_s=self.router.retry_after_s,
        )

    def must_wait(self, outcome: PickOutcome) -> bool:
        return outcome.status is PickStatus.SATURATED and self.max_wait > 0

    async def wait(self, request: RouteRequest, outcome: PickOutcome | None) -> PickOutcome:
        """Wait in line after ``outcome`` said every candidate is saturated, or that a busy one
        would serve the request much sooner than those free (None: joined the line behind
        others without picking)."""
        key = model_key(request.model)
        if self.waiting[key] >= self.per_model:
            if outcome is None:  # the line filled up before this one joined it
                return self._line_full()
            if outcome.better_busy:  # no room to wait for the better host: a free one will do
                return self.router.pick(request)
            return replace(outcome, message=f"{outcome.message}; {QUEUE_FULL}")
        waiter = _Waiter(key)
        self.queue.append(waiter)
        self.waiting[key] += 1
        choosing = outcome is not None and outcome.better_busy
        self.choosing[key] += choosing
        if self.ticker is None or self.ticker.done():
            self.ticker = asyncio.create_task(self._tick())
        started = time.monotonic()
        deadline = started + self.max_wait
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(waiter.wake.wait(), remaining)
                except TimeoutError:
                    break
                waiter.wake.clear()
                outcome = self.router.pick(request, may_wait=True)
                if outcome.status is not PickStatus.SATURATED:
                    return _queued(outcome, time.monotonic() - started)
                self.choosing[key] += outcome.better_busy - choosing
                choosing = outcome.better_busy
            # Time is up. For one that waited by choice, a free host, even a slower one,
            # beats a 503.
            if outcome is None or outcome.better_busy:
                return _queued(self.router.pick(request), time.monotonic() - started)
            return outcome
        finally:
            self.queue.remove(waiter)
            self.waiting[key] -= 1
            if self.waiting[key] <= 0:
                del self.waiting[key]
            self.choosing[key] -= choosing
            if self.choosing[key] <= 0:
                del self.choosing[key]

    async def close(self) -> None:
        if self.ticker is not None:
            self.ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.ticker

    async def _tick(self) -> None:
        """While anyone waits: every TICK_S, the oldest waiter of each model tries again."""
        while self.queue:
            await asyncio.sleep(TICK_S)
            tried: set[str] = set()
            for waiter in self.queue:
                if waiter.key not in tried:
                    tried.add(waiter.key)
                    waiter.wake.set()

    def on_release(self, node_id: str) -> None:
        """A lease closed on ``node_id``: wake the oldest waiter whose model that host has."""
        node = self.router.fleet.nodes.get(node_id)
        if node is None:
            return
        for waiter in self.queue:
            if not waiter.wake.is_set() and node.has_model(waiter.key):
                waiter.wake.set()
                return


def _queued(outcome: PickOutcome, waited: float) -> PickOutcome:
    if not outcome.ranked:
        return outcome
    first = outcome.ranked[0]
    marked = replace(first, reason=f"queued {waited * 1000:.0f}ms {first.reason}")
    return replace(outcome, ranked=(marked, *outcome.ranked[1:]))
