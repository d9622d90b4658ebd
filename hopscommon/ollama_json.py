"""Reading request bodies the way Ollama's Go decoder does, so errors carry the same words; and
reading the numbers in Ollama's replies as data that may be wrong."""

from __future__ import annotations

import json
from typing import Any


class BodyError(ValueError):
    """A body Ollama would refuse with 400; the message is Ollama's."""


def go_decode_error(exc: json.JSONDecodeError, text: str) -> str:
    """The text Go's encoding/json gives for the syntax error ``exc`` in ``text``."""
    if exc.pos >= len(text.rstrip()):
        return "unexpected EOF"
    char = text[exc.pos]
    if exc.msg.startswith("Expecting value"):
        return f"invalid character '{char}' looking for beginning of value"
    if exc.msg.startswith("Expecting property name"):
        return f"invalid character '{char}' looking for beginning of object key string"
    if exc.msg.startswith("Extra data"):
        return f"invalid character '{char}' after top-level value"
    return f"invalid character '{char}' {exc.msg.lower()}"


def go_kind(value: Any) -> str:
    """Go's name for the JSON kind of ``value`` in unmarshal errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def decode_object(raw: bytes, go_type: str) -> dict[str, Any]:
    """The body as a JSON object, or BodyError with the words Ollama would use."""
    text = raw.decode("utf-8", errors="replace")
    if not text.strip():
        raise BodyError("missing request body")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BodyError(go_decode_error(exc, text)) from None
    except RecursionError:
        raise BodyError("json: exceeded max depth") from None  # Go's words for deep nesting
    if not isinstance(data, dict):
        raise BodyError(
            f"json: cannot unmarshal {go_kind(data)} into Go value of type api.{go_type}"
        )
    return data


COUNT_MAX = 2**63 - 1  # Go's int64, and what a protobuf (u)int64 field takes


def count(value: object) -> int | None:
    """A count or a duration as a reply gave it: a non-negative JSON integer a protobuf int64
    field can hold, else None (not said, or not a count)."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= COUNT_MAX:
        return value
    return None
