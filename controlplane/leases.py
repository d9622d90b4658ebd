"""Leases: one per routed request, from Pick to Report. In-flight counts per (node, model) are
derived from open leases only, so they return to zero when leases close, when the edge that held
them goes away, or when a lease outlives its TTL."""

from __future__ import annotations

import itertools
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HeldFailure:
    """A retried request's failure not yet fed to its node's breaker: a 5xx with an error text,
    which the next attempt may show to be the request's fault (see controlplane.blame)."""

    node_id: str
    http_status: int
    error: str
    detail: str


@dataclass(slots=True)
class Lease:
    lease_id: str
    edge_id: str
    node_id: str
    model: str
    opened_at: float
    attempts: int = 1
    # Routed to load its model at once (nothing loading ahead, no busy model to wait for), so
    # the first attempt's load_duration measures the load alone: Ollama's figure counts the
    # time the request waited for its turn as well.
    clean_load: bool = False
    # Routed to a loaded instance with a free slot (no load, no queue, no reload), so the reply's
    # whole time is its prompt evaluation and decoding.
    ready: bool = False
    request_id: int = 0  # the edge's id of the pick that opened it (Route calls only)
    # For a request naming no num_ctx: the context lengths its model was listed with on the
    # node when picked and was being loaded at (none: neither), to learn the node's automatic
    # one from the reply.
    auto_from: tuple[int, ...] | None = None
    context: int = 0  # the explicit context length it asked for (capped): 0 for none
    # False for a show or a pull: counted on its node (drain waits for it) but not on its model,
    # whose slots it does not take and which it does not keep busy.
    runs_model: bool = True
    held: HeldFailure | None = None  # its last attempt's failure, until the next one settles it
    # Sent to its session's host, whose prompt cache holds the conversation so far: its reply's
    # prompt_eval_duration covers only the new part, so it says nothing of the prompt speed
    # (unless the reply says how many tokens were cached: newer Ollama does).
    cached_prompt: bool = False
    # Its prompt's expected evaluation on its node (0 = not estimated): a request queued behind
    # it waits that long too.
    prompt_seconds: float = 0.0
    # Whether prompt_seconds is at a prompt speed measured there, not the cautious prior.
    prompt_measured: bool = False
    # The speed prompt_seconds is at (seconds a token), and the tokens of the request's prompt
    # it counted as cached on its session's host: with the prompt's real length (the reply's
    # usage), its evaluation there is known better than the edge's estimate at pick.
    prompt_per_token: float = 0.0
    prompt_credit: int = 0
    # The most tokens its reply may run to (0: no limit asked): a reply stopped there says
    # only that the model's usual one is at least as long.
    max_reply: int = 0
    # A generation's prompt as the edge estimated it (0: an embedding, or not to learn from),
    # to learn what Ollama's count makes of such estimates (see Learning.prompt_scale).
    prompt_estimate: int = 0
    embedding: bool = False  # its reply times no part apart (see Learning.learn)


