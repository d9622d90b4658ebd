"""Ollama model names, parsed and shown the way Ollama does (types/model/name.go).

Grammar: ``[scheme://][host/][namespace/]model[:tag]``. Defaults: host ``registry.ollama.ai``,
namespace ``library``, tag ``latest``. A ``:local`` suffix asks for the local model of that name
(it is dropped); a ``:cloud`` suffix after a tag names the same cloud model as a ``-cloud`` tag
(``gpt-oss:20b:cloud`` is ``gpt-oss:20b-cloud``); both suffixes at once are invalid. The display
form drops a default host and namespace and always keeps the tag (``llama3`` ->
``llama3:latest``). Matching is case-insensitive, so lookups use :func:`match_key`; answers echo
the caller's spelling.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

_HOST = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}")
_NAMESPACE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}")


@dataclass(frozen=True, slots=True)
class ModelName:
    """A parsed, valid model name; every part filled in with Ollama's defaults."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def display(self) -> str:
        """The shortest form Ollama shows in /api/tags, /api/ps and /v1/models."""
        if self.host.casefold() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.casefold() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def full(self) -> str:
        """The fully qualified form used in some Ollama error texts."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """Case-insensitive identity: equal for every spelling of the same model."""
        return self.display.casefold()


def parse(raw: str) -> ModelName | None:
    """Parse a model string; None when it is empty or not a valid Ollama name."""
    text = raw.strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = _without_suffix(text)
    if not text or "@" in text:
        return None
    tag = DEFAULT_TAG
    colon = text.rfind(":")
    if colon > text.rfind("/"):
        text, tag = text[:colon], text[colon + 1 :]
    parts = text.split("/")
    if len(parts) > 3:
        return None
    model = parts[-1]
    namespace = parts[-2] if len(parts) >= 2 else DEFAULT_NAMESPACE
    host = parts[-3] if len(parts) == 3 else DEFAULT_HOST
    if not (
        _PART.fullmatch(model)
        and _PART.fullmatch(tag)
        and _NAMESPACE.fullmatch(namespace)
        and _HOST.fullmatch(host)
    ):
        return None
    return ModelName(host=host, namespace=namespace, model=model, tag=tag)


def _without_suffix(text: str) -> str:
    """``text`` with a ``:local`` suffix dropped and a ``:cloud`` one after a tag folded into it
    (``m:20b:cloud`` -> ``m:20b-cloud``); '' (invalid) when it carries both."""
    folded = text.casefold()
    if folded.endswith(":local"):
        rest = text[: -len(":local")]
        return "" if _cloud(_tag_of(rest)) else rest
    if folded.endswith(":cloud"):
        rest = text[: -len(":cloud")]
        if _tag_of(rest):
            return rest + "-cloud"
    return text


def _tag_of(text: str) -> str:
    """The tag written in ``text`` ('' when there is none)."""
    colon = text.rfind(":")
    return text[colon + 1 :] if colon > text.rfind("/") else ""


def _cloud(tag: str) -> bool:
    folded = tag.casefold()
    return folded == "cloud" or folded.endswith("-cloud")


@functools.lru_cache(maxsize=1024)
def is_cloud(key: str) -> bool:
    """Whether the model named by ``key`` runs on ollama.com, not on its host: its tag is
    ``cloud`` or ends in ``-cloud``. Such a model takes no memory and never loads."""
    name = parse(key)
    return name is not None and _cloud(name.tag)


def normalize(raw: str) -> str | None:
    """The display form of ``raw`` (``llama3`` -> ``llama3:latest``), None when invalid."""
    name = parse(raw)
    return name.display if name else None


@functools.lru_cache(maxsize=4096)
def match_key(raw: str) -> str | None:
    """The case-insensitive lookup key of ``raw``, None when invalid."""
    name = parse(raw)
    return name.key if name else None


def model_key(raw: str) -> str:
    """The key the control plane files a model under (and admin answers use): ``match_key``,
    else the name folded to lower case."""
    return match_key(raw) or raw.casefold()
