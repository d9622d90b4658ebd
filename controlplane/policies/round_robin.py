"""``round_robin``: per model, each eligible host in turn (sorted by node id), ignoring load."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import ClassVar

from controlplane.model import RouteRequest
from controlplane.policies.base import Candidate, Ranked


class RoundRobinPicker:
    name: ClassVar[str] = "round_robin"

    def __init__(self, seed: int | None = None) -> None:
        self._turns: Counter[str] = Counter()

    def pick(
        self, request: RouteRequest, candidates: Sequence[Candidate], limit: int
    ) -> list[Ranked]:
        order = sorted(candidates, key=lambda c: c.node_id)
        if not order:
            return []
        turn = self._turns[request.model] % len(order)
        self._turns[request.model] += 1
        rotated = (order[turn:] + order[:turn])[:limit]
        return [Ranked(c, float(len(rotated) - i), "round-robin") for i, c in enumerate(rotated)]
