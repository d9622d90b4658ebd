"""Faults a simulated host can be told to show, for tests and chaos drills.

Modes:
- ``refuse``: the API port stops listening, so connections are refused.
- ``busy``: inference requests get Ollama's 503 "server busy".
- ``hang``: inference requests never get a first byte (until the client gives up).
- ``drop``: the connection is cut after ``after_chunks`` chunks of a streamed reply, or halfway
  through the announced body of a reply not streamed (embeddings included).
- ``slow``: decoding and loading run ``factor`` times slower.
- ``error``: inference requests get a 500 with a runner error.
- ``stream_error``: a streamed reply fails after ``after_chunks`` chunks as Ollama's do when the
  runner dies mid-generation: status 200 already sent, an ``{"error": ...}`` line ends an NDJSON
  stream, an OpenAI stream ends with an empty delta and no ``data: [DONE]``; a reply not streamed
  gets the 500.

``rate`` is the chance a request is hit; ``count`` bounds how many are; ``duration_s`` (in real
seconds) clears the fault by itself.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("refuse", "busy", "hang", "drop", "slow", "error", "stream_error")


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultSpec:
    """One fault and its knobs."""

    mode: str
    rate: float = 1.0
    count: int | None = None
    after_chunks: int = 2
    factor: float = 5.0
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown fault mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("fault rate must be within 0..1")
        if self.count is not None and self.count < 0:
            raise ValueError("fault count must be >= 0")
        if self.after_chunks < 0 or self.factor <= 0:
            raise ValueError("after_chunks must be >= 0 and factor > 0")

    @classmethod
    def parse(cls, text: str) -> FaultSpec:
        """``drop:after_chunks=3,rate=0.5`` -> FaultSpec. Raises ValueError."""
        mode, _, rest = text.partition(":")
        knobs: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"expected key=value in fault option {item!r}")
            knobs[key] = value
        return cls.from_json({"mode": mode.strip(), **knobs})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultSpec:
        known = {"mode", "rate", "count", "after_chunks", "factor", "duration_s"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault option(s): {', '.join(sorted(unknown))}")
        try:
            return cls(
                mode=str(data["mode"]),
                rate=float(data.get("rate", 1.0)),
                count=None if data.get("count") is None else int(data["count"]),
                after_chunks=int(data.get("after_chunks", 2)),
                factor=float(data.get("factor", 5.0)),
                duration_s=None if data.get("duration_s") is None else float(data["duration_s"]),
            )
        except KeyError:
            raise ValueError("fault needs a mode") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad fault option: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class FaultState:
    """The fault in force, drawn per request. Owned by the event loop; not thread-safe."""

    rng: random.Random
    spec: FaultSpec | None = None
    hits: int = 0
    until: float | None = None
    injected: dict[str, int] = field(default_factory=dict)

    def set(self, spec: FaultSpec | None) -> None:
        self.spec = spec
        self.hits = 0
        self.until = (
            time.monotonic() + spec.duration_s if spec and spec.duration_s is not None else None
        )

    def active(self) -> FaultSpec | None:
        """The fault in force now, clearing one whose duration or count ran out."""
        spec = self.spec
        if spec is None:
            return None
        if (self.until is not None and time.monotonic() >= self.until) or (
            spec.count is not None and self.hits >= spec.count
        ):
            self.spec = None
            return None
        return spec

    def draw(self, *modes: str) -> FaultSpec | None:
        """The fault that hits this request, if one of ``modes`` is in force and the dice say so."""
        spec = self.active()
        if spec is None or spec.mode not in modes:
            return None
        if spec.rate < 1.0 and self.rng.random() >= spec.rate:
            return None
        self.hits += 1
        self.injected[spec.mode] = self.injected.get(spec.mode, 0) + 1
        return spec
