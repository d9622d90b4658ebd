"""What the edge reads of a host's reply, never changing what it relays: the counters of
Ollama's final chunk or of an OpenAI, Responses or Anthropic ``usage`` object (for the Report
that closes the lease), a 5xx's error text (to tell a request's own fault from its host's), and
a stream's in-band failure (a runner that failed after the 2xx went out). All of it is read
from the last TAIL_BYTES of the reply, which the proxy keeps as it relays.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import httpx
from hops.v1 import router_pb2

from edge.hostclient import HostResponse
from edge.upstream import ReadReply
from hopscommon.ollama_json import count

TAIL_BYTES = 16 * 1024


# The end of Ollama's /api/embed reply: after the vectors, its counters (total_duration,
# load_duration, prompt_eval_count; a zero left out), plain numbers to the closing brace.
EMBED_END = re.compile(rb'\]\s*((?:,\s*"[a-z_]+"\s*:\s*\d+\s*)+)\}\s*$')
# Those counters take about 110 bytes: only the tail's last EMBED_END_BYTES are searched, so
# every other reply (whose tail is up to TAIL_BYTES) costs about a microsecond, not twenty.
EMBED_END_BYTES = 1024


def final_stats(
    tail: bytes,
    ttfb: float = 0.0,
    finished: float = 0.0,
    events: int = 0,
    streamed: bool = True,
) -> router_pb2.GenerationStats | None:
    """Counters from Ollama's final chunk (the last line with "done":true), if it is in ``tail``,
    or from the end of its embed reply; else those the edge measures (the OpenAI, Responses and
    Anthropic routes: no durations).
    They are the tokens of the last ``usage`` object there, else ``events`` (a stream's token
    events counted); and for a reply that ended well ``finished`` seconds after it began, when
    ``streamed`` the times to its first token (``ttfb``) and from there to the last, else the
    whole reply's time (its first byte was its last)."""
    for line in reversed(tail.strip().split(b"\n")):
        if b'"done":true' not in line.replace(b" ", b""):
            continue
        try:
            final = json.loads(line)
        except (ValueError, RecursionError):
            return None
        if not isinstance(final, dict):
            return None
        # What the host says is data: a count that is not one (a string, a negative or
        # oversized number) counts as not said, and never keeps the lease from its report.
        return router_pb2.GenerationStats(
            total_duration_ns=count(final.get("total_duration")) or 0,
            load_duration_ns=count(final.get("load_duration")) or 0,
            prompt_eval_count=count(final.get("prompt_eval_count")) or 0,
            prompt_eval_duration_ns=count(final.get("prompt_eval_duration")) or 0,
            eval_count=count(final.get("eval_count")) or 0,
            eval_duration_ns=count(final.get("eval_duration")) or 0,
            prompt_eval_cached_count=count(final.get("prompt_eval_cached_count")),
        )
    embedded = embed_stats(tail)
    if embedded is not None:
        return embedded
    stats = usage_stats(tail)
    if not streamed:
        if stats is not None and (stats.eval_count or stats.prompt_eval_count) and finished > 0:
            stats.reply_ns = int(finished * 1e9)
        return stats
    # Only a stream that ended with OpenAI's success marker: a cut stream's events, or those
    # before an error event, are not the reply's length.
    if stats is None and events > 0 and finished and tail.rstrip().endswith(b"data: [DONE]"):
        stats = router_pb2.GenerationStats(eval_count=events)
    if stats is not None and finished > ttfb > 0:
        stats.first_token_ns = int(ttfb * 1e9)
        stats.eval_duration_ns = int((finished - ttfb) * 1e9)
    return stats


ERROR_TEXT_MAX = 256  # characters of a 5xx's error text sent to the control plane
ERROR_READ_S = 2.0  # for a 5xx's body before the next host is tried: Ollama sends it at once
# Ollama's 500s that the request earns itself, on any host alike: a wrongly typed option
# (api/types.go Options.FromMap), a format neither "json" nor a schema (the runner's check), an
# image no image decoder knows (the runner's inputs).
REQUEST_FAULTS = re.compile(
    r'option "[^"]*" must be of |invalid format: |failed to process inputs: image: unknown format'
)


