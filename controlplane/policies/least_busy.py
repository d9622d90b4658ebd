"""``least_busy``: fewest requests in flight on the host (then for the model), weight-adjusted.

In-flight counts come from open leases, so a host that answers 503 at once does not look idle:
its failures open its breaker instead. Ties are broken at random so equal hosts share the load.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence
from typing import ClassVar

from controlplane.model import RouteRequest
from controlplane.policies.base import Candidate, Ranked


class LeastBusyPicker:
    name: ClassVar[str] = "least_busy"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(
        self, request: RouteRequest, candidates: Sequence[Candidate], limit: int
    ) -> list[Ranked]:
        def load(c: Candidate) -> tuple[float, int, float]:
            return (c.in_flight_node / max(c.weight, 1e-6), c.in_flight_model, self._rng.random())

        best = heapq.nsmallest(limit, candidates, key=load)
        return [
            Ranked(c, -c.in_flight_node / max(c.weight, 1e-6), f"least-busy {c.in_flight_node}")
            for c in best
        ]
