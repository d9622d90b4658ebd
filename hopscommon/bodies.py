"""Request bodies that are not plain JSON, read as Ollama reads them: a zstd-compressed body (as
Codex sends to /v1/responses; Ollama decodes up to 20 MiB) and a multipart form (as
/v1/audio/transcriptions takes, its model named in a form field).

Both the edge (to find the model to route on, forwarding the bytes unchanged) and the simulator
(to answer) use these.
"""

from __future__ import annotations

import zstandard

ZSTD_LIMIT = 20 * 1024**2  # what Ollama decodes of a zstd body at most


class BodyDecodeError(ValueError):
    """A compressed or multipart body that cannot be read; the message says why."""


class DecodedTooLarge(BodyDecodeError):
    """A compressed body that decodes to more than the limit."""


def decoded(raw: bytes, content_encoding: str, limit: int = ZSTD_LIMIT) -> bytes:
    """``raw`` as sent, or decompressed when its Content-Encoding is zstd (the one Ollama
    decodes); other encodings are left to whoever reads the body."""
    if content_encoding.strip().lower() != "zstd":
        return raw
    return unzstd(raw, limit)


def unzstd(raw: bytes, limit: int = ZSTD_LIMIT) -> bytes:
    """``raw`` decompressed, refusing more than ``limit`` bytes of output (a small body can
    expand without bound); a frame without its size in the header is streamed to the limit."""
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(raw)
        out = reader.read(limit + 1)
        while len(out) <= limit:
            more = reader.read(limit + 1 - len(out))
            if not more:
                break
            out += more
    except zstandard.ZstdError as exc:
        raise BodyDecodeError(f"invalid zstd body: {exc}") from None
    if len(out) > limit:
        raise DecodedTooLarge(f"decompressed request body larger than {limit} bytes")
    return out


def boundary_of(content_type: str) -> bytes | None:
    """The boundary of a multipart/form-data Content-Type, or None if it is not one."""
    kind, _, params = content_type.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        return None
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip().strip('"')
            return value.encode("latin-1") if value else None
    return None


def form_fields(body: bytes, boundary: bytes, names: frozenset[str]) -> dict[str, bytes]:
    """The values of the multipart form fields ``names`` in ``body`` (files included, as bytes),
    found by scanning for the boundary, up to the last of them."""
    delimiter = b"--" + boundary
    found: dict[str, bytes] = {}
    start = body.find(delimiter)
    if start < 0:
        raise BodyDecodeError("multipart body without its boundary")
    while True:
        start += len(delimiter)
        if body.startswith(b"--", start):  # the closing delimiter
            return found
        head_end = body.find(b"\r\n\r\n", start)
        if head_end < 0:
            raise BodyDecodeError("multipart part without a header end")
        end = _next_delimiter(body, b"\r\n" + delimiter, head_end + 4)
        name = _part_name(body[start:head_end])
        if name in names and name not in found:
            found[name] = body[head_end + 4 : end]
            if len(found) == len(names):  # the rest (an audio file, say) need not be scanned
                return found
        start = end + 2


def _next_delimiter(body: bytes, marker: bytes, start: int) -> int:
    """Where the delimiter line ending a part begins: the marker followed by CRLF (another part)
    or "--" (the end), so content that merely contains the marker is not cut."""
    while True:
        at = body.find(marker, start)
        if at < 0:
            raise BodyDecodeError("multipart part without a closing boundary")
        after = body[at + len(marker) : at + len(marker) + 2]
        if after in (b"\r\n", b"--"):
            return at
        start = at + 1


def _part_name(head: bytes) -> str:
    for line in head.decode("utf-8", errors="replace").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() != "content-disposition":
            continue
        for param in value.split(";"):
            pkey, _, pvalue = param.strip().partition("=")
            if pkey.strip().lower() == "name":
                return pvalue.strip().strip('"')
    return ""
