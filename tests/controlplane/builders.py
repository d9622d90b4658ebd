"""Small builders for control-plane unit tests: a fleet with nodes, models and fake sessions."""

from __future__ import annotations

from collections.abc import Iterable

from controlplane.breaker import Breaker
from controlplane.fleet import Fleet, Node
from controlplane.metrics import ControlPlaneMetrics
from controlplane.policies import REGISTRY
from controlplane.router import Router
from hopscommon.fleet import Capacity, Gpu, Hello, InstalledModel, LoadedModel, Snapshot

GB = 1000**3


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def fleet(clock: FakeClock | None = None) -> Fleet:
    return Fleet(
        breaker_factory=lambda: Breaker(threshold=3, cooldown=10.0, clock=clock or FakeClock()),
        forget_after=300.0,
    )


def router(f: Fleet, policy: str = "least_busy") -> Router:
    metrics = ControlPlaneMetrics()
    metrics.fleet = f
    return Router(fleet=f, policy=REGISTRY[policy](1), metrics=metrics)


def add_node(
    f: Fleet,
    node_id: str,
    models: Iterable[str] = ("llama3.2:latest",),
    loaded: Iterable[str] = (),
    *,
    healthy: bool = True,
    labels: dict[str, str] | None = None,
    max_in_flight: int = 0,
    num_parallel: int = 1,
    vram_gb: float = 24.0,
    hostname: str | None = None,
    context_length: int = 0,
) -> Node:
    hello = Hello(
        node_id=node_id,
        ollama_url=f"http://{node_id}.test:11434",
        labels=tuple(sorted((labels or {}).items())),
        capacity=Capacity(
            num_parallel=num_parallel, max_in_flight=max_in_flight, context_length=context_length
        ),
        instance_id=f"{node_id}-1",
        hostname=hostname or node_id,
    )
    node, _ = f.attach(hello, object())
    total = int(vram_gb * 1024**3)
    snap = Snapshot(
        sequence=1,
        ollama_healthy=healthy,
        installed=tuple(InstalledModel(name=m, size_bytes=2 * GB) for m in models),
        loaded=tuple(LoadedModel(name=m, size_vram_bytes=2 * GB) for m in loaded),
        gpus=(Gpu(0, "GPU", "", total, total),),
    )
    f.update(node_id, node.session, snap)
    return node
