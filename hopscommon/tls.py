"""TLS for the control plane's gRPC port and route socket, and the agents' and edges'
connections to them.

Server: a certificate and key; with a client CA, clients must present a certificate it signed
(mTLS). Clients: the CA to trust, and optionally their own certificate and key for mTLS.
Files are read once at start; an unreadable one stops the program with a clear message.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc


def read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {what} {path}: {exc.strerror}") from None


def server_credentials(cert: str, key: str, client_ca: str = "") -> grpc.ServerCredentials:
    pair = (read(key, "TLS key"), read(cert, "TLS certificate"))
    if client_ca:
        return grpc.ssl_server_credentials(
            [pair], root_certificates=read(client_ca, "client CA"), require_client_auth=True
        )
    return grpc.ssl_server_credentials([pair])


def server_ssl_context(cert: str, key: str, client_ca: str = "") -> ssl.SSLContext:
    """The same server side for a plain socket (the route socket)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def client_ssl_context(ca: str, cert: str = "", key: str = "") -> ssl.SSLContext:
    """The same client side for a plain socket: trust ``ca``, present ``cert`` if given."""
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    return context


def channel_credentials(ca: str, cert: str = "", key: str = "") -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=read(ca, "CA certificate"),
        private_key=read(key, "TLS key") if key else None,
        certificate_chain=read(cert, "TLS certificate") if cert else None,
    )


def check_pair(cert: str, key: str, role: str) -> None:
    """Both or neither of a certificate and its key."""
    if bool(cert) != bool(key):
        raise ValueError(f"{role}: --tls-cert and --tls-key go together")


def client_credentials(ca: str, cert: str, key: str, role: str) -> grpc.ChannelCredentials | None:
    """A client's TLS flags (--tls-ca, --tls-cert, --tls-key) checked and turned into channel
    credentials; None means plaintext. Raises ValueError on a bad combination or file."""
    check_pair(cert, key, role)
    if cert and not ca:
        raise ValueError(f"{role}: --tls-cert needs --tls-ca")
    return channel_credentials(ca, cert, key) if ca else None
