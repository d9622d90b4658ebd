"""The simulator's settings: one frozen object, every field a flag and a HOPS_SIM_* variable."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from hopscommon.ollama_versions import automatic_context_length
from hopscommon.settings import load, option, parse_bool, parse_host_port
from hopscommon.units import parse_bytes, parse_seconds
from ollamasim.catalogue import ModelSpec, parse_model_arg
from ollamasim.faults import FaultSpec
from ollamasim.profiles import PROFILES, Profile

ENV_PREFIX = "HOPS_SIM_"


def _models(text: str) -> tuple[ModelSpec, ...]:
    return tuple(parse_model_arg(item.strip()) for item in text.split(",") if item.strip())


def _token_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    lo, hi = int(low), int(high or low)
    if not 1 <= lo <= hi:
        raise ValueError(f"expected MIN-MAX with 1 <= MIN <= MAX, got {text!r}")
    return lo, hi


def _profile(text: str) -> str:
    if text not in PROFILES:
        raise ValueError(f"unknown profile {text!r}; choose one of {', '.join(PROFILES)}")
    return text


def _keep_alive(text: str) -> float:
    # OLLAMA_KEEP_ALIVE accepts bare integers (seconds) as well as Go durations.
    return parse_seconds(text)


@dataclass(frozen=True, kw_only=True)
class SimSettings:
    """How one simulated Ollama host behaves."""

    listen: tuple[str, int] = option(
        ("127.0.0.1", 11434),
        "HOST:PORT the Ollama API listens on",
        parse=parse_host_port,
        shown="127.0.0.1:11434",
    )
    control_listen: tuple[str, int] | None = option(
        None,
        "optional extra HOST:PORT serving only the /_sim control routes, so a 'refuse' fault "
        "can be lifted while the API port refuses connections",
        parse=parse_host_port,
    )
    origins: tuple[str, ...] = option(
        (),
        "OLLAMA_ORIGINS: origins browsers may call from besides Ollama's defaults (localhost, "
        "app://, file://, tauri://, vscode-webview://); '*' wildcards",
        repeated=True,
        metavar="ORIGIN",
    )
    profile: str = option(
        "gpu-24g", f"host profile: {', '.join(PROFILES)}", parse=_profile, metavar="NAME"
    )
    models: tuple[ModelSpec, ...] | None = option(
        None,
        "installed models, comma-separated (NAME, NAME:7b sized by tag, or NAME=SIZE); "
        "default: the profile's",
        parse=_models,
        metavar="A,B,C",
    )
    seed: int = option(0, "seed for generated text, embeddings and fault draws", parse=int)
    time_scale: float = option(
        1.0,
        "run this many times faster than real time (loads, decoding, keep-alive); replies report "
        "durations in simulated time, but a clock outside (the edge timing an OpenAI stream) "
        "sees real time, so keep 1 where speeds are learned from both",
        parse=float,
    )
    vram: int | None = option(
        None, "GPU memory, e.g. 8GiB (0 = no GPU); default: the profile's", parse=parse_bytes
    )
    ram: int | None = option(None, "system memory; default: the profile's", parse=parse_bytes)
    speed: float = option(1.0, "multiplier on the profile's decode and load speed", parse=float)
    num_parallel: int = option(1, "OLLAMA_NUM_PARALLEL: parallel slots per loaded model", parse=int)
    multiuser_cache: bool = option(
        False,
        "OLLAMA_MULTIUSER_CACHE: a request takes the KV-cache slot holding its conversation, "
        "else the least recently used one (default: the free slot sharing the longest prefix)",
        parse=parse_bool,
    )
    max_loaded_models: int = option(
        0, "OLLAMA_MAX_LOADED_MODELS (0 = 3 per GPU, 3 on CPU)", parse=int
    )
    max_queue: int = option(
        512, "OLLAMA_MAX_QUEUE: requests waiting for a load before 503", parse=int
    )
    keep_alive: float = option(
        300.0, "OLLAMA_KEEP_ALIVE default, seconds or a duration like 5m", parse=_keep_alive
    )
    context_length: int = option(
        0,
        "OLLAMA_CONTEXT_LENGTH (0 = automatic for the --version reported: 2048 before 0.6.7, "
        "then 4096; from 0.15.5 by total VRAM, 4096 under 24 GiB, 32768 under 48 GiB, else "
        "262144)",
        parse=int,
    )
    response_tokens: tuple[int, int] = option(
        (16, 96),
        "MIN-MAX tokens a reply runs to when num_predict does not stop it first",
        parse=_token_range,
        shown="16-96",
    )
    version: str = option("0.12.6", "version reported by /api/version")
    fault: FaultSpec | None = option(
        None,
        "fault active at start: MODE[:key=value,...], MODE one of refuse, busy, hang, drop, "
        "slow, error, stream_error (e.g. drop:after_chunks=3,rate=0.5)",
        parse=FaultSpec.parse,
        metavar="FAULT",
    )
    log_level: str = option("warning", "log level: debug, info, warning, error")

    def validate(self) -> None:
        if self.time_scale <= 0:
            raise ValueError("--time-scale must be > 0")
        if self.speed <= 0:
            raise ValueError("--speed must be > 0")
        if self.num_parallel < 1:
            raise ValueError("--num-parallel must be >= 1")
        if self.max_queue < 0 or self.max_loaded_models < 0 or self.context_length < 0:
            raise ValueError("--max-queue, --max-loaded-models and --context-length must be >= 0")

    @property
    def host_profile(self) -> Profile:
        return PROFILES[self.profile]

    def automatic_context(self, vram_bytes: int) -> int:
        """The context length of a request naming none: OLLAMA_CONTEXT_LENGTH, else Ollama's
        default for the version (2048 before 0.6.7, then 4096; from 0.15.5 picked from the
        host's total VRAM)."""
        return self.context_length or automatic_context_length(self.version, vram_bytes) or 4096


def load_settings(argv: Sequence[str] | None = None) -> SimSettings:
    return load(
        SimSettings,
        argv,
        os.environ,
        prog="hops-ollamasim",
        description=(
            "A simulated Ollama host: the Ollama and OpenAI-compatible HTTP API with realistic "
            "model loading, eviction, parallel slots, queueing, decode speed and faults.\n"
            "Control routes (outside the Ollama namespace): GET /_sim/stats, "
            "POST /_sim/stats/reset, GET|PUT|DELETE /_sim/fault, GET /_sim/config."
        ),
        env_prefix=ENV_PREFIX,
    )