class LeaseTable:
    """Owned by the event loop."""

    def __init__(self) -> None:
        self.on_release: Callable[[str], None] | None = None  # called with the freed node id
        self._leases: dict[str, Lease] = {}
        self._by_request: dict[tuple[str, int], str] = {}  # (edge id, request id) -> lease id
        # Read-only for others (the router reads them on its hot path); only _count writes.
        self.per_model: Counter[tuple[str, str]] = Counter()  # (node id, model) -> open leases
        self.per_node: Counter[str] = Counter()  # node id -> open leases
        # (node id, model) -> the prompt_seconds of its open leases, summed
        self.prompt_per_model: dict[tuple[str, str], float] = {}
        # (node id, model) -> of its open leases asking a reply limit, how many ask each one
        self.limits_per_model: dict[tuple[str, str], Counter[int]] = {}
        self._ids = itertools.count(1)
        self._prefix = os.urandom(4).hex()

    def __len__(self) -> int:
        return len(self._leases)

    def open(
        self,
        edge_id: str,
        node_id: str,
        model: str,
        request_id: int = 0,
        *,
        runs_model: bool = True,
        prompt_seconds: float = 0.0,
        max_reply: int = 0,
    ) -> Lease:
        lease = Lease(
            f"{self._prefix}-{next(self._ids)}",
            edge_id,
            node_id,
            model,
            time.monotonic(),
            runs_model=runs_model,
            prompt_seconds=prompt_seconds,
            max_reply=max_reply,
        )
        self._leases[lease.lease_id] = lease
        if request_id:
            # setdefault: two edges misconfigured with one id must not close each other's
            self._by_request.setdefault((edge_id, request_id), lease.lease_id)
            lease.request_id = request_id
        self._count(lease, +1)
        return lease

    def get(self, lease_id: str) -> Lease | None:
        return self._leases.get(lease_id)

    def by_request(self, edge_id: str, request_id: int) -> Lease | None:
        """The open lease the edge's pick ``request_id`` opened, if any."""
        lease_id = self._by_request.get((edge_id, request_id))
        return self._leases.get(lease_id) if lease_id is not None else None

    def move(self, lease_id: str, node_id: str) -> Lease | None:
        lease = self._leases.get(lease_id)
        if lease is not None:
            self._count(lease, -1)
            freed, lease.node_id = lease.node_id, node_id
            lease.attempts += 1
            self._count(lease, +1)
            self._released(freed)
        return lease

    def close(self, lease_id: str) -> Lease | None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            if lease.request_id:
                key = (lease.edge_id, lease.request_id)
                if self._by_request.get(key) == lease_id:
                    del self._by_request[key]
            self._count(lease, -1)
            self._released(lease.node_id)
        return lease

    def _released(self, node_id: str) -> None:
        if self.on_release is not None:
            self.on_release(node_id)

    def on(self, node_id: str, model: str) -> Iterator[Lease]:
        """The open leases that run ``model`` on ``node_id`` (a walk over all of them)."""
        if self.per_model.get((node_id, model)):
            for lease in self._leases.values():
                if lease.node_id == node_id and lease.model == model and lease.runs_model:
                    yield lease

    def release_edge(self, edge_id: str) -> list[Lease]:
        gone = [lease for lease in self._leases.values() if lease.edge_id == edge_id]
        for lease in gone:
            self.close(lease.lease_id)
        return gone

    def expire(self, ttl: float) -> list[Lease]:
        cutoff = time.monotonic() - ttl
        old = [lease for lease in self._leases.values() if lease.opened_at < cutoff]
        for lease in old:
            self.close(lease.lease_id)
        return old

    def in_flight(self, node_id: str, model: str | None = None) -> int:
        if model is None:
            return self.per_node[node_id]
        return self.per_model[(node_id, model)]

    def by_model(self, node_id: str) -> dict[str, int]:
        return {m: c for (n, m), c in self.per_model.items() if n == node_id and c > 0}

    def model_total(self, model: str) -> int:
        return sum(c for (_, m), c in self.per_model.items() if m == model)

    def limits_on(self, node_id: str, model: str) -> tuple[tuple[int, int], ...]:
        """Of the open leases for ``model`` on ``node_id``, the reply limits asked, as (limit,
        how many ask it)."""
        limits = self.limits_per_model.get((node_id, model))
        return tuple(limits.items()) if limits else ()

    def _count_limit(self, key: tuple[str, str], limit: int, delta: int) -> None:
        limits = self.limits_per_model.setdefault(key, Counter())
        limits[limit] += delta
        if limits[limit] <= 0:
            del limits[limit]
            if not limits:
                del self.limits_per_model[key]

    def _count(self, lease: Lease, delta: int) -> None:
        if lease.runs_model:
            key = (lease.node_id, lease.model)
            self.per_model[key] += delta
            if self.per_model[key] <= 0:
                del self.per_model[key]
                self.prompt_per_model.pop(key, None)  # no float left over
                self.limits_per_model.pop(key, None)
            else:
                if lease.prompt_seconds:
                    prompt = self.prompt_per_model.get(key, 0.0) + delta * lease.prompt_seconds
                    self.prompt_per_model[key] = max(prompt, 0.0)
                if lease.max_reply:
                    self._count_limit(key, lease.max_reply, delta)
        self.per_node[lease.node_id] += delta
        if self.per_node[lease.node_id] <= 0:
            del self.per_node[lease.node_id]
