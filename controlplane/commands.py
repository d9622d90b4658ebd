"""Commands sent down an agent's stream (pull, unload, preload) and the progress that comes back.

This module sits at the gRPC boundary: it queues ConnectResponse frames for the agent stream and
hands CommandProgress/CommandResult frames to whoever waits for them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from hops.v1 import agent_pb2, fleet_pb2

from controlplane.errors import CommandTimeout, NodeNotFound, NodeUnavailable
from controlplane.fleet import Fleet
from hopscommon.fleet import InstalledModel

CommandEvent = agent_pb2.CommandProgress | agent_pb2.CommandResult
_ids = itertools.count(1)


@dataclass(eq=False)
class AgentSession:
    """One open agent stream: what to send down it, and commands awaiting answers."""

    node_id: str
    outbox: asyncio.Queue[agent_pb2.ConnectResponse] = field(default_factory=asyncio.Queue)
    waiting: dict[str, asyncio.Queue[CommandEvent]] = field(default_factory=dict)
    # The installed models of the last snapshot applied, as sent and as converted: most
    # snapshots repeat them, and converting 20 models costs more than the rest of a snapshot.
    installed_pb: Sequence[fleet_pb2.InstalledModel] | None = None
    installed: tuple[InstalledModel, ...] = ()

    def deliver(self, event: CommandEvent) -> None:
        queue = self.waiting.get(event.command_id)
        if queue is not None:
            queue.put_nowait(event)

    def close(self, reason: str) -> None:
        """The stream ended: every command still waiting fails with ``reason``."""
        for command_id, queue in self.waiting.items():
            queue.put_nowait(agent_pb2.CommandResult(command_id=command_id, ok=False, error=reason))
        self.waiting.clear()


async def run(
    fleet: Fleet,
    node_id: str,
    command: agent_pb2.Command,
    timeout: float,  # noqa: ASYNC109 - the deadline is the command's contract (CommandTimeout)
) -> AsyncIterator[CommandEvent]:
    """Send ``command`` to the node's agent; yield its progress, then its result, then stop."""
    node = fleet.nodes.get(node_id)
    if node is None:
        raise NodeNotFound(f"no node {node_id!r}")
    session = node.session
    if not isinstance(session, AgentSession):
        raise NodeUnavailable(f"node {node_id!r} has no agent connected")
    command.command_id = f"cmd-{next(_ids)}"
    queue: asyncio.Queue[CommandEvent] = asyncio.Queue()
    session.waiting[command.command_id] = queue
    session.outbox.put_nowait(agent_pb2.ConnectResponse(command=command))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), max(deadline - loop.time(), 0.001))
            except TimeoutError:
                raise CommandTimeout(
                    f"node {node_id!r} did not finish the command within {timeout:.0f}s"
                ) from None
            yield event
            if isinstance(event, agent_pb2.CommandResult):
                return
    finally:
        session.waiting.pop(command.command_id, None)


async def result(
    fleet: Fleet,
    node_id: str,
    command: agent_pb2.Command,
    timeout: float,  # noqa: ASYNC109 - passed on to run()
) -> agent_pb2.CommandResult:
    """Run a command and return only its result."""
    async for event in run(fleet, node_id, command, timeout):
        if isinstance(event, agent_pb2.CommandResult):
            return event
    return agent_pb2.CommandResult(ok=False, error="agent stream ended without a result")
