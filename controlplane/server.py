"""Composition root of the control plane: gRPC services, health, reflection, metrics, sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from hops.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    agent_pb2,
    agent_pb2_grpc,
    router_pb2,
    router_pb2_grpc,
)
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from controlplane import dashboard, static_hosts
from controlplane.admin_service import AdminServicer
from controlplane.admission import Admission
from controlplane.agent_service import AgentServicer
from controlplane.auth import TokenInterceptor
from controlplane.breaker import Breaker
from controlplane.fleet import Fleet
from controlplane.metrics import ControlPlaneMetrics
from controlplane.policies import REGISTRY
from controlplane.route_socket import RouteSocket
from controlplane.router import Router
from controlplane.router_service import RouterServicer
from controlplane.settings import ControlPlaneSettings
from controlplane.static_hosts import load_hosts
from hopscommon.http_admin import AdminHttp
from hopscommon.net import connect_host
from hopscommon.tls import server_credentials

log = logging.getLogger("hops.controlplane")

SERVICE_NAMES = (
    agent_pb2.DESCRIPTOR.services_by_name["AgentService"].full_name,
    router_pb2.DESCRIPTOR.services_by_name["RouterService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
)
SWEEP_INTERVAL_S = 1.0
GRPC_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class ControlPlane:
    """One control plane process (or one in a test's event loop)."""

    def __init__(self, settings: ControlPlaneSettings) -> None:
        self.settings = settings
        self.metrics = ControlPlaneMetrics()
        self.fleet = Fleet(
            breaker_factory=lambda: Breaker(
                threshold=settings.breaker_failures, cooldown=settings.breaker_cooldown
            ),
            forget_after=settings.forget_after,
        )
        self.metrics.fleet = self.fleet
        self.router = Router(
            fleet=self.fleet,
            policy=REGISTRY[settings.policy](settings.seed),
            metrics=self.metrics,
            max_candidates=settings.max_candidates,
            retry_after_s=settings.retry_after,
            queue_per_slot=settings.queue_per_slot,
        )
        self.admission = Admission(
            self.router, max_wait=settings.admission_wait, per_model=settings.admission_queue
        )
        self.fleet.leases.on_release = self.admission.on_release
        tokens = {
            "agent": settings.agent_token,
            "edge": settings.edge_token,
            "admin": settings.admin_token,
        }
        self.grpc = grpc.aio.server(options=GRPC_OPTIONS, interceptors=[TokenInterceptor(tokens)])
        agent_pb2_grpc.add_AgentServiceServicer_to_server(
            AgentServicer(self.fleet, settings), self.grpc
        )
        self.router_servicer = RouterServicer(self.router, self.admission, settings)
        router_pb2_grpc.add_RouterServiceServicer_to_server(self.router_servicer, self.grpc)
        self.route_socket = RouteSocket(self.router_servicer, settings.edge_token)
        admin_pb2_grpc.add_AdminServiceServicer_to_server(
            AdminServicer(self.router, settings), self.grpc
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.grpc)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc
        )
        host, port = settings.listen
        address = f"[::]:{port}" if host in ("::", "") else f"{host}:{port}"
        if settings.tls_cert:
            credentials = server_credentials(
                settings.tls_cert, settings.tls_key, settings.tls_client_ca
            )
            self.port = self.grpc.add_secure_port(address, credentials)
        else:
            self.port = self.grpc.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        self.metrics_port: int | None = None
        self._http: AdminHttp | None = None
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def address(self) -> str:
        return f"{connect_host(self.settings.listen[0])}:{self.port}"

    async def start(self) -> None:
        route = self.settings.route_address()
        if route is not None:  # before gRPC, so every edge session can tell its port
            self.router_servicer.route_port = await self.route_socket.start(
                *route, self.settings.ssl_context()
            )
        await self.grpc.start()
        for service in (*SERVICE_NAMES, ""):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self._sweep()))
        if self.settings.static_hosts:
            hosts = load_hosts(self.settings.static_hosts)
            interval = self.settings.static_poll_interval
            self._tasks.append(
                asyncio.create_task(static_hosts.run_all(hosts, self.fleet, interval))
            )
        if self.settings.metrics_listen is not None:
            self._http = AdminHttp(
                self.settings.metrics_listen, self.metrics.registry, self._dashboard_routes()
            )
            self.metrics_port = self._http.port
            self._http.start()

    async def stop(self, grace: float = 2.0) -> None:
        for service in (*SERVICE_NAMES, ""):
            await self.health.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._http is not None:
            self._http.stop()  # it ends by itself on should_exit
        await self.route_socket.stop()
        await self.grpc.stop(grace)
        await self.admission.close()
        for task in self._tasks:  # the sweeper and static pollers
            task.cancel()
        served = [self._http.task] if self._http is not None and self._http.task else []
        await asyncio.gather(*self._tasks, *served, return_exceptions=True)

    async def wait(self) -> None:
        await self.grpc.wait_for_termination()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            released = self.router.sweep(self.settings.lease_ttl)
            if released:
                log.warning("released %d leases past their TTL", released)

    def _dashboard_routes(self) -> tuple[BaseRoute, ...]:
        async def page(request: Request) -> Response:
            return HTMLResponse(dashboard.page())

        async def state(request: Request) -> Response:
            return JSONResponse(dashboard.state(self.router))

        return (Route("/", page), Route("/api/state", state))


@contextlib.asynccontextmanager
async def running(settings: ControlPlaneSettings) -> AsyncIterator[ControlPlane]:
    """Run a control plane in the current event loop (for tests); stops it on exit."""
    plane = ControlPlane(settings)
    await plane.start()
    try:
        yield plane
    finally:
        await plane.stop(grace=0.5)
