"""Models the simulator knows: realistic sizes, families, capabilities (Ollama library figures).

A name missing from the catalogue is sized from its tag when the tag names a parameter count
(``foo:7b`` -> about 0.6 bytes per parameter, as Q4_K_M weighs), or from an explicit size given on
the command line (``mymodel:latest=4.1GB``). Anything else does not exist, as on a real registry.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace

from hopscommon import names
from hopscommon.runner_options import RunnerOptions
from hopscommon.units import parse_bytes

GB = 1000**3
MB = 1000**2
BLOB_DIR = "/root/.ollama/models/blobs"  # where a Linux service install keeps them

COMPLETION = "completion"
TOOLS = "tools"
EMBEDDING = "embedding"
VISION = "vision"
THINKING = "thinking"
INSERT = "insert"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """One model as a registry would serve it."""

    name: str
    size_bytes: int
    family: str
    parameter_size: str
    quantization: str
    params_billions: float
    context_length: int
    embedding_length: int
    capabilities: tuple[str, ...]
    digest: str  # manifest, 64 hex; a copy made with /api/copy keeps it
    weights: str  # the weights blob, 64 hex: its runner's key (Ollama's ModelPath)
    lines: tuple[str, ...] = ()  # Modelfile lines /api/create added (SYSTEM, PARAMETER, ...)
    system: str = ""  # its SYSTEM: the system prompt of a request that gives none
    num_ctx: int = 0  # PARAMETER num_ctx: the context length of a request naming none
    options: RunnerOptions = ()  # the runner options a request naming none runs with
    adapters: tuple[str, ...] = ()  # ADAPTER blobs
    projector: str = ""  # a vision projector's blob, 64 hex (llava's); "" = none

    @property
    def is_embedding_only(self) -> bool:
        return EMBEDDING in self.capabilities and COMPLETION not in self.capabilities

    def renamed(self, name: str) -> ModelSpec:
        return replace(self, name=name)


def _m(
    name: str,
    size: float,
    family: str,
    params: float,
    caps: tuple[str, ...] = (COMPLETION,),
    *,
    ctx: int = 131072,
    emb: int = 4096,
    quant: str = "Q4_K_M",
    projector: bool = False,
) -> ModelSpec:
    shown = f"{params:.1f}B" if params >= 1 else f"{params * 1000:.0f}M"
    size_bytes = round(size * GB)
    digest = hashlib.sha256(f"{name}/{size_bytes}".encode()).hexdigest()
    weights = hashlib.sha256(f"{name}/{size_bytes}/weights".encode()).hexdigest()
    spec = ModelSpec(
        name, size_bytes, family, shown, quant, params, ctx, emb, caps, digest, weights
    )
    if projector:
        return replace(spec, projector=hashlib.sha256(f"{name}/projector".encode()).hexdigest())
    return spec


def blob_path(hex_digest: str) -> str:
    """A blob's file, as /api/show's modelfile names it."""
    return f"{BLOB_DIR}/sha256-{hex_digest}"


_CT = (COMPLETION, TOOLS)
_CTT = (COMPLETION, TOOLS, THINKING)
_EMB = (EMBEDDING,)

CATALOGUE: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        _m("llama3.2:1b", 1.3, "llama", 1.24, _CT, emb=2048),
        _m("llama3.2:latest", 2.0, "llama", 3.21, _CT, emb=3072),
        _m("llama3.1:8b", 4.9, "llama", 8.03, _CT),
        _m("llama3.1:70b", 43.0, "llama", 70.6, _CT, emb=8192),
        _m("mistral:latest", 4.1, "llama", 7.25, _CT, ctx=32768),
        _m("qwen2.5:0.5b", 0.398, "qwen2", 0.494, _CT, ctx=32768, emb=896),
        _m("qwen2.5:7b", 4.7, "qwen2", 7.62, _CT, ctx=32768, emb=3584),
        _m("qwen2.5:14b", 9.0, "qwen2", 14.8, _CT, ctx=32768, emb=5120),
        _m("qwen2.5:32b", 20.0, "qwen2", 32.8, _CT, ctx=32768, emb=5120),
        _m("qwen2.5-coder:7b", 4.7, "qwen2", 7.62, (COMPLETION, TOOLS, INSERT), ctx=32768),
        _m("qwen3:8b", 5.2, "qwen3", 8.19, _CTT, ctx=40960),
        _m("qwen3:30b", 19.0, "qwen3moe", 30.5, _CTT, ctx=40960, emb=2048),
        _m("deepseek-r1:8b", 5.2, "qwen3", 8.19, (COMPLETION, THINKING), ctx=131072),
        _m("deepseek-r1:14b", 9.0, "qwen2", 14.8, (COMPLETION, THINKING), ctx=131072),
        _m("gemma3:4b", 3.3, "gemma3", 4.3, (COMPLETION, VISION), emb=2560),
        _m("gemma3:12b", 8.1, "gemma3", 12.2, (COMPLETION, VISION), emb=3840),
        _m("gemma3:27b", 17.0, "gemma3", 27.4, (COMPLETION, VISION), emb=5376),
        _m("phi4:latest", 9.1, "phi3", 14.7, (COMPLETION,), ctx=16384, emb=5120),
        _m("gpt-oss:20b", 14.0, "gptoss", 20.9, _CTT, emb=2880, quant="MXFP4"),
        # llava keeps its vision projector in a blob of its own; gemma3's is in its weights
        _m("llava:7b", 4.7, "llama", 7.24, (COMPLETION, VISION), ctx=32768, projector=True),
        _m(
            "nomic-embed-text:latest",
            0.274,
            "nomic-bert",
            0.137,
            _EMB,
            ctx=2048,
            emb=768,
            quant="F16",
        ),
        _m("mxbai-embed-large:latest", 0.670, "bert", 0.334, _EMB, ctx=512, emb=1024, quant="F16"),
        _m("all-minilm:latest", 0.046, "bert", 0.023, _EMB, ctx=512, emb=384, quant="F16"),
        _m("bge-m3:latest", 1.2, "bert", 0.567, _EMB, ctx=8192, emb=1024, quant="F16"),
    )
}

_PARAMS_IN_TAG = re.compile(r"(?:^|[-_])(\d+(?:\.\d+)?)([bm])(?:$|[-_])", re.IGNORECASE)
BYTES_PER_PARAM_Q4 = 0.6


def lookup(raw_name: str, extra: dict[str, ModelSpec] | None = None) -> ModelSpec | None:
    """The spec a registry would serve for ``raw_name``, None when no such model exists."""
    parsed = names.parse(raw_name)
    if parsed is None:
        return None
    for table in (extra or {}, CATALOGUE):
        for spec in table.values():
            if names.match_key(spec.name) == parsed.key:
                return spec.renamed(parsed.display)
    return _sized_from_tag(parsed.display, parsed.tag)


def _sized_from_tag(display: str, tag: str) -> ModelSpec | None:
    match = _PARAMS_IN_TAG.search(tag)
    if not match:
        return None
    params = float(match.group(1)) / (1000 if match.group(2).lower() == "m" else 1)
    size = params * BYTES_PER_PARAM_Q4
    return _m(display, size, "llama", params, _CT)


def parse_model_arg(text: str) -> ModelSpec:
    """A ``--models`` entry: a known name, a name sized by its tag, or ``name=SIZE``."""
    name, _, size_text = text.partition("=")
    display = names.normalize(name)
    if display is None:
        raise ValueError(f"invalid model name {name!r}")
    if size_text:
        size = parse_bytes(size_text)
        params = size / GB / BYTES_PER_PARAM_Q4
        return _m(display, size / GB, "llama", round(params, 2), _CT)
    spec = lookup(display)
    if spec is None:
        raise ValueError(
            f"unknown model {name!r}: not in the catalogue and no size in its tag; "
            "give one as NAME=SIZE (e.g. mymodel:latest=4GB)"
        )
    return spec
