"""A per-node circuit breaker fed only by real traffic.

CLOSED: traffic flows; ``threshold`` consecutive host failures (connect errors, 5xx, Ollama's busy
503, timeouts) open it. OPEN: no traffic for ``cooldown`` seconds. HALF_OPEN: one probe request is
let through; its success closes the breaker, its failure opens it again. Only a reply that
ended well is a success. A 4xx is the request's fault, not the host's, and counts as neither:
Ollama checks a request before it touches a runner, so a host whose runners all fail still
answers 400 and 404, and those must not keep resetting its count. Nor does a client
cancellation count, or a 5xx the request earned itself (Outcome.REQUEST_ERROR: see
Router.report). Agent keepalives never touch the breaker: a host that answers pings but fails
requests stays out. Nor
do shows and pulls answered (Ollama serves them from disk and the registry, not from a runner;
the router feeds only their failures) and neither is ever the probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

from controlplane.model import Outcome


class BreakerState(Enum):
    CLOSED = 1
    OPEN = 2
    HALF_OPEN = 3


class Breaker:
    """Owned by the event loop; ``clock`` is injectable for tests."""

    def __init__(
        self, *, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self.consecutive_failures = 0
        self.open_until = 0.0
        self.opened = False
        self.probe_lease: str | None = None
        self.last_failure = ""

    @property
    def state(self) -> BreakerState:
        if not self.opened:
            return BreakerState.CLOSED
        return BreakerState.OPEN if self.clock() < self.open_until else BreakerState.HALF_OPEN

    def allows(self) -> bool:
        """Whether a new request may go to this node now."""
        if not self.opened:
            return True
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        return state is BreakerState.HALF_OPEN and self.probe_lease is None

    def on_dispatch(self, lease_id: str) -> None:
        """A request was routed here; in HALF_OPEN it becomes the probe."""
        if self.state is BreakerState.HALF_OPEN and self.probe_lease is None:
            self.probe_lease = lease_id

    def record(self, outcome: Outcome, lease_id: str, detail: str = "") -> None:
        """Feed the outcome of one attempt."""
        was_probe = lease_id == self.probe_lease
        if was_probe:
            self.probe_lease = None
        if outcome.is_host_failure:
            self.consecutive_failures += 1
            self.last_failure = detail or outcome.name.lower()
            if was_probe or self.consecutive_failures >= self.threshold:
                self.opened = True
                self.open_until = self.clock() + self.cooldown
        elif outcome is Outcome.OK:
            self.consecutive_failures = 0
            self.opened = False

    def abandon(self, lease_id: str) -> None:
        """A lease ended without an outcome (edge gone, TTL): let another probe through."""
        if lease_id == self.probe_lease:
            self.probe_lease = None
