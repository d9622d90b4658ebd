"""Prometheus metrics of the node agent, on their own registry. What the agent last observed
(Ollama health, models, GPU memory) and its links are read at scrape time."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from nodeagent.agent import Agent


class _AgentCollector(Collector):
    def __init__(self, agent: Agent) -> None:
        self.agent = agent

    def collect(self) -> Iterable[Metric]:
        agent = self.agent
        snap = agent.observed
        up = GaugeMetricFamily("hops_agent_ollama_up", "1 when the local Ollama answers polls")
        up.add_metric([], 1 if snap is not None and snap.ollama_healthy else 0)
        yield up
        installed = GaugeMetricFamily("hops_agent_installed_models", "Models on disk")
        installed.add_metric([], len(snap.installed) if snap else 0)
        yield installed
        loaded = GaugeMetricFamily("hops_agent_loaded_models", "Models loaded in memory")
        loaded.add_metric([], len(snap.loaded) if snap else 0)
        yield loaded
        total = GaugeMetricFamily(
            "hops_agent_gpu_memory_total_bytes", "GPU memory per GPU", labels=["gpu"]
        )
        free = GaugeMetricFamily(
            "hops_agent_gpu_memory_free_bytes", "Free GPU memory per GPU", labels=["gpu"]
        )
        for gpu in snap.gpus if snap else ():
            total.add_metric([str(gpu.index)], gpu.total_bytes)
            free.add_metric([str(gpu.index)], gpu.free_bytes)
        yield total
        yield free
        connected = GaugeMetricFamily(
            "hops_agent_controlplane_connected",
            "1 while the stream to a control plane is up",
            labels=["controlplane"],
        )
        sessions = CounterMetricFamily(
            "hops_agent_controlplane_sessions",
            "Streams opened to a control plane (reconnects included)",
            labels=["controlplane"],
        )
        for link in agent.links:
            connected.add_metric([link.address], 1 if link.connected.is_set() else 0)
            sessions.add_metric([link.address], link.sessions)
        yield connected
        yield sessions
        sent = CounterMetricFamily(
            "hops_agent_snapshots", "Changed snapshots published to the control planes"
        )
        sent.add_metric([], agent.published)
        yield sent


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.poll_seconds = Histogram(
            "hops_agent_poll_duration_seconds",
            "Time to poll Ollama and the GPUs once",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.commands = Counter(
            "hops_agent_commands",
            "Commands run for the control planes, by kind and result",
            ["kind", "result"],
            registry=self.registry,
        )

    def watch(self, agent: Agent) -> None:
        self.registry.register(_AgentCollector(agent))
