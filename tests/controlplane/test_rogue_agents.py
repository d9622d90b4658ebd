"""A rogue or buggy agent is refused with a clear status and cannot hurt the other nodes."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
import pytest
from hops.v1 import admin_pb2, admin_pb2_grpc, agent_pb2, agent_pb2_grpc, fleet_pb2

from controlplane.server import running
from controlplane.settings import ControlPlaneSettings

GIB = 1024**3


def _hello(node_id: str) -> agent_pb2.ConnectRequest:
    return agent_pb2.ConnectRequest(
        hello=agent_pb2.Hello(
            node_id=node_id, ollama_url=f"http://{node_id}.test:11434", hostname=node_id
        )
    )


def _snapshot(seq: int, **fields: object) -> agent_pb2.ConnectRequest:
    snap = fleet_pb2.NodeSnapshot(
        sequence=seq,
        ollama_healthy=True,
        ollama_version="0.12.6",
        installed=[fleet_pb2.InstalledModel(name="m:latest", size_bytes=GIB)],
    )
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(snap, key).extend(value)
        else:
            setattr(snap, key, value)
    return agent_pb2.ConnectRequest(snapshot=snap)


async def _agent(
    address: str, frames: list[agent_pb2.ConnectRequest], hold: asyncio.Event | None = None
) -> grpc.StatusCode:
    """Send ``frames`` after a hello, as the real agent does (call.write); return the status
    the control plane ended the stream with."""
    async with grpc.aio.insecure_channel(address) as channel:
        call = agent_pb2_grpc.AgentServiceStub(channel).Connect()

        async def drain() -> None:
            with contextlib.suppress(grpc.aio.AioRpcError):
                while isinstance(await call.read(), agent_pb2.ConnectResponse):
                    pass

        reader = asyncio.create_task(drain())
        try:
            for frame in frames:
                await call.write(frame)
            if hold is not None:
                await hold.wait()
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the control plane ended the stream while we were still writing
        await reader
        code: grpc.StatusCode = await call.code()
        return code


async def _online(address: str) -> set[str]:
    async with grpc.aio.insecure_channel(address) as channel:
        reply = await admin_pb2_grpc.AdminServiceStub(channel).ListNodes(
            admin_pb2.ListNodesRequest()
        )
    return {n.node_id for n in reply.nodes if n.state == admin_pb2.NODE_STATE_ONLINE}


@pytest.mark.parametrize(
    ("frames", "status", "bad"),
    [
        (
            [
                _snapshot(
                    1,
                    installed=[
                        fleet_pb2.InstalledModel(name=f"m{i}", size_bytes=1) for i in range(6000)
                    ],
                )
            ],
            grpc.StatusCode.INVALID_ARGUMENT,
            "too many models",
        ),
        (
            [_snapshot(1, gpus=[fleet_pb2.Gpu(total_bytes=GIB, free_bytes=2 * GIB)])],
            grpc.StatusCode.INVALID_ARGUMENT,
            "free > total",
        ),
        (
            [_snapshot(1, system_memory_total_bytes=2**60)],
            grpc.StatusCode.INVALID_ARGUMENT,
            "absurd memory",
        ),
        (
            [_snapshot(1, ollama_error="x" * (17 * 1024 * 1024))],
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "oversized message",
        ),
    ],
)
async def test_rogue_agent_is_refused_and_others_keep_working(
    frames: list[agent_pb2.ConnectRequest], status: grpc.StatusCode, bad: str
) -> None:
    settings = ControlPlaneSettings(listen=("127.0.0.1", 0), metrics_listen=None)
    async with running(settings) as plane:
        hold = asyncio.Event()
        good = asyncio.create_task(_agent(plane.address, [_hello("good"), _snapshot(1)], hold))
        for _ in range(200):
            if "good" in await _online(plane.address):
                break
            await asyncio.sleep(0.01)
        code = await asyncio.wait_for(_agent(plane.address, [_hello("rogue"), *frames]), 10)
        assert code == status, bad
        assert await _online(plane.address) == {"good"}
        hold.set()
        await good


async def test_a_snapshot_flood_is_bounded_not_applied() -> None:
    settings = ControlPlaneSettings(listen=("127.0.0.1", 0), metrics_listen=None)
    async with running(settings) as plane:
        frames = [_hello("chatty"), *(_snapshot(i) for i in range(1, 200))]
        assert await asyncio.wait_for(_agent(plane.address, frames), 10) == grpc.StatusCode.OK
        applied = plane.fleet.nodes["chatty"].snapshot.sequence
        assert 1 <= applied <= 2 * 20  # at most 20 a second, and this took well under two


async def test_a_newer_agents_unknown_gpu_source_reads_as_unspecified() -> None:
    """Proto enums are open: an agent built from a newer contract may name a GPU source this
    control plane does not know. Its snapshot is applied with the source unspecified; it used
    to raise ValueError while converting, which ended the stream."""
    settings = ControlPlaneSettings(listen=("127.0.0.1", 0), metrics_listen=None)
    async with running(settings) as plane:
        hold = asyncio.Event()
        newer = [_hello("newer"), _snapshot(1, gpu_source=99)]
        agent = asyncio.create_task(_agent(plane.address, newer, hold))
        for _ in range(200):
            if "newer" in await _online(plane.address):
                break
            await asyncio.sleep(0.01)
        assert await _online(plane.address) == {"newer"}
        assert plane.fleet.nodes["newer"].snapshot.gpu_source.value == 0
        hold.set()
        assert await asyncio.wait_for(agent, 10) == grpc.StatusCode.OK
