"""What clients ask of each model: its picks among about the last DEMAND_WINDOW picks of any
model, exponentially weighted; and, once a model was ever asked an explicit context length, its
picks per length too (Ollama runs one instance of a model per length, and a reload at another
length costs the clients of the instance it replaces). Runs on the control plane's event loop,
called by the Router.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEMAND_WINDOW = 50  # picks: a model's demand is its expected share of about this many
DEMAND_DECAY = 1.0 - 1.0 / DEMAND_WINDOW
DEMAND_FORGOTTEN = 0.01  # decayed below this (about 230 picks of other keys), a key is dropped


@dataclass(slots=True)
class Demand:
    asked_lengths: set[str] = field(default_factory=set)  # models ever asked an explicit num_ctx
    # Per key, (picks of it, decayed by DEMAND_DECAY per pick of any model; pick number).
    _counts: dict[str, tuple[float, int]] = field(default_factory=dict)
    _picks: int = 0

    def count(self, key: str, context: int | None) -> None:
        """One pick of model ``key`` run at context length ``context`` (0: none named; None:
        not known), counted per length too once the model was ever asked an explicit one."""
        self._count(key)
        if context:
            self.asked_lengths.add(key)
        if context is not None and key in self.asked_lengths:
            self._count(_at_length(key, context), counted=False)

    def of(self, key: str) -> float:
        """Picks of ``key`` among about the last DEMAND_WINDOW picks (exponentially weighted):
        how many of the next DEMAND_WINDOW it can expect. Divided by the weight the picks so far
        carry, so a young control plane's figure is not biased low."""
        if not self._picks:
            return 0.0
        return self._decayed(key) / (1.0 - DEMAND_DECAY**self._picks)

    def at_other_lengths(self, key: str, context: int) -> float:
        """The demand for ``key`` at any context length but ``context`` (0: none named)."""
        return self.of(key) - self.of(_at_length(key, context))

    def forget_decayed(self) -> None:
        """Drop the keys whose picks have long decayed: the keys per context length are as
        many as the lengths clients send, which they choose."""
        self._counts = {
            key: seen
            for key, seen in self._counts.items()
            if seen[0] * DEMAND_DECAY ** (self._picks - seen[1]) >= DEMAND_FORGOTTEN
        }

    def _count(self, key: str, *, counted: bool = True) -> None:
        """One more pick of ``key``; ``counted`` False for a second key of the same pick (a
        model at one context length), which must not advance the window twice."""
        if counted:
            self._picks += 1
        self._counts[key] = (self._decayed(key) + 1.0, self._picks)

    def _decayed(self, key: str) -> float:
        seen = self._counts.get(key)
        if seen is None:
            return 0.0
        count, at = seen
        return count * DEMAND_DECAY ** (self._picks - at)


def _at_length(key: str, context: int) -> str:
    """The demand key of ``key`` asked at context length ``context`` (0: none named)."""
    return f"{key}\x00{context}"
