"""Prometheus metrics of the control plane, on their own registry (several control planes may
share a process in tests). Fleet gauges are computed at scrape time from the live state."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from controlplane.fleet import Fleet


class _FleetCollector(Collector):
    def __init__(self, fleet: Callable[[], Fleet | None]) -> None:
        self._fleet = fleet

    def collect(self) -> Iterable[Metric]:
        fleet = self._fleet()
        if fleet is None:
            return
        states: Counter[str] = Counter(n.state.name.lower() for n in fleet.nodes.values())
        nodes = GaugeMetricFamily("hops_controlplane_nodes", "Nodes by state", labels=["state"])
        for state in ("online", "unhealthy", "offline"):
            nodes.add_metric([state], states[state])
        yield nodes
        cordoned = GaugeMetricFamily("hops_controlplane_nodes_cordoned", "Cordoned nodes")
        cordoned.add_metric([], sum(1 for n in fleet.nodes.values() if n.cordoned))
        yield cordoned
        loaded = GaugeMetricFamily(
            "hops_controlplane_loaded_models", "Models loaded in memory per node", labels=["node"]
        )
        for node in fleet.nodes.values():
            if node.session is not None:
                loaded.add_metric([node.node_id], len(node.snapshot.loaded))
        yield loaded
        leases = GaugeMetricFamily("hops_controlplane_open_leases", "Requests in flight (leases)")
        leases.add_metric([], len(fleet.leases))
        yield leases


class ControlPlaneMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.fleet: Fleet | None = None
        self.registry.register(_FleetCollector(lambda: self.fleet))
        self.picks = PromCounter(
            "hops_controlplane_picks",
            "Pick calls by policy and result (ok, model_not_found, no_healthy_node, saturated, "
            "node_not_found, waiting_for_better: held in admission for a busy host that would "
            "serve it sooner than the free ones)",
            ["policy", "result"],
            registry=self.registry,
        )
        self.over_context = PromCounter(
            "hops_controlplane_over_context_picks",
            "Requests sent to a host whose context length is shorter than their prompt's "
            "estimate and expected reply (Ollama cuts such a prompt, or drops its start "
            "mid-reply, with no error), by node: no host that could take them holds them whole",
            ["node"],
            registry=self.registry,
        )
        self.reports = PromCounter(
            "hops_controlplane_reports",
            "Report calls by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.route_streams = Gauge(
            "hops_controlplane_route_streams",
            "Open Route streams (edges sending picks and reports as stream messages)",
            registry=self.registry,
        )
        self.pick_seconds = Histogram(
            "hops_controlplane_pick_duration_seconds",
            "Time to decide one Pick",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05),
            registry=self.registry,
        )

    def observe_pick(self, policy: str, result: str, seconds: float) -> None:
        self.picks.labels(policy, result).inc()
        self.pick_seconds.observe(seconds)

    def observe_report(self, outcome: str) -> None:
        self.reports.labels(outcome).inc()
