"""Optional API keys at the edge, in the form Ollama and OpenAI clients send them
(``Authorization: Bearer KEY``).

Two classes: user keys may call everything but model management; admin keys may also pull,
delete, copy, create and push. With no keys configured the edge is open, as Ollama is. Keys are
compared in constant time, never logged, and never forwarded to hosts.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError

ADMIN_PATHS = ("/api/pull", "/api/delete", "/api/copy", "/api/create", "/api/push", "/api/blobs/")
OPEN_PATHS = ("/", "/metrics")


class Unauthorized(EdgeError):
    status = 401


class Forbidden(EdgeError):
    status = 403


def read_keys(path: str) -> tuple[str, ...]:
    """One key per line; blank lines and lines starting with # are ignored. Raises ValueError."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read keys from {path}: {exc.strerror}") from None
    return tuple(line.strip() for line in lines if line.strip() and not line.startswith("#"))


def _matches(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    found = False
    for key in keys:  # no early exit: the time taken does not depend on which key matched
        found |= hmac.compare_digest(presented, key)
    return found


@dataclass(frozen=True)
class KeyCheck:
    user_keys: tuple[bytes, ...]
    admin_keys: tuple[bytes, ...]

    @classmethod
    def build(cls, user: tuple[str, ...], admin: tuple[str, ...]) -> KeyCheck:
        return cls(tuple(k.encode() for k in user), tuple(k.encode() for k in admin))

    @property
    def enabled(self) -> bool:
        return bool(self.user_keys or self.admin_keys)

    def check(self, path: str, authorization: str) -> None:
        """Raise Unauthorized / Forbidden unless the request may go on."""
        if not self.enabled or path in OPEN_PATHS:
            return
        scheme, _, token = authorization.partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        is_admin = bool(presented) and _matches(presented, self.admin_keys)
        is_user = is_admin or (bool(presented) and _matches(presented, self.user_keys))
        if not is_user:
            raise Unauthorized("unauthorized: send a valid API key as 'Authorization: Bearer KEY'")
        if path.startswith(ADMIN_PATHS) and not is_admin:
            raise Forbidden(f"{path} needs an admin API key")
