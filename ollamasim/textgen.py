"""Deterministic text, tool calls and embeddings: the same seed and input give the same output."""

from __future__ import annotations

import hashlib
import json
import math
import random
import struct
from collections.abc import Iterator
from typing import Any

from hopscommon.tokens import IMAGE_TOKENS, UNITS_PER_TOKEN, text_units

_TEXT = (
    "the model answers every question with care and some light detail about routing requests "
    "across a fleet of unlike hosts where memory bandwidth decides speed and a warm cache saves "
    "seconds while cold loads cost more than queues do on busy cards in small labs at night"
)
_WORDS = _TEXT.split()
_ID_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"


def rng_for(seed: int, *parts: str) -> random.Random:
    """A generator seeded from ``seed`` and the request's content; stable across runs."""
    digest = hashlib.sha256("\x1f".join((str(seed), *parts)).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def count_tokens(text: str) -> int:
    """A rough token count, as a byte-level tokenizer takes text (about four ASCII characters a
    token, about one CJK character: see hopscommon.tokens), at least one for non-empty text."""
    if not text:
        return 0
    return max(1, (text_units(text) + UNITS_PER_TOKEN - 1) // UNITS_PER_TOKEN)


def image_text(data: str) -> str:
    """What an image takes in the prompt the runner evaluates: IMAGE_TOKENS tokens of its own
    (its embeddings), the same for the same image, so a conversation's images are cached
    with it."""
    tag = "<image " + hashlib.sha256(data.encode("utf-8", "surrogatepass")).hexdigest()[:16] + ">"
    return tag.ljust(IMAGE_TOKENS * UNITS_PER_TOKEN, ".")


def first_tokens(text: str, n: int) -> str:
    """The start of ``text`` that count_tokens counts as ``n`` tokens (all of it when shorter)."""
    return last_tokens(text[::-1], n)[::-1]


def last_tokens(text: str, n: int) -> str:
    """The end of ``text`` that count_tokens counts as ``n`` tokens (all of it when shorter)."""
    if n <= 0:
        return ""
    budget = UNITS_PER_TOKEN * n
    if text.isascii():
        return text[-budget:]
    budget *= 2  # in half units: a two-byte character is two and a half
    start = len(text)
    while start > 0:
        char = text[start - 1]
        cost = 2 if char.isascii() else 3 * len(char.encode("utf-8", "surrogatepass")) - 1
        if cost > budget:
            break
        budget -= cost
        start -= 1
    return text[start:]


def words(rng: random.Random, n: int) -> list[str]:
    """``n`` tokens of text, the first without a leading space."""
    return list(iter_words(rng, n))


def iter_words(rng: random.Random, n: int) -> Iterator[str]:
    """The tokens of ``words``, drawn one at a time as they are taken: a reply of any length
    costs nothing before its first token."""
    for i in range(n):
        word = rng.choice(_WORDS)
        yield word.capitalize() if i == 0 else " " + word


def json_tokens(rng: random.Random, schema: Any, n: int) -> list[str]:
    """Tokens that concatenate to one JSON document (an object obeying ``schema`` when given)."""
    value = _value_for(rng, schema) if isinstance(schema, dict) else {"answer": _phrase(rng, n)}
    text = json.dumps(value)
    size = max(1, math.ceil(len(text) / max(n, 1)))
    return [text[i : i + size] for i in range(0, len(text), size)]


def _phrase(rng: random.Random, n: int) -> str:
    return "".join(words(rng, max(1, min(n, 12))))


def _value_for(rng: random.Random, schema: dict[str, Any]) -> Any:
    kind = schema.get("type")
    if schema.get("enum"):
        return rng.choice(schema["enum"])
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {k: _value_for(rng, v if isinstance(v, dict) else {}) for k, v in props.items()}
    if kind == "array":
        items = schema.get("items")
        return [_value_for(rng, items if isinstance(items, dict) else {}) for _ in range(2)]
    if kind == "integer":
        return rng.randint(0, 100)
    if kind == "number":
        return round(rng.uniform(0, 100), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    return _phrase(rng, 3)


def tool_call(rng: random.Random, tool: dict[str, Any]) -> dict[str, Any]:
    """A native Ollama tool call for ``tool``, arguments filled from its parameter schema."""
    function = tool.get("function")
    function = function if isinstance(function, dict) else {}
    params = function.get("parameters")
    args = _value_for(rng, params) if isinstance(params, dict) and params else {}
    call_id = "call_" + "".join(rng.choice(_ID_CHARS) for _ in range(8))
    return {
        "id": call_id,
        "function": {
            "index": 0,
            "name": str(function.get("name", "tool")),
            "arguments": args if isinstance(args, dict) else {},
        },
    }


def embedding(seed: int, model: str, text: str, dims: int, *, normalize: bool) -> list[float]:
    """A deterministic vector for ``text``; L2-normalised when ``normalize``."""
    rng = rng_for(seed, "embed", model, text)
    vec = [rng.gauss(0.0, 1.0) for _ in range(dims)]
    if normalize:
        norm = math.sqrt(sum(v * v for v in vec)) or 1.0
        vec = [v / norm for v in vec]
    # Ollama's /api/embed vectors are float32; round-trip so values print as float32 would.
    return list(struct.unpack(f"{dims}f", struct.pack(f"{dims}f", *vec)))


def context_ids(rng: random.Random, n: int) -> list[int]:
    """Token ids for generate's deprecated ``context`` field."""
    return [rng.randrange(1, 128000) for _ in range(n)]
