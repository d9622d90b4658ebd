"""Routing policies by name. The registry is plain code, so mypy checks every entry."""

from __future__ import annotations

from collections.abc import Callable

from controlplane.policies.base import BoundedPicker, Candidate, Picker, Ranked
from controlplane.policies.least_busy import LeastBusyPicker
from controlplane.policies.memory_aware import MemoryAwarePicker
from controlplane.policies.random_policy import RandomPicker
from controlplane.policies.round_robin import RoundRobinPicker

REGISTRY: dict[str, Callable[[int | None], Picker]] = {
    RandomPicker.name: RandomPicker,
    RoundRobinPicker.name: RoundRobinPicker,
    LeastBusyPicker.name: LeastBusyPicker,
    MemoryAwarePicker.name: MemoryAwarePicker,
}

__all__ = ["REGISTRY", "BoundedPicker", "Candidate", "Picker", "Ranked"]
