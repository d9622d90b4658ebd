"""What Ollama does by version, where HOPS must know it: comparing versions, and the context
length a request naming no num_ctx runs at."""

from __future__ import annotations

GIB = 1024**3
# The length a request naming no num_ctx runs at, unless OLLAMA_CONTEXT_LENGTH sets one: 2048
# at first, 4096 from 0.6.7 (its release notes), and from 0.15.5 a length picked from the
# host's total VRAM (docs/context-length: 4096 under 24 GiB, 32768 under 48 GiB, else 262144).
CONTEXT_4096_SINCE = (0, 6, 7)
VRAM_CONTEXT_SINCE = (0, 15, 5)


def version_key(text: str) -> tuple[int, ...]:
    """ "v0.15.5-rc1" -> (0, 15, 5): comparable as versions (0.9.1 < 0.12.0), not strings; a part
    without digits counts 0."""
    core = text.lstrip("v").split("-", 1)[0].split("+", 1)[0]
    parts = []
    for piece in core.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def automatic_context_length(version: str, vram_bytes: int) -> int:
    """The automatic context length Ollama ``version`` gives a host with ``vram_bytes`` of GPU
    memory in all (0: none) when OLLAMA_CONTEXT_LENGTH is not set, before capping it at a
    model's trained length; 0 when no version is given, or Ollama built from source (which
    reports 0.0.0 whatever its code)."""
    return automatic_context(version, vram_bytes)[0]


def automatic_context(version: str, vram_bytes: int) -> tuple[int, str]:
    """automatic_context_length, and what picked it: "vram" (0.15.5 and later), "version" (an
    older version's fixed default), "" for none."""
    key = version_key(version)
    if not any(key):
        return 0, ""
    if key < CONTEXT_4096_SINCE:
        return 2048, "version"
    if key < VRAM_CONTEXT_SINCE:
        return 4096, "version"
    if vram_bytes < 24 * GIB:
        return 4096, "vram"
    return (32768 if vram_bytes < 48 * GIB else 262144), "vram"
