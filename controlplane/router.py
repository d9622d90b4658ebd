"""Per-request routing: filter the fleet, let the policy rank, open a lease; and close leases from
Reports, feeding each node's breaker and what is learned about its speed.

Filters, in order: connected and Ollama healthy, not cordoned or draining, has the model (any node
for a pull), not excluded, labels match exactly, the node named by the client if any, breaker
allows, under the node's own concurrency cap.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum

from controlplane.fleet import Fleet, Node, model_key
from controlplane.leases import Lease
from controlplane.metrics import ControlPlaneMetrics
from controlplane.model import ApiKind, Report, RouteRequest
from controlplane.policies import Candidate, Picker, Ranked

EWMA_ALPHA = 0.3
LOADING_TTL_S = 300.0  # a routed load that never shows up in a snapshot is forgotten
MAX_SESSIONS = 10_000
RECENT_DECISIONS = 50


@dataclass(frozen=True, slots=True)
class Decision:
    """One routing decision, kept for the dashboard."""

    at: float
    model: str
    status: str
    node_id: str = ""
    reason: str = ""


class PickStatus(Enum):
    OK = 1
    MODEL_NOT_FOUND = 2
    NO_HEALTHY_NODE = 3
    SATURATED = 4
    NODE_NOT_FOUND = 5


@dataclass(frozen=True, slots=True)
class PickOutcome:
    status: PickStatus
    policy: str
    lease_id: str = ""
    ranked: tuple[Ranked, ...] = ()
    message: str = ""
    retry_after_s: float = 0.0


@dataclass(slots=True)
class Learned:
    """What Reports taught us about one model on one node (exponentially weighted)."""

    decode_tps: float = 0.0
    load_seconds: float = 0.0
    samples: int = 0


@dataclass(slots=True)
class Router:
    fleet: Fleet
    policy: Picker
    metrics: ControlPlaneMetrics
    max_candidates: int = 3
    retry_after_s: float = 2.0
    queue_per_slot: int = 0  # in flight per parallel slot before a host is saturated (0: no cap)
    learned: dict[tuple[str, str], Learned] = field(default_factory=dict)
    sessions: OrderedDict[str, tuple[str, str]] = field(default_factory=OrderedDict)
    recent: deque[Decision] = field(default_factory=lambda: deque(maxlen=RECENT_DECISIONS))

    def pick(self, request: RouteRequest) -> PickOutcome:
        started = time.perf_counter()
        outcome = self._pick(request)
        status = outcome.status.name.lower()
        self.metrics.observe_pick(outcome.policy, status, time.perf_counter() - started)
        first = outcome.ranked[0] if outcome.ranked else None
        self.recent.append(
            Decision(
                time.time(),
                request.model,
                status,
                first.candidate.node_id if first else "",
                first.reason if first else outcome.message,
            )
        )
        return outcome

    def _pick(self, request: RouteRequest) -> PickOutcome:
        name = self.policy.name
        key = model_key(request.model)
        pool = self.fleet.nodes if request.api is ApiKind.PULL else self.fleet.holders.get(key, {})
        if request.node_id:
            named = self.fleet.nodes.get(request.node_id)
            if named is None or named.session is None:
                return PickOutcome(
                    PickStatus.NODE_NOT_FOUND,
                    name,
                    message=f"node {request.node_id!r} is not connected",
                )
            pool = {named.node_id: named} if named.node_id in pool else {}
        holders = [n for n in pool.values() if n.session is not None]
        if not holders:
            return PickOutcome(
                PickStatus.MODEL_NOT_FOUND,
                name,
                message=f"model {request.model!r} is not on any host",
            )
        eligible: list[Candidate] = []
        saturated = 0
        affinity = self._affinity(request.session_key, key)
        for node in holders:
            if not self._passes(node, request):
                continue
            cap = node.hello.capacity.max_in_flight or (
                node.hello.capacity.num_parallel * self.queue_per_slot
            )
            if cap and self.fleet.leases.in_flight(node.node_id) >= cap:
                saturated += 1
                continue
            eligible.append(self._candidate(node, key, affinity))
        if not eligible:
            status = PickStatus.SATURATED if saturated else PickStatus.NO_HEALTHY_NODE
            message = (
                "every host with this model is at its concurrency limit"
                if saturated
                else "no healthy host can serve this model now"
            )
            return PickOutcome(status, name, message=message, retry_after_s=self.retry_after_s)
        limit = request.max_candidates or self.max_candidates
        ranked = tuple(self.policy.pick(request, eligible, limit))
        first = self.fleet.nodes[ranked[0].candidate.node_id]
        lease = self.fleet.leases.open(request.edge_id, first.node_id, key)
        first.breaker.on_dispatch(lease.lease_id)
        if not ranked[0].candidate.loaded and request.api is not ApiKind.PULL:
            first.mark_loading(key)
        self._remember(request.session_key, first.node_id, key)
        return PickOutcome(PickStatus.OK, name, lease_id=lease.lease_id, ranked=ranked)

    @staticmethod
    def _passes(node: Node, request: RouteRequest) -> bool:
        if not node.routable or node.node_id in request.exclude:
            return False
        if request.label_selector:
            labels = node.hello.label_map
            if any(labels.get(k) != v for k, v in request.label_selector):
                return False
        return node.breaker.allows()

    def _candidate(self, node: Node, key: str, affinity_node: str) -> Candidate:
        # The hot path of every pick, once per eligible host: locals and plain dict lookups.
        node_id = node.hello.node_id
        per_model = self.fleet.leases.per_model
        installed = node.installed_by_key.get(key)
        on_gpu = node.vram_total > 0
        snapshot = node.snapshot
        total = node.vram_total if on_gpu else snapshot.system_memory_total_bytes
        free = node.vram_free if on_gpu else snapshot.system_memory_free_bytes
        idle = idle_count = 0
        for loaded_key, model in node.loaded_by_key.items():
            if not per_model.get((node_id, loaded_key)):
                idle += model.size_vram_bytes if on_gpu else model.size_bytes
                idle_count += 1
        # Loads routed here but not yet visible in a snapshot will take memory too.
        if node.loading:
            free -= node.loading_bytes
            if key in node.loading:
                free += node.loading[key][1]
        learned = self.learned.get((node_id, key))
        loaded = key in node.loaded_by_key
        capacity = node.hello.capacity
        return Candidate(
            node_id=node_id,
            ollama_url=node.hello.ollama_url,
            loaded=loaded,
            in_flight_model=per_model.get((node_id, key), 0),
            in_flight_node=self.fleet.leases.per_node.get(node_id, 0),
            num_parallel=capacity.num_parallel,
            weight=node.hello.weight,
            vram_total=node.vram_total,
            vram_free=node.vram_free,
            model_size=installed.size_bytes if installed else 0,
            on_gpu=on_gpu,
            memory_total=total,
            memory_free=max(free, 0),
            loading=not loaded and key in node.loading,
            idle_loaded_bytes=idle,
            decode_tps=learned.decode_tps if learned else 0.0,
            load_seconds=learned.load_seconds if learned else 0.0,
            affinity=node_id == affinity_node,
            loaded_count=len(node.loaded_by_key) + len(node.loading) - (key in node.loading),
            max_loaded=capacity.max_loaded_models or 3 * max(len(snapshot.gpus), 1),
            idle_loaded_count=idle_count,
        )

    def _affinity(self, session_key: str, key: str) -> str:
        """The node this session last ran on, if it is still up with the model loaded."""
        if not session_key:
            return ""
        seen = self.sessions.get(session_key)
        if seen is None or seen[1] != key:
            return ""
        node = self.fleet.nodes.get(seen[0])
        if node is None or node.session is None or key not in node.loaded_by_key:
            del self.sessions[session_key]  # the host left or unloaded the model: forget
            return ""
        return seen[0]

    def _remember(self, session_key: str, node_id: str, key: str) -> None:
        if not session_key:
            return
        self.sessions[session_key] = (node_id, key)
        self.sessions.move_to_end(session_key)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)

    def report(self, report: Report) -> bool:
        """Apply one attempt's outcome; False when the lease is unknown (closed or expired)."""
        lease = self.fleet.leases.get(report.lease_id)
        if lease is None:
            return False
        node = self.fleet.nodes.get(report.node_id or lease.node_id)
        if node is not None:
            detail = f"http {report.http_status}" if report.http_status else ""
            node.breaker.record(report.outcome, lease.lease_id, detail)
            self._learn(node.node_id, lease.model, report)
        if report.retry_node_id and report.retry_node_id in self.fleet.nodes:
            self.fleet.leases.move(lease.lease_id, report.retry_node_id)
            self.fleet.nodes[report.retry_node_id].breaker.on_dispatch(lease.lease_id)
        else:
            self.fleet.leases.close(lease.lease_id)
        self.metrics.observe_report(report.outcome.name.lower())
        return True

    def _learn(self, node_id: str, model: str, report: Report) -> None:
        stats = report.stats
        if stats is None:
            return
        learned = self.learned.setdefault((node_id, model), Learned())
        if stats.eval_count and stats.eval_duration_ns:
            tps = stats.eval_count / (stats.eval_duration_ns / 1e9)
            learned.decode_tps = _ewma(learned.decode_tps, tps)
        if stats.load_duration_ns > 100_000_000:  # a real load, not the warm hand-over
            learned.load_seconds = _ewma(learned.load_seconds, stats.load_duration_ns / 1e9)
        learned.samples += 1

    def sweep(self, lease_ttl: float) -> int:
        """Release leases older than ``lease_ttl``; forget long-offline nodes."""
        expired = self._abandon(self.fleet.leases.expire(lease_ttl))
        stale = time.monotonic() - LOADING_TTL_S
        for node in self.fleet.nodes.values():
            node.forget_loads(lambda _key, since: since < stale)
        self.fleet.forget_offline()
        return expired

    def release_edge(self, edge_id: str) -> int:
        """The edge's session closed: its leases end without an outcome."""
        return self._abandon(self.fleet.leases.release_edge(edge_id))

    def _abandon(self, leases: list[Lease]) -> int:
        for lease in leases:
            node = self.fleet.nodes.get(lease.node_id)
            if node is not None:
                node.breaker.abandon(lease.lease_id)
        return len(leases)


def _ewma(old: float, new: float) -> float:
    return new if old == 0 else old + EWMA_ALPHA * (new - old)
