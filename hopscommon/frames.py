"""Length-prefixed protobuf frames on an asyncio stream: the route socket's wire format.

A frame is a 4-byte big-endian length and that many bytes of one serialized message. Frames
larger than MAX_FRAME are refused (gRPC's default receive limit), so a rogue peer cannot make
the reader buffer without bound.
"""

from __future__ import annotations

import asyncio
import struct
from typing import TypeVar

from google.protobuf.message import DecodeError, Message

HEADER = struct.Struct("!I")
MAX_FRAME = 4 * 1024 * 1024
M = TypeVar("M", bound=Message)


class FrameError(Exception):
    """The peer sent something that is not a frame of the expected message."""


def encode(message: Message) -> bytes:
    data = message.SerializeToString()
    return HEADER.pack(len(data)) + data


async def read(reader: asyncio.StreamReader, kind: type[M]) -> M | None:
    """The next frame as a ``kind``; None when the peer closed between frames. Raises
    FrameError on an oversized or undecodable frame or a connection cut inside one."""
    try:
        head = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("connection closed inside a frame header") from None
        return None
    (size,) = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
    try:
        data = await reader.readexactly(size)
    except asyncio.IncompleteReadError:
        raise FrameError("connection closed inside a frame") from None
    message = kind()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise FrameError(f"undecodable {kind.__name__} frame: {exc}") from None
    return message
