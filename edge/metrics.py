"""The edge's Prometheus metrics, on their own registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class EdgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "hops_edge_requests",
            "Requests by route, model, node and HTTP status",
            ["route", "model", "node", "status"],
            registry=self.registry,
        )
        self.ttfb = Histogram(
            "hops_edge_time_to_first_byte_seconds",
            "From the request to the host's first byte",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "hops_edge_request_duration_seconds",
            "Whole request, as the edge saw it",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pick = Histogram(
            "hops_edge_pick_duration_seconds",
            "Round trip of one Pick to the control plane (admission waits included)",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.1, 1, 10),
            registry=self.registry,
        )
        self.retries = Counter(
            "hops_edge_retries",
            "Attempts abandoned for the next host, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.stream_errors = Counter(
            "hops_edge_stream_errors",
            "Streams a host began with a 2xx and ended saying it failed (Ollama's in-band error)",
            ["node"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "hops_edge_prompt_tokens",
            "Prompt tokens the hosts' replies to generations counted (Ollama's "
            "prompt_eval_count, usage's)",
            ["node"],
            registry=self.registry,
        )
        self.prompt_cached_tokens = Counter(
            "hops_edge_prompt_cached_tokens",
            "Of those, found in the host's prompt cache, where replies say (newer Ollama): over "
            "hops_edge_prompt_tokens, how well session affinity keeps conversations' prefixes",
            ["node"],
            registry=self.registry,
        )
        self.generated_tokens = Counter(
            "hops_edge_generated_tokens",
            "Tokens the hosts generated (Ollama's eval_count, usage's, else the events counted)",
            ["node"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "hops_edge_open_streams", "Responses being relayed now", registry=self.registry
        )
        self.fail_open = Counter(
            "hops_edge_fail_open_picks",
            "Requests routed from the last inventory while no control plane answered",
            registry=self.registry,
        )
