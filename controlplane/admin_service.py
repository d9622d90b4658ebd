"""AdminService: what operators do, from grpcurl or hopsctl."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable

import grpc
from hops.v1 import admin_pb2, admin_pb2_grpc, agent_pb2

from controlplane import commands, convert
from controlplane.errors import (
    ControlPlaneError,
    InvalidRequest,
    NodeNotFound,
    UnknownPolicy,
    grpc_errors,
)
from controlplane.fleet import Node, model_key
from controlplane.policies import REGISTRY
from controlplane.router import Router
from controlplane.settings import ControlPlaneSettings

Context = grpc.aio.ServicerContext[object, object]
DRAIN_POLL_S = 0.02


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, router: Router, settings: ControlPlaneSettings) -> None:
        self.router = router
        self.fleet = router.fleet
        self.settings = settings

    def _node(self, node_id: str) -> Node:
        node = self.fleet.nodes.get(node_id)
        if node is None:
            raise NodeNotFound(f"no node {node_id!r}")
        return node

    def _view(self, node: Node) -> admin_pb2.Node:
        return self._views([node])[0]

    def _views(self, nodes: Iterable[Node]) -> list[admin_pb2.Node]:
        learned = convert.learned_by_node(self.router.learning.learned)
        return [convert.node_pb(n, self.fleet, learned.get(n.node_id, ())) for n in nodes]

    @grpc_errors
    async def ListNodes(
        self, request: admin_pb2.ListNodesRequest, context: Context
    ) -> admin_pb2.ListNodesResponse:
        nodes = sorted(self.fleet.nodes.values(), key=lambda n: n.node_id)
        return admin_pb2.ListNodesResponse(nodes=self._views(nodes))

    @grpc_errors
    async def GetNode(
        self, request: admin_pb2.GetNodeRequest, context: Context
    ) -> admin_pb2.GetNodeResponse:
        return admin_pb2.GetNodeResponse(node=self._view(self._node(request.node_id)))

    @grpc_errors
    async def CordonNode(
        self, request: admin_pb2.CordonNodeRequest, context: Context
    ) -> admin_pb2.CordonNodeResponse:
        node = self._node(request.node_id)
        node.cordoned = True
        self.fleet.touch()
        return admin_pb2.CordonNodeResponse(node=self._view(node))

    @grpc_errors
    async def UncordonNode(
        self, request: admin_pb2.UncordonNodeRequest, context: Context
    ) -> admin_pb2.UncordonNodeResponse:
        node = self._node(request.node_id)
        node.cordoned = False
        node.draining = False
        self.fleet.touch()
        return admin_pb2.UncordonNodeResponse(node=self._view(node))

    @grpc_errors
    async def DrainNode(
        self, request: admin_pb2.DrainNodeRequest, context: Context
    ) -> admin_pb2.DrainNodeResponse:
        node = self._node(request.node_id)
        node.cordoned = True
        node.draining = True
        self.fleet.touch()
        deadline = time.monotonic() + request.wait.ToNanoseconds() / 1e9
        # Leases close without a notification; a short poll bounded by the caller's wait.
        while self.fleet.leases.in_flight(node.node_id) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(DRAIN_POLL_S)
        in_flight = self.fleet.leases.in_flight(node.node_id)
        return admin_pb2.DrainNodeResponse(
            drained=in_flight == 0, in_flight=in_flight, node=self._view(node)
        )

    @grpc_errors
    async def ListModels(
        self, request: admin_pb2.ListModelsRequest, context: Context
    ) -> admin_pb2.ListModelsResponse:
        models = convert.fleet_models(self.fleet, self.router.learning.model_figures)
        return admin_pb2.ListModelsResponse(models=models)

    async def PullModel(
        self, request: admin_pb2.PullModelRequest, context: Context
    ) -> AsyncIterator[admin_pb2.PullModelResponse]:
        if not request.model.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "model is required")
        command = agent_pb2.Command(
            pull=agent_pb2.PullCommand(model=request.model, insecure=request.insecure)
        )
        try:
            async for event in commands.run(
                self.fleet, request.node_id, command, self.settings.command_timeout
            ):
                if isinstance(event, agent_pb2.CommandProgress):
                    yield admin_pb2.PullModelResponse(
                        status=event.status,
                        digest=event.digest,
                        total=event.total,
                        completed=event.completed,
                    )
                else:
                    yield admin_pb2.PullModelResponse(
                        status="success" if event.ok else "error", done=True, error=event.error
                    )
        except ControlPlaneError as exc:
            await context.abort(exc.code, str(exc))

    @grpc_errors
    async def UnloadModel(
        self, request: admin_pb2.UnloadModelRequest, context: Context
    ) -> admin_pb2.UnloadModelResponse:
        command = agent_pb2.Command(unload=agent_pb2.UnloadCommand(model=request.model))
        result = await self._command(request.node_id, request.model, command, context)
        return admin_pb2.UnloadModelResponse(ok=result.ok, error=result.error)

    @grpc_errors
    async def PreloadModel(
        self, request: admin_pb2.PreloadModelRequest, context: Context
    ) -> admin_pb2.PreloadModelResponse:
        command = agent_pb2.Command(
            preload=agent_pb2.PreloadCommand(model=request.model, keep_alive=request.keep_alive)
        )
        result = await self._command(request.node_id, request.model, command, context)
        node = self.fleet.nodes.get(request.node_id)
        if result.ok and node is not None:  # loaded (or reloaded) with Ollama's defaults
            node.runner_options.pop(model_key(request.model), None)
        return admin_pb2.PreloadModelResponse(ok=result.ok, error=result.error)

    async def _command(
        self, node_id: str, model: str, command: agent_pb2.Command, context: Context
    ) -> agent_pb2.CommandResult:
        if not model.strip():
            raise InvalidRequest("model is required")
        return await commands.result(self.fleet, node_id, command, self.settings.command_timeout)

    @grpc_errors
    async def GetPolicy(
        self, request: admin_pb2.GetPolicyRequest, context: Context
    ) -> admin_pb2.GetPolicyResponse:
        return admin_pb2.GetPolicyResponse(name=self.router.policy.name, available=list(REGISTRY))

    @grpc_errors
    async def SetPolicy(
        self, request: admin_pb2.SetPolicyRequest, context: Context
    ) -> admin_pb2.SetPolicyResponse:
        factory = REGISTRY.get(request.name)
        if factory is None:
            raise UnknownPolicy(
                f"unknown policy {request.name!r}; choose one of {', '.join(REGISTRY)}"
            )
        previous = self.router.policy.name
        self.router.policy = factory(self.settings.seed)
        return admin_pb2.SetPolicyResponse(name=request.name, previous=previous)
