"""Control-plane errors and the one table that maps them to gRPC status codes.

ControlPlaneError
├── InvalidRequest     INVALID_ARGUMENT   (a malformed hello, an empty node id, ...)
├── NodeNotFound       NOT_FOUND
├── NodeIdConflict     ALREADY_EXISTS     (another host holds this node id)
├── UnknownPolicy      INVALID_ARGUMENT
├── NodeUnavailable    UNAVAILABLE        (the node's agent is not connected)
└── CommandTimeout     DEADLINE_EXCEEDED
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc


class ControlPlaneError(Exception):
    code = grpc.StatusCode.INTERNAL


class InvalidRequest(ControlPlaneError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NodeNotFound(ControlPlaneError):
    code = grpc.StatusCode.NOT_FOUND


class NodeIdConflict(ControlPlaneError):
    code = grpc.StatusCode.ALREADY_EXISTS


class UnknownPolicy(ControlPlaneError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NodeUnavailable(ControlPlaneError):
    code = grpc.StatusCode.UNAVAILABLE


class CommandTimeout(ControlPlaneError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


Servicer = TypeVar("Servicer")
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[Servicer, Req, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Resp]]


def grpc_errors(method: Method[Servicer, Req, Resp]) -> Method[Servicer, Req, Resp]:
    """Turn a ControlPlaneError raised by a unary servicer method into its gRPC status."""

    @functools.wraps(method)
    async def wrapper(
        self: Servicer, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Resp:
        try:
            return await method(self, request, context)
        except ControlPlaneError as exc:
            await context.abort(exc.code, str(exc))

    return wrapper
