"""One agent stream to one control plane, reconnected with jittered exponential backoff.

On every (re)connect the agent sends its hello and then its current snapshot, so a restarted
control plane is re-populated at once. A single writer task owns the stream's writes; snapshots,
command progress and keepalives all go through its queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import TYPE_CHECKING

import grpc
from hops.v1 import agent_pb2, agent_pb2_grpc, fleet_pb2

if TYPE_CHECKING:
    from nodeagent.agent import Agent

log = logging.getLogger("hops.nodeagent")
Call = grpc.aio.StreamStreamCall[agent_pb2.ConnectRequest, agent_pb2.ConnectResponse]
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
]


class Link:
    def __init__(self, address: str, agent: Agent) -> None:
        self.address = address
        self.agent = agent
        self.connected = asyncio.Event()
        self.sessions = 0
        self._outbox: asyncio.Queue[agent_pb2.ConnectRequest] | None = None
        self._commands: set[asyncio.Task[None]] = set()

    def offer_snapshot(self, snapshot: fleet_pb2.NodeSnapshot) -> None:
        if self._outbox is not None:
            self._outbox.put_nowait(agent_pb2.ConnectRequest(snapshot=snapshot))

    async def run(self) -> None:
        settings = self.agent.settings
        delay = settings.backoff_min
        while True:
            try:
                await self._connect_once()
                delay = settings.backoff_min  # a session that got going resets the backoff
            except grpc.aio.AioRpcError as exc:
                level = (
                    logging.ERROR
                    if exc.code()
                    in (
                        grpc.StatusCode.ALREADY_EXISTS,
                        grpc.StatusCode.INVALID_ARGUMENT,
                        grpc.StatusCode.UNAUTHENTICATED,
                    )
                    else logging.INFO
                )
                log.log(
                    level, "control plane %s: %s %s", self.address, exc.code().name, exc.details()
                )
            finally:
                self.connected.clear()
                self._outbox = None
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, settings.backoff_max)

    async def _connect_once(self) -> None:
        async with self._channel() as channel:
            token = self.agent.settings.token
            metadata = (("authorization", f"Bearer {token}"),) if token else None
            call: Call = agent_pb2_grpc.AgentServiceStub(channel).Connect(metadata=metadata)
            await call.write(agent_pb2.ConnectRequest(hello=self.agent.hello_pb))
            first = await call.read()
            if not isinstance(first, agent_pb2.ConnectResponse) or not first.HasField("hello_ack"):
                return
            outbox: asyncio.Queue[agent_pb2.ConnectRequest] = asyncio.Queue()
            if self.agent.current is not None:
                outbox.put_nowait(agent_pb2.ConnectRequest(snapshot=self.agent.current))
            self._outbox = outbox
            self.sessions += 1
            self.connected.set()
            log.info("connected to control plane %s", self.address)
            reader = asyncio.create_task(self._read(call, outbox))
            try:
                await self._write(call, outbox, reader)
            finally:
                reader.cancel()
                for task in self._commands:
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                    await reader
                call.cancel()

    def _channel(self) -> grpc.aio.Channel:
        credentials = self.agent.settings.channel_credentials()
        if credentials is not None:
            return grpc.aio.secure_channel(self.address, credentials, options=CHANNEL_OPTIONS)
        return grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)

    async def _write(
        self,
        call: Call,
        outbox: asyncio.Queue[agent_pb2.ConnectRequest],
        reader: asyncio.Task[None],
    ) -> None:
        keepalives = 0
        interval = self.agent.settings.keepalive_interval
        while not reader.done():
            getter = asyncio.ensure_future(outbox.get())
            done, _ = await asyncio.wait(
                {getter, reader}, timeout=interval, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                await call.write(getter.result())
                continue
            getter.cancel()
            if reader.done():
                break
            keepalives += 1
            await call.write(
                agent_pb2.ConnectRequest(keepalive=agent_pb2.Keepalive(sequence=keepalives))
            )
        reader.result()  # re-raise the reader's error, if any

    async def _read(self, call: Call, outbox: asyncio.Queue[agent_pb2.ConnectRequest]) -> None:
        while True:
            message = await call.read()
            if not isinstance(message, agent_pb2.ConnectResponse):
                return  # EOF: the control plane closed the stream
            if message.HasField("command"):
                task = asyncio.create_task(self._run_command(message.command, outbox))
                self._commands.add(task)
                task.add_done_callback(self._commands.discard)

    async def _run_command(
        self, command: agent_pb2.Command, outbox: asyncio.Queue[agent_pb2.ConnectRequest]
    ) -> None:
        log.info("command id=%s kind=%s", command.command_id, command.WhichOneof("kind"))
        async for frame in self.agent.execute(command):
            outbox.put_nowait(frame)
