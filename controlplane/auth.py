"""Bearer tokens on the control plane's gRPC services (metadata ``authorization: Bearer T``).

One token per caller class, each optional: agents (AgentService), edges (RouterService) and
admins (AdminService). Health and reflection stay open so probes and ``grpcurl list`` work.
Tokens are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

if TYPE_CHECKING:
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]  # generic only in the type stubs

SERVICE_TOKENS = {
    "/hops.v1.AgentService/": "agent",
    "/hops.v1.RouterService/": "edge",
    "/hops.v1.AdminService/": "admin",
}


def bearer(metadata: Any) -> bytes:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            return token.strip().encode() if scheme.lower() == "bearer" else b""
    return b""


def _denied(handler: Handler, message: str) -> Handler:
    async def deny(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(deny)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(deny)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(deny)
    return grpc.unary_unary_rpc_method_handler(deny)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls to a guarded service without its token."""

    def __init__(self, tokens: dict[str, str]) -> None:
        # caller class -> token; a class without a token is not guarded
        self.tokens = {role: token.encode() for role, token in tokens.items() if token}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method or ""
        role = next((r for prefix, r in SERVICE_TOKENS.items() if method.startswith(prefix)), None)
        expected = self.tokens.get(role or "")
        if expected is None or handler is None:
            return handler
        if hmac.compare_digest(bearer(handler_call_details.invocation_metadata), expected):
            return handler
        return _denied(handler, f"this call needs the {role} token (authorization: Bearer ...)")
