"""What the edge reads of a request to route it. The body is read once, size-capped and
time-limited (RequestReader), and only a few things are looked at, never re-encoded: the model,
whether it is Ollama's unload, the context length and reply limit asked, about how long its
prompt is, the conversation it belongs to (a session key), and the labels its hosts must carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any

from starlette.datastructures import Headers
from starlette.types import Receive, Scope

from edge.errors import BadRequest, BodyTimeout, BodyTooLarge, EdgeError
from edge.settings import EdgeSettings
from hopscommon import labels
from hopscommon.labels import Labels
from hopscommon.ollama_json import BodyError, decode_object
from hopscommon.tokens import IMAGE_TOKENS, UNITS_PER_TOKEN, text_units
from hopscommon.units import parse_go_duration


class RequestReader:
    """Reads request bodies and label headers as the edge's settings allow."""

    def __init__(self, settings: EdgeSettings) -> None:
        self.settings = settings
        self.labels = labels.selector(settings.labels)  # the edge's own --labels

    async def body(self, scope: Scope, receive: Receive) -> bytes:
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        limit = self.settings.max_body
        if declared and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge(f"request body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.settings.body_timeout):  # a slow client holds nothing
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise EdgeError("client disconnected while sending the body")
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        raise BodyTooLarge(f"request body larger than {limit} bytes")
                    chunks.append(chunk)
                    if not message.get("more_body"):
                        return b"".join(chunks)
        except TimeoutError:
            raise BodyTimeout(
                f"request body not received within {self.settings.body_timeout:g}s"
            ) from None

    async def json_body(
        self, scope: Scope, receive: Receive, go_type: str
    ) -> tuple[bytes, dict[str, Any]]:
        """The body as sent and as a JSON object, or BadRequest in the words Ollama would use."""
        raw = await self.body(scope, receive)
        try:
            return raw, decode_object(raw, go_type)
        except BodyError as exc:
            raise BadRequest(str(exc)) from None

    def labels_of(self, headers: Headers) -> Labels:
        """The labels every host this request may use must carry: the edge's --labels,
        narrowed by the request's X-Hops-Labels (``KEY=VALUE[, KEY=VALUE ...]``)."""
        asked = headers.get("x-hops-labels")
        if asked is None:
            return self.labels
        try:
            wanted = labels.parse_selector(asked)
        except ValueError as exc:
            raise BadRequest(f"X-Hops-Labels: {exc}") from None
        own = dict(self.labels)
        for key, value in wanted:
            if own.get(key, value) != value:
                raise BadRequest(
                    f"X-Hops-Labels asks {key}={value}, but this edge serves only hosts "
                    f"with {key}={own[key]}"
                )
        try:
            return labels.selector((*self.labels, *wanted))
        except ValueError as exc:
            raise BadRequest(f"X-Hops-Labels: {exc}") from None


def unloads(path: str, body: dict[str, Any]) -> bool:
    """Whether this is Ollama's unload request: a generate without a prompt, or a chat without
    messages, with ``keep_alive`` 0 (what `ollama stop` and Open WebUI's unload send). The model
    may be loaded on several hosts, so every one of them must hear it, not one picked host."""
    if path == "/api/generate":
        empty = body.get("prompt") in (None, "")
    elif path == "/api/chat":
        empty = body.get("messages") in (None, [])
    else:
        return False
    value = body.get("keep_alive")
    if not empty or isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == 0
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # a bad value is the host's 400 to give
            return parse_go_duration(value) == 0
    return False


def _option(body: dict[str, Any], name: str) -> object:
    """``options[name]`` of a native request's body, None when not there."""
    options = body.get("options")
    return options.get(name) if isinstance(options, dict) else None


def _uint32(value: object) -> int:
    """A JSON number as a PickRequest uint32 field takes it: clamped to 0..2**32-1, and 0 for
    anything else (a bool, a string, NaN), which is the host's error to give."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
        return 0
    return int(min(max(value, 0), 2**32 - 1))


def num_ctx(body: dict[str, Any]) -> int:
    """The context length a native request asks for (``options.num_ctx``), 0 for none: a host
    with the model loaded at another length reloads it. (Ollama's /v1 routes take no options.)"""
    return _uint32(_option(body, "num_ctx"))


# Keys whose values are not prompt text: images (base64, or a data URI), and request settings.
NOT_PROMPT = frozenset(
    {"model", "images", "image_url", "source", "options", "format", "keep_alive", "stream"}
)


# The content parts that carry an image: OpenAI chat's, the Responses API's, Anthropic's.
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
IMAGE_UNITS = IMAGE_TOKENS * UNITS_PER_TOKEN


def prompt_tokens(body: dict[str, Any]) -> int:
    """About how many tokens the request's prompt has: every string in the body (messages,
    prompt, system, tools, ...) but images' data and settings (see hopscommon.tokens), and
    IMAGE_TOKENS an image, as Ollama counts one when fitting a chat into its context. The router
    weighs a long prompt's evaluation on each host, what a session's host has of it cached,
    and whether it fits the context length it would run at there."""
    units = 0
    stack: list[Any] = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, str):
            units += text_units(value)
        elif isinstance(value, dict):
            images = value.get("images")  # Ollama's: a message's, or a generate's
            if isinstance(images, list):
                units += len(images) * IMAGE_UNITS
            kind = value.get("type")
            if isinstance(kind, str) and kind in IMAGE_PARTS:
                units += IMAGE_UNITS
            stack.extend(v for k, v in value.items() if k not in NOT_PROMPT)
        elif isinstance(value, list):
            stack.extend(value)
    return min(units // UNITS_PER_TOKEN, 2**32 - 1)


def longest_input(body: dict[str, Any]) -> int:
    """About how many tokens an embedding's longest input has: ``input`` (a text, texts, or
    OpenAI's token arrays, counted as they are), else the old ``prompt``. Ollama embeds each
    input apart, and cuts one longer than the context length it runs at."""
    value = body.get("input", body.get("prompt"))
    inputs = value if isinstance(value, list) and not _tokens(value) else [value]
    longest = 0
    for one in inputs:
        if isinstance(one, str):
            longest = max(longest, text_units(one) // UNITS_PER_TOKEN)
        elif isinstance(one, list) and _tokens(one):
            longest = max(longest, len(one))
    return min(longest, 2**32 - 1)


# Where each API bounds its reply: OpenAI chat's newer and older names, the Responses API's, and
# /v1/completions' and Anthropic's max_tokens. (Ollama's native routes: options.num_predict.)
REPLY_LIMITS = ("max_completion_tokens", "max_output_tokens", "max_tokens")


def max_reply(body: dict[str, Any], native: bool) -> int:
    """The most tokens a generation's reply may run to, 0 for no limit asked (a negative
    num_predict is Ollama's "no limit" too): a reply expected shorter than the model's usual
    one needs less room beside its prompt."""
    if native:
        return _uint32(_option(body, "num_predict"))
    return _uint32(next((body[k] for k in REPLY_LIMITS if body.get(k) is not None), None))


def _tokens(value: list[Any]) -> bool:
    """Whether ``value`` is one input given as token ids (OpenAI's embeddings accept them)."""
    return bool(value) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)


def session_key(headers: Headers, body: dict[str, Any]) -> str:
    """X-Hops-Session, else Open WebUI's chat id, else OpenAI's ``prompt_cache_key``, else a hash
    of the conversation's start: its system prompt (Anthropic's ``system``, the Responses API's
    ``instructions``) and messages (or Responses ``input`` items) up to the first user turn, or
    the prompt (or ``input`` text)."""
    explicit = headers.get("x-hops-session") or headers.get("x-openwebui-chat-id")
    if explicit:
        return explicit[:200]
    cache_key = body.get("prompt_cache_key")  # OpenAI's own affinity hint (Responses, chat)
    if isinstance(cache_key, str) and cache_key:
        return "p:" + cache_key[:200]
    system = body.get("system") or body.get("instructions") or ""
    messages = body.get("messages") or body.get("input")
    prompt = body.get("prompt") or body.get("input")
    if isinstance(messages, list) and messages:
        # The conversation's opening (system prompt and first user turn) is the same in every
        # later turn, so all turns of one conversation share the key.
        opening = [system] if system else []
        for message in messages:
            opening.append(message)
            if isinstance(message, dict) and message.get("role") == "user":
                break
        basis = json.dumps(opening, sort_keys=True, default=str)[:4096]
    elif isinstance(prompt, str) and prompt:
        basis = str(system) + prompt[:512]
    else:
        return ""
    return "h:" + hashlib.sha1(basis.encode(), usedforsecurity=False).hexdigest()[:16]


def created_model(raw: bytes) -> str:
    """The model a create request makes ("" when its body names none)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        return ""
    model = body.get("model") or body.get("name") if isinstance(body, dict) else ""
    return model if isinstance(model, str) else ""
