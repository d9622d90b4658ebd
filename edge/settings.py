"""The edge's settings: one frozen object, every field a flag and a HOPS_EDGE_* variable."""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from edge.auth import KeyCheck, read_keys
from hopscommon.labels import parse_label, selector
from hopscommon.settings import load, option, parse_addresses, parse_bool, parse_host_port
from hopscommon.tls import client_credentials, client_ssl_context
from hopscommon.units import parse_bytes, parse_seconds

ENV_PREFIX = "HOPS_EDGE_"


@dataclass(frozen=True, kw_only=True)
class EdgeSettings:
    """How the edge listens, asks the control plane, and talks to hosts."""

    listen: tuple[str, int] = option(
        ("0.0.0.0", 11434),
        "HOST:PORT for the Ollama/OpenAI HTTP API (Ollama's own port)",
        parse=parse_host_port,
        shown="0.0.0.0:11434",
    )
    controlplane: tuple[str, ...] = option(
        ("127.0.0.1:50051",),
        "control plane(s) HOST:PORT[,HOST:PORT], tried in order",
        parse=parse_addresses,
        shown="127.0.0.1:50051",
    )
    edge_id: str = option("", "this edge's id (default: host name + process id)")
    connect_timeout: float = option(
        2.0, "seconds to connect to a host before trying the next", parse=parse_seconds
    )
    first_byte_timeout: float = option(
        600.0,
        "seconds to wait for a host's first byte (a cold model load sends none)",
        parse=parse_seconds,
    )
    idle_timeout: float = option(
        120.0, "seconds allowed between two chunks of a streamed response", parse=parse_seconds
    )
    pick_timeout: float = option(
        30.0,
        "seconds to wait for the control plane to pick a host, including time a request "
        "waits in its admission queue while every host is saturated",
        parse=parse_seconds,
    )
    max_attempts: int = option(
        3, "hosts tried per request before the first byte reaches the client", parse=int
    )
    max_body: int = option(
        64 * 1024**2,
        "largest request body accepted (413 beyond)",
        parse=parse_bytes,
        shown="64MiB",
    )
    body_timeout: float = option(
        30.0,
        "seconds a client may take to send its whole request body (408 beyond)",
        parse=parse_seconds,
    )
    fail_open_for: float = option(
        300.0,
        "seconds the edge keeps routing from its last inventory while no control plane "
        "answers (0 = fail closed: 503 at once)",
        parse=parse_seconds,
    )
    workers: int = option(
        1,
        "edge processes sharing the listening port (each with its own control-plane session; "
        "/metrics shows the worker that answers the scrape)",
        parse=int,
    )
    metrics: bool = option(True, "serve Prometheus metrics at /metrics", parse=parse_bool)
    api_keys: tuple[str, ...] = option(
        (),
        "API keys clients must send as 'Authorization: Bearer KEY' (repeatable; none = open)",
        repeated=True,
        metavar="KEY",
    )
    api_keys_file: str = option("", "file with one API key per line, added to --api-keys")
    admin_keys: tuple[str, ...] = option(
        (),
        "keys that may also pull, delete, copy, create and push (repeatable)",
        repeated=True,
        metavar="KEY",
    )
    admin_keys_file: str = option("", "file with one admin key per line, added to --admin-keys")
    origins: tuple[str, ...] = option(
        (),
        "origins browsers may call the edge from, besides Ollama's defaults (localhost and "
        "127.0.0.1 on any port, app://, file://, tauri://, vscode-webview://), as "
        "OLLAMA_ORIGINS: repeatable, '*' wildcards ('*' alone: any); others get 403",
        repeated=True,
        metavar="ORIGIN",
    )
    labels: tuple[tuple[str, str], ...] = option(
        (),
        "KEY=VALUE: serve only from hosts carrying this label (an agent's --label), matched "
        "exactly; repeatable, all must match. This edge's clients then see and reach no other "
        "host; a request's X-Hops-Labels header narrows further",
        parse=parse_label,
        repeated=True,
        metavar="KEY=VALUE",
    )
    controlplane_token: str = option(
        "", "the control planes' edge token (sent as authorization: Bearer T)", shown="none"
    )
    tls_ca: str = option("", "PEM CA to trust for TLS to the control planes; empty = plaintext")
    tls_cert: str = option("", "PEM client certificate for mutual TLS (with --tls-key)")
    tls_key: str = option("", "PEM private key of --tls-cert")
    log_level: str = option("info", "log level: debug, info, warning, error")

    def validate(self) -> None:
        if not 1 <= self.workers <= 64:
            raise ValueError("--workers must be 1-64")
        if self.max_attempts < 1:
            raise ValueError("--max-attempts must be >= 1")
        if self.max_body < 1024:
            raise ValueError("--max-body must be at least 1KiB")
        for name in (
            "connect_timeout",
            "first_byte_timeout",
            "idle_timeout",
            "pick_timeout",
            "body_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0")
        if self.fail_open_for < 0:
            raise ValueError("--fail-open-for must be >= 0")
        try:
            selector(self.labels)
        except ValueError as exc:
            raise ValueError(f"--labels: {exc}") from None
        self.key_check()  # unreadable key files fail at start
        self.channel_credentials()
        try:
            self.ssl_context()
        except ssl.SSLError as exc:
            raise ValueError(f"edge: TLS files unusable: {exc}") from None

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        return client_credentials(self.tls_ca, self.tls_cert, self.tls_key, "edge")

    def ssl_context(self) -> ssl.SSLContext | None:
        """The same TLS for the control planes' route sockets; None = plaintext."""
        return client_ssl_context(self.tls_ca, self.tls_cert, self.tls_key) if self.tls_ca else None

    def key_check(self) -> KeyCheck:
        user = self.api_keys + (read_keys(self.api_keys_file) if self.api_keys_file else ())
        admin = self.admin_keys + (read_keys(self.admin_keys_file) if self.admin_keys_file else ())
        return KeyCheck.build(user, admin)

    @property
    def effective_edge_id(self) -> str:
        return self.edge_id or f"{socket.gethostname()}-{os.getpid()}"


def load_settings(argv: Sequence[str] | None = None) -> EdgeSettings:
    return load(
        EdgeSettings,
        argv,
        os.environ,
        prog="hops-edge",
        description=(
            "The HOPS edge: serves the Ollama API and the OpenAI-compatible /v1 API for a whole "
            "fleet. Per request it asks the control plane for a host and streams bytes straight "
            "to and from that host's Ollama. Point OLLAMA_HOST (or an OpenAI base_url + /v1) here."
        ),
        env_prefix=ENV_PREFIX,
    )
