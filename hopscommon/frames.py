"""Length-prefixed protobuf frames: the route socket's wire format.

A frame is a 4-byte big-endian length and that many bytes of one serialized message. Frames
larger than MAX_FRAME are refused (gRPC's default receive limit), so a rogue peer cannot make
the reader buffer without bound.
"""

from __future__ import annotations

import struct

from google.protobuf.message import Message

HEADER = struct.Struct("!I")
MAX_FRAME = 4 * 1024 * 1024


class FrameError(Exception):
    """The peer sent something that is not a frame of the expected message."""


def encode(message: Message) -> bytes:
    data = message.SerializeToString()
    return HEADER.pack(len(data)) + data


class FrameBuffer:
    """Bytes as they arrive in, whole frames' payloads out."""

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads of the frames ``data`` completes, up to an oversized frame if one
        comes (nothing after it can be trusted: ``check`` then raises)."""
        self.check()
        self.buffer += data
        payloads = []
        while len(self.buffer) >= HEADER.size:
            (size,) = HEADER.unpack_from(self.buffer)
            if size > MAX_FRAME:
                self.error = FrameError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
                break
            end = HEADER.size + size
            if len(self.buffer) < end:
                break
            payloads.append(bytes(self.buffer[HEADER.size : end]))
            del self.buffer[:end]
        return payloads

    def check(self) -> None:
        """Raise the FrameError met by ``feed``, once the payloads before it are handled."""
        if self.error is not None:
            raise self.error
