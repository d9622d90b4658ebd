"""``random``: every eligible host equally likely, whatever it has loaded (what the first HOPS did).

Kept as the baseline the benchmarks compare against.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import ClassVar

from controlplane.model import RouteRequest
from controlplane.policies.base import Candidate, Ranked


class RandomPicker:
    name: ClassVar[str] = "random"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def pick(
        self, request: RouteRequest, candidates: Sequence[Candidate], limit: int
    ) -> list[Ranked]:
        order = self._rng.sample(list(candidates), min(limit, len(candidates)))
        return [Ranked(c, float(len(order) - i), "random") for i, c in enumerate(order)]
