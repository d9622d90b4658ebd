"""The node agent's settings: one frozen object, every field a flag and a HOPS_AGENT_* variable."""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc

from hopscommon.labels import parse_label
from hopscommon.settings import load, option, optional_address, parse_addresses
from hopscommon.tls import client_credentials
from hopscommon.units import parse_bytes, parse_seconds

ENV_PREFIX = "HOPS_AGENT_"
GPU_MODES = ("auto", "nvml", "nvidia-smi", "static", "none")


def _url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http(s) URL, got {text!r}")
    return text.strip().rstrip("/")


def _optional_url(text: str) -> str:
    return _url(text) if text.strip() else ""


def _gpu_mode(text: str) -> str:
    if text not in GPU_MODES:
        raise ValueError(f"choose one of {', '.join(GPU_MODES)}")
    return text


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    """Where the agent reports to, which Ollama it watches and what it says about the node."""

    controlplane: tuple[str, ...] = option(
        ("127.0.0.1:50051",),
        "control plane(s), HOST:PORT[,HOST:PORT]; each gets a full view",
        parse=parse_addresses,
        shown="127.0.0.1:50051",
    )
    ollama_url: str = option("http://127.0.0.1:11434", "this host's Ollama", parse=_url)
    advertise_url: str = option(
        "", "Ollama URL edges should use (default: --ollama-url)", parse=_optional_url
    )
    node_id: str = option("", "node id, unique in the fleet (default: the host name)")
    label: tuple[tuple[str, str], ...] = option(
        (), "KEY=VALUE routing label (repeatable)", parse=parse_label, repeated=True
    )
    weight: float = option(1.0, "relative routing weight of this node", parse=float)
    num_parallel: int = option(
        1, "OLLAMA_NUM_PARALLEL of this host's Ollama (parallel slots per model)", parse=int
    )
    max_loaded_models: int = option(0, "OLLAMA_MAX_LOADED_MODELS of this host", parse=int)
    max_queue: int = option(512, "OLLAMA_MAX_QUEUE of this host", parse=int)
    context_length: int = option(
        0,
        "OLLAMA_CONTEXT_LENGTH of this host, where set (0 = not set). Ollama runs a request "
        "naming no num_ctx at it, and no API says what it is: unset, routing takes Ollama's "
        "default for the version (from 0.15.5 by VRAM) until a reply shows the length",
        parse=int,
    )
    max_in_flight: int = option(
        0, "most requests HOPS may send here at once (0 = no limit of its own)", parse=int
    )
    poll_interval: float = option(1.0, "seconds between local Ollama polls", parse=parse_seconds)
    keepalive_interval: float = option(
        5.0, "seconds between keepalives when nothing changed", parse=parse_seconds
    )
    gpu: str = option(
        "auto",
        f"GPU probe: {', '.join(GPU_MODES)} (static: declare --gpu-memory, e.g. for GPUs NVML "
        "cannot see or simulated hosts; free memory is then total minus loaded models)",
        parse=_gpu_mode,
    )
    gpu_memory: int = option(0, "GPU memory for --gpu static, e.g. 24GiB", parse=parse_bytes)
    gpu_name: str = option("", "GPU name reported with --gpu static")
    backoff_min: float = option(0.2, "first reconnect delay, seconds", parse=parse_seconds)
    backoff_max: float = option(10.0, "longest reconnect delay, seconds", parse=parse_seconds)
    token: str = option(
        "", "the control planes' agent token (sent as authorization: Bearer T)", shown="none"
    )
    tls_ca: str = option("", "PEM CA to trust for TLS to the control planes; empty = plaintext")
    tls_cert: str = option("", "PEM client certificate for mutual TLS (with --tls-key)")
    tls_key: str = option("", "PEM private key of --tls-cert")
    metrics_listen: tuple[str, int] | None = option(
        None,
        "HOST:PORT for HTTP /metrics and /healthz, e.g. 127.0.0.1:9465 (off unless set)",
        parse=optional_address,
        shown="off",
    )
    log_level: str = option("info", "log level: debug, info, warning, error")

    def validate(self) -> None:
        if self.poll_interval <= 0 or self.keepalive_interval <= 0:
            raise ValueError("--poll-interval and --keepalive-interval must be > 0")
        if not 0 < self.backoff_min <= self.backoff_max:
            raise ValueError("need 0 < --backoff-min <= --backoff-max")
        if not 1 <= self.num_parallel < 2**32:
            raise ValueError("--num-parallel must be a whole number from 1 to 4294967295")
        for name in ("max_loaded_models", "max_queue", "max_in_flight", "context_length"):
            if not 0 <= getattr(self, name) < 2**32:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be a whole number from 0 to {2**32 - 1}")
        self.channel_credentials()
        if self.gpu == "static" and self.gpu_memory <= 0:
            raise ValueError("--gpu static needs --gpu-memory (e.g. 24GiB)")

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        return client_credentials(self.tls_ca, self.tls_cert, self.tls_key, "agent")

    @property
    def effective_node_id(self) -> str:
        return self.node_id or socket.gethostname()

    @property
    def effective_advertise_url(self) -> str:
        return self.advertise_url or self.ollama_url


def load_settings(argv: Sequence[str] | None = None) -> AgentSettings:
    return load(
        AgentSettings,
        argv,
        os.environ,
        prog="hops-nodeagent",
        description=(
            "The HOPS node agent: watches this host's Ollama (/api/version, /api/tags, /api/ps) "
            "and GPU memory, keeps a stream open to every control plane, and runs the pull, "
            "unload and preload commands they send."
        ),
        env_prefix=ENV_PREFIX,
    )
