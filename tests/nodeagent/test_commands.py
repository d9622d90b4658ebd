"""Commands run against the local Ollama (the agent's, and the control plane's poller of hosts
without one): whatever Ollama answers, each ends with a result frame."""

from __future__ import annotations

import httpx
from hops.v1 import agent_pb2

from nodeagent.agent import execute
from nodeagent.ollama import OllamaClient


async def _pull(progress: bytes) -> list[agent_pb2.ConnectRequest]:
    def ollama_api(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/pull"
        return httpx.Response(200, content=progress)

    refreshed: list[bool] = []

    async def refresh() -> None:
        refreshed.append(True)

    client = OllamaClient("http://127.0.0.1:9")
    client.http = httpx.AsyncClient(
        base_url="http://127.0.0.1:9", transport=httpx.MockTransport(ollama_api)
    )
    command = agent_pb2.Command(command_id="c1", pull=agent_pb2.PullCommand(model="m"))
    try:
        return [frame async for frame in execute(client, command, refresh)]
    finally:
        await client.close()


async def test_a_pull_reports_its_progress_then_its_result() -> None:
    frames = await _pull(
        b'{"status":"pulling 1234","digest":"sha256:1234","total":100,"completed":40}\n'
        b'{"status":"success"}\n'
    )
    assert [(f.progress.total, f.progress.completed) for f in frames[:2]] == [(100, 40), (0, 0)]
    assert frames[-1].result.ok and frames[-1].result.command_id == "c1"


async def test_a_pull_whose_progress_cannot_be_read_still_ends_with_a_result() -> None:
    """Counts that are not counts read as unknown; a line that is no JSON object fails the
    pull with Ollama's bytes in the error. Either used to raise out of the command, so no
    result came back and the admin's call waited out its timeout."""
    frames = await _pull(
        b'{"status":"pulling","total":"big","completed":-1}\n[1, 2]\n{"status":"success"}\n'
    )
    assert (frames[0].progress.total, frames[0].progress.completed) == (0, 0)
    assert not frames[-1].result.ok
    assert frames[-1].result.error == "unreadable pull progress: '[1, 2]'"
    assert len(frames) == 2
