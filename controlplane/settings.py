"""The control plane's settings: one frozen object, every field a flag and a HOPS_CP_* variable."""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from controlplane.policies import REGISTRY
from controlplane.static_hosts import load_hosts
from hopscommon.settings import load, option, optional_address, parse_host_port
from hopscommon.tls import check_pair, server_credentials, server_ssl_context
from hopscommon.units import parse_seconds

ENV_PREFIX = "HOPS_CP_"


def _policy(text: str) -> str:
    if text not in REGISTRY:
        raise ValueError(f"unknown policy {text!r}; choose one of {', '.join(REGISTRY)}")
    return text


def _route_listen(text: str) -> str:
    text = text.strip()
    if text.lower() in ("auto", "off"):
        return text.lower()
    parse_host_port(text)
    return text


@dataclass(frozen=True, kw_only=True)
class ControlPlaneSettings:
    """How the control plane listens, routes and forgets."""

    listen: tuple[str, int] = option(
        ("0.0.0.0", 50051),
        "HOST:PORT for gRPC (agents, edges, admins)",
        parse=parse_host_port,
        shown="0.0.0.0:50051",
    )
    metrics_listen: tuple[str, int] | None = option(
        ("127.0.0.1", 9464),
        "HOST:PORT for HTTP: the dashboard (/), /api/state, /metrics, /healthz ('off' to disable)",
        parse=optional_address,
        shown="127.0.0.1:9464",
    )
    route_listen: str = option(
        "auto",
        "HOST:PORT of the route socket, the edges' fast path for picks (told to edges in their "
        "session; with --tls-cert it uses the same TLS); 'auto' = --listen's host on a free "
        "port; 'off' = edges use gRPC only",
        parse=_route_listen,
        metavar="HOST:PORT|auto|off",
    )
    policy: str = option(
        "memory_aware", f"routing policy: {', '.join(REGISTRY)}", parse=_policy, metavar="NAME"
    )
    seed: int | None = option(None, "seed for randomised policies (reproducible runs)", parse=int)
    max_candidates: int = option(3, "candidates returned per pick (primary + fallbacks)", parse=int)
    lease_ttl: float = option(
        1800.0, "seconds after which a lease nobody reported is released", parse=parse_seconds
    )
    breaker_failures: int = option(
        3, "consecutive host failures that open a node's breaker", parse=int
    )
    breaker_cooldown: float = option(
        10.0, "seconds an open breaker keeps a node out before a probe", parse=parse_seconds
    )
    retry_after: float = option(
        2.0, "Retry-After seconds suggested when no host can take work", parse=parse_seconds
    )
    keepalive_interval: float = option(
        5.0, "seconds between keepalives on agent streams", parse=parse_seconds
    )
    agent_timeout: float = option(
        20.0, "seconds without any message before an agent stream is closed", parse=parse_seconds
    )
    forget_after: float = option(
        300.0, "seconds an offline node stays visible to admins", parse=parse_seconds
    )
    command_timeout: float = option(
        600.0,
        "seconds to wait for an agent to finish a command (pull, preload)",
        parse=parse_seconds,
    )
    queue_per_slot: int = option(
        4,
        "requests in flight per parallel slot (OLLAMA_NUM_PARALLEL) before a host counts as "
        "saturated, unless its agent sets --max-in-flight (0 = no cap)",
        parse=int,
    )
    admission_wait: float = option(
        20.0,
        "seconds a request may wait for a slot when every host is saturated before 503 "
        "(0 = answer 503 at once)",
        parse=parse_seconds,
    )
    admission_queue: int = option(
        256, "requests that may wait per model (beyond: 503 at once)", parse=int
    )
    agent_token: str = option(
        "",
        "token agents must send (metadata authorization: Bearer T); empty = not required",
        shown="none",
    )
    edge_token: str = option("", "token edges must send; empty = not required", shown="none")
    admin_token: str = option(
        "", "token admin calls (grpcurl, hopsctl) must send; empty = not required", shown="none"
    )
    tls_cert: str = option("", "PEM certificate for gRPC TLS (with --tls-key); empty = plaintext")
    tls_key: str = option("", "PEM private key of --tls-cert")
    tls_client_ca: str = option(
        "", "PEM CA that must have signed clients' certificates (mutual TLS); needs --tls-cert"
    )
    static_hosts: str = option(
        "",
        "YAML file of Ollama hosts without an agent, polled by the control plane "
        "(url, name, headers, labels, vram, num_parallel; see docs/configuration.md)",
        metavar="FILE",
        shown="none",
    )
    static_poll_interval: float = option(
        1.0, "seconds between polls of each static host", parse=parse_seconds
    )
    log_level: str = option("info", "log level: debug, info, warning, error")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The route socket's TLS, the same as gRPC's; None = plaintext."""
        if not self.tls_cert:
            return None
        return server_ssl_context(self.tls_cert, self.tls_key, self.tls_client_ca)

    def route_address(self) -> tuple[str, int] | None:
        """Where the route socket listens; None = no route socket."""
        if self.route_listen == "off":
            return None
        if self.route_listen == "auto":
            return self.listen[0], 0
        return parse_host_port(self.route_listen)

    def validate(self) -> None:
        if self.max_candidates < 1:
            raise ValueError("--max-candidates must be >= 1")
        if self.breaker_failures < 1:
            raise ValueError("--breaker-failures must be >= 1")
        for name in ("lease_ttl", "breaker_cooldown", "keepalive_interval", "agent_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        check_pair(self.tls_cert, self.tls_key, "control plane")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.tls_cert:
            server_credentials(self.tls_cert, self.tls_key, self.tls_client_ca)
            try:
                self.ssl_context()
            except ssl.SSLError as exc:
                raise ValueError(f"control plane: TLS files unusable: {exc}") from None
        if self.static_poll_interval <= 0:
            raise ValueError("--static-poll-interval must be > 0")
        if self.static_hosts:
            load_hosts(self.static_hosts)  # a broken file stops the start with its reason
        if self.agent_timeout <= self.keepalive_interval:
            raise ValueError("--agent-timeout must be longer than --keepalive-interval")


def load_settings(argv: Sequence[str] | None = None) -> ControlPlaneSettings:
    return load(
        ControlPlaneSettings,
        argv,
        os.environ,
        prog="hops-controlplane",
        description=(
            "The HOPS control plane: keeps the fleet's live state from node agents (gRPC "
            "AgentService), answers edges' routing questions (RouterService) and admins "
            "(AdminService; try grpcurl -plaintext HOST:PORT list)."
        ),
        env_prefix=ENV_PREFIX,
    )
