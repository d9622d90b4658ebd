"""Routing labels: a host carries KEY=VALUE labels (its agent's ``--label``, a static host's
``labels``), and a selector asks for hosts carrying all of its labels with exactly those values
(``zone=eu`` matches ``zone=eu`` only: never ``zone=eu-west``, never a prefix or a substring).
An edge's ``--labels`` and a request's ``X-Hops-Labels`` header are selectors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Labels = tuple[tuple[str, str], ...]
MAX_LABELS = 64  # per host and per selector; more is a mistake, not a fleet
MAX_LABEL_TEXT = 256  # per key or value


def parse_label(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` (spaces around either are dropped); ValueError otherwise."""
    key, sep, value = text.partition("=")
    key, value = key.strip(), value.strip()
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    if len(key) > MAX_LABEL_TEXT or len(value) > MAX_LABEL_TEXT:
        raise ValueError(f"a label's key and value are at most {MAX_LABEL_TEXT} characters")
    return key, value


def selector(pairs: Iterable[tuple[str, str]]) -> Labels:
    """The pairs as one selector, sorted; ValueError when a key is given two values (no host
    could match both) or there are more than MAX_LABELS."""
    chosen: dict[str, str] = {}
    for key, value in pairs:
        if chosen.setdefault(key, value) != value:
            raise ValueError(f"label {key} asked as both {chosen[key]!r} and {value!r}")
    if len(chosen) > MAX_LABELS:
        raise ValueError(f"at most {MAX_LABELS} labels")
    return tuple(sorted(chosen.items()))


def parse_selector(text: str) -> Labels:
    """``KEY=VALUE[, KEY=VALUE ...]`` (a header's value); empty text is no selector."""
    parts = [part for part in text.split(",") if part.strip()]
    return selector(parse_label(part) for part in parts)


def matches(labels: Mapping[str, str], wanted: Labels) -> bool:
    """Whether a host carrying ``labels`` has every label of ``wanted``, value for value."""
    return all(labels.get(key) == value for key, value in wanted)


def shown(wanted: Labels) -> str:
    return ",".join(f"{key}={value}" for key, value in wanted)