async def error_reply(response: httpx.Response | HostResponse) -> ReadReply | None:
    """``response`` (an error status) read whole, or None when its body is over TAIL_BYTES or
    does not come within ERROR_READ_S (then it is not read on: the next host is tried)."""
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(ERROR_READ_S):
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > TAIL_BYTES:
                    return None
                chunks.append(chunk)
    except (TimeoutError, httpx.HTTPError, OSError):
        return None
    return ReadReply(response.status_code, response.headers, b"".join(chunks), response)


def error_text(body: bytes) -> str:
    """The error message a reply carries: Ollama's ``{"error": "..."}``, or the message of the
    OpenAI or Anthropic shape (``{"error": {"message": ...}}``); "" for anything else."""
    try:
        reply = json.loads(body)
    except (ValueError, RecursionError):
        return ""
    return _message(reply)


def _message(reply: Any) -> str:
    """error_text of a reply already parsed."""
    error = reply.get("error") if isinstance(reply, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return error[:ERROR_TEXT_MAX] if isinstance(error, str) else ""


def requests_fault(error: str) -> bool:
    """Whether a 5xx's error text is one Ollama gives for the request's own fault."""
    return REQUEST_FAULTS.match(error) is not None


GENERATING = ("/api/generate", "/api/chat")
OPENAI_STREAMS = ("/v1/chat/completions", "/v1/completions")  # these end with data: [DONE]


def in_band_failure(tail: bytes, content_type: str, path: str) -> str | None:
    """Whether a generation stream that began with a 2xx ended with Ollama's word that its
    runner failed, and that word: an ``{"error": ...}`` line closing an NDJSON stream (its
    text), or an OpenAI chat or completions stream ending without its ``data: [DONE]`` (""):
    Ollama swallows the error there. None when it did not fail so. Other streams' errors (a
    pull of a name the registry lacks) are not the host's fault."""
    end = tail.rstrip()
    if "ndjson" in content_type and path in GENERATING:
        last = end.rsplit(b"\n", 1)[-1]
        if b'"error"' not in last:
            return None
        try:
            line = json.loads(last)
        except (ValueError, RecursionError):
            return None
        if not (isinstance(line, dict) and "error" in line and "done" not in line):
            return None
        return _message(line)
    if "event-stream" in content_type and path in OPENAI_STREAMS:
        return None if end.endswith(b"data: [DONE]") else ""
    return None


USAGE = re.compile(rb'"usage"\s*:\s*')


def embed_stats(tail: bytes) -> router_pb2.GenerationStats | None:
    """The counters that close Ollama's /api/embed reply, if ``tail`` ends with them: the
    reply's whole time, its load's, and the tokens of its inputs."""
    end = EMBED_END.search(tail, max(len(tail) - EMBED_END_BYTES, 0))
    if end is None:
        return None
    try:
        counters = json.loads(b"{" + end.group(1).lstrip()[1:] + b"}")
    except (ValueError, RecursionError):
        return None
    total = count(counters.get("total_duration"))
    if not total:
        return None
    return router_pb2.GenerationStats(
        total_duration_ns=total,
        load_duration_ns=count(counters.get("load_duration")) or 0,
        prompt_eval_count=count(counters.get("prompt_eval_count")) or 0,
    )


def usage_stats(tail: bytes) -> router_pb2.GenerationStats | None:
    """The token counts of the last ``usage`` object in ``tail``: OpenAI's prompt_tokens and
    completion_tokens, or input_tokens and output_tokens (Responses, Anthropic), and the cached
    part of the prompt where it is told (prompt_tokens_details / input_tokens_details); an
    embedding's (/v1/embeddings) counts its inputs only."""
    starts = [m.end() for m in USAGE.finditer(tail)]
    if not starts:
        return None
    try:
        usage, _ = json.JSONDecoder().raw_decode(tail[starts[-1] :].decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(usage, dict):
        return None
    prompt = count(usage.get("prompt_tokens", usage.get("input_tokens"))) or 0
    if prompt and not usage.keys() & {"completion_tokens", "output_tokens"}:
        return router_pb2.GenerationStats(prompt_eval_count=prompt)  # an embedding's: inputs
    output = count(usage.get("completion_tokens", usage.get("output_tokens")))
    if not output:
        return None
    details = usage.get("prompt_tokens_details", usage.get("input_tokens_details"))
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    return router_pb2.GenerationStats(
        prompt_eval_count=prompt, eval_count=output, prompt_eval_cached_count=count(cached)
    )
