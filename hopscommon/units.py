"""Byte sizes and Go-style durations as people and Ollama write them."""

from __future__ import annotations

import re

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*", re.IGNORECASE)
_SIZE_FACTORS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "ki": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "mi": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "gi": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
    "ti": 1024**4,
}


def parse_bytes(text: str) -> int:
    """``"24GiB"`` -> 25769803776; plain numbers are bytes. Raises ValueError."""
    match = _SIZE.fullmatch(text)
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 512MiB, 24GiB, 4.1GB)")
    factor = _SIZE_FACTORS.get((match.group(2) or "").lower())
    if factor is None:
        raise ValueError(f"unknown size unit in {text!r}")
    return round(float(match.group(1)) * factor)


_GO_NUMBER = re.compile(r"\d+(?:\.\d*)?|\.\d+")
_GO_UNIT = re.compile(r"[^\d.]+")  # a unit runs to the next number
_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_go_duration(text: str) -> float:
    """Seconds from a Go duration string (``"5m"``, ``"1h30m"``, ``"-1m"``), as Go parses it.

    Raises ValueError with Go's own wording, which Ollama passes to the client.
    """
    quoted = '"' + text + '"'
    body = text
    sign = 1.0
    if body.startswith(("+", "-")):
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f"time: invalid duration {quoted}")
    total = 0.0
    pos = 0
    while pos < len(body):  # number, then unit, as Go's ParseDuration reads them
        number = _GO_NUMBER.match(body, pos)
        if number is None:
            raise ValueError(f"time: invalid duration {quoted}")
        pos = number.end()
        unit = _GO_UNIT.match(body, pos)
        name = unit.group(0) if unit is not None else ""
        if not name:
            raise ValueError(f"time: missing unit in duration {quoted}")
        if name not in _GO_UNITS:
            raise ValueError(f'time: unknown unit "{name}" in duration {quoted}')
        total += float(number.group(0)) * _GO_UNITS[name]
        pos += len(name)
    return sign * total


def parse_seconds(text: str) -> float:
    """Seconds from ``"1.5"`` or a Go duration (``"250ms"``, ``"5m"``). Raises ValueError."""
    try:
        return float(text)
    except ValueError:
        return parse_go_duration(text)
