"""AgentService: the node agents' bidirectional streams."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
from hops.v1 import agent_pb2, agent_pb2_grpc

from controlplane import convert
from controlplane.commands import AgentSession
from controlplane.errors import ControlPlaneError, InvalidRequest, NodeIdConflict
from controlplane.fleet import Fleet
from controlplane.settings import ControlPlaneSettings
from controlplane.validation import validate_hello, validate_snapshot

log = logging.getLogger("hops.controlplane")

MAX_SNAPSHOTS_PER_S = 20


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    def __init__(self, fleet: Fleet, settings: ControlPlaneSettings) -> None:
        self.fleet = fleet
        self.settings = settings

    async def Connect(
        self,
        request_iterator: AsyncIterator[agent_pb2.ConnectRequest],
        context: grpc.aio.ServicerContext[agent_pb2.ConnectRequest, agent_pb2.ConnectResponse],
    ) -> AsyncIterator[agent_pb2.ConnectResponse]:
        try:
            first = await asyncio.wait_for(anext(request_iterator), self.settings.agent_timeout)
        except (StopAsyncIteration, TimeoutError):
            return
        if first.WhichOneof("message") != "hello":
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "the first message must be a hello"
            )
        hello = convert.hello(first.hello)
        session = AgentSession(hello.node_id)
        try:
            validate_hello(hello)
            _, replaced = self.fleet.attach(hello, session)
        except (InvalidRequest, NodeIdConflict) as exc:
            log.warning("agent refused node=%s reason=%s", hello.node_id, exc)
            await context.abort(exc.code, str(exc))
        log.info(
            "agent connected node=%s url=%s replaced=%s", hello.node_id, hello.ollama_url, replaced
        )
        reader = asyncio.create_task(self._read(request_iterator, session, context))
        try:
            yield agent_pb2.ConnectResponse(
                hello_ack=agent_pb2.HelloAck(
                    node_id=hello.node_id,
                    keepalive_interval=convert.duration(self.settings.keepalive_interval),
                    replaced_previous=replaced,
                )
            )
            async for frame in self._outgoing(session, reader):
                yield frame
            if reader.done() and not reader.cancelled():
                error = reader.exception()
                if isinstance(error, ControlPlaneError):
                    log.warning("agent stream refused node=%s reason=%s", hello.node_id, error)
                    await context.abort(error.code, str(error))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ControlPlaneError):
                await reader
            session.close("agent disconnected")
            if self.fleet.detach(hello.node_id, session):
                log.info("agent disconnected node=%s", hello.node_id)

    async def _outgoing(
        self, session: AgentSession, reader: asyncio.Task[None]
    ) -> AsyncIterator[agent_pb2.ConnectResponse]:
        keepalives = 0
        while not reader.done():
            getter = asyncio.ensure_future(session.outbox.get())
            done, _ = await asyncio.wait(
                {getter, reader},
                timeout=self.settings.keepalive_interval,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if getter in done:
                yield getter.result()
                continue
            getter.cancel()
            node = self.fleet.nodes.get(session.node_id)
            if node is None or node.session is not session:
                return  # replaced by a newer stream
            if time.time() - node.last_seen > self.settings.agent_timeout:
                log.warning(
                    "agent silent for %.0fs, closing node=%s",
                    self.settings.agent_timeout,
                    session.node_id,
                )
                return
            if not reader.done():
                keepalives += 1
                yield agent_pb2.ConnectResponse(keepalive=agent_pb2.Keepalive(sequence=keepalives))

    def _apply(self, session: AgentSession, message: agent_pb2.ConnectRequest) -> None:
        sent = message.snapshot.installed
        known = session.installed_pb
        same = session.installed if known is not None and sent == known else None
        snapshot = convert.snapshot(message.snapshot, same)
        session.installed_pb, session.installed = sent, snapshot.installed
        self.fleet.update(session.node_id, session, snapshot)

    async def _read(
        self,
        requests: AsyncIterator[agent_pb2.ConnectRequest],
        session: AgentSession,
        context: grpc.aio.ServicerContext[agent_pb2.ConnectRequest, agent_pb2.ConnectResponse],
    ) -> None:
        """Apply what the agent sends. A malformed or absurd snapshot ends the stream (raised
        here, answered with INVALID_ARGUMENT by Connect): the node leaves routing and every other
        node goes on as before. A flood of snapshots is bounded: at most MAX_SNAPSHOTS_PER_S are
        applied a second; the newest one held back is applied when the second is over."""
        node_id = session.node_id
        window_start, in_window = time.monotonic(), 0
        deferred: agent_pb2.ConnectRequest | None = None
        dropped = 0
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for message in requests:
                kind = message.WhichOneof("message")
                self.fleet.seen(node_id, session)
                now = time.monotonic()
                if now - window_start >= 1.0:
                    if dropped:
                        log.warning("snapshot flood bounded node=%s dropped=%d", node_id, dropped)
                    window_start, in_window, dropped = now, 0, 0
                    if deferred is not None:
                        self._apply(session, deferred)
                        deferred, in_window = None, 1
                if kind == "snapshot":
                    problem = validate_snapshot(message)
                    if problem:
                        raise InvalidRequest(f"snapshot rejected: {problem}")
                    in_window += 1
                    if in_window > MAX_SNAPSHOTS_PER_S:
                        deferred, dropped = message, dropped + 1
                        continue
                    self._apply(session, message)
                elif kind == "progress":
                    session.deliver(message.progress)
                elif kind == "result":
                    session.deliver(message.result)
