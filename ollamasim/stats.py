"""Counters of what a simulated host really saw, read by tests through GET /_sim/stats."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Stats:
    """Monotonic counters plus gauges; owned by the event loop."""

    requests: Counter[str] = field(default_factory=Counter)
    started: int = 0
    completed: int = 0
    cancelled: int = 0
    failed: int = 0
    loads: int = 0
    evictions: int = 0
    unloads: int = 0
    busy_rejections: int = 0
    # Prompts longer than the context length they ran at, evaluated only in part (Ollama keeps
    # their end and says so only in its log)
    truncated_prompts: int = 0
    # Replies that outgrew the context length left by their prompt (Ollama then drops half of
    # the context after its first tokens, the prompt's start, and goes on)
    context_shifts: int = 0
    tokens_generated: int = 0
    pulls: int = 0
    in_flight: int = 0
    waiting_for_slot: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "requests_total": sum(self.requests.values()),
            "started": self.started,
            "completed": self.completed,
            "cancelled": self.cancelled,
            "failed": self.failed,
            "loads": self.loads,
            "evictions": self.evictions,
            "unloads": self.unloads,
            "busy_rejections": self.busy_rejections,
            "truncated_prompts": self.truncated_prompts,
            "context_shifts": self.context_shifts,
            "tokens_generated": self.tokens_generated,
            "pulls": self.pulls,
            "in_flight": self.in_flight,
            "waiting_for_slot": self.waiting_for_slot,
        }

    def reset(self) -> None:
        """Zero the counters; gauges (in flight, waiting) keep describing the present."""
        in_flight, waiting = self.in_flight, self.waiting_for_slot
        for name in self.__slots__:
            value = getattr(self, name)
            if isinstance(value, Counter):
                value.clear()
            else:
                setattr(self, name, 0)
        self.in_flight, self.waiting_for_slot = in_flight, waiting
