"""The protobuf boundary: hops.v1 messages to and from the control plane's plain values."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from hops.v1 import admin_pb2, router_pb2

from hopscommon import labels
from hopscommon.fleet_convert import (
    capacity_pb,
    details_pb,
    duration,
    hello,
    installed_pb,
    loaded_pb,
    snapshot,
    snapshot_pb,
    ts,
)
from hopscommon.runner_options import describe, from_map

__all__ = ["duration", "hello", "snapshot"]

from controlplane.breaker import BreakerState
from controlplane.errors import InvalidRequest
from controlplane.fleet import Fleet, Node, NodeState, model_key
from controlplane.learning import Learned
from controlplane.model import ApiKind, GenerationStats, Outcome, Report, RouteRequest
from controlplane.router import PickOutcome, PickStatus

MAX_ERROR_TEXT = 256  # of a report's error text kept: the wire's bound, whatever an edge sends
MAX_DIGEST = 64  # of a report's request digest kept


def route_request(msg: router_pb2.PickRequest, request_id: int = 0) -> RouteRequest:
    """Raises InvalidRequest for a pick no policy can answer (no model, an unknown API kind)."""
    if not msg.model.strip() and msg.api != router_pb2.API_KIND_PULL:
        raise InvalidRequest("model is required")
    try:
        api = ApiKind(msg.api)
    except ValueError:
        raise InvalidRequest(f"unknown api kind {msg.api}") from None
    return RouteRequest(
        model=msg.model,
        api=api,
        edge_id=msg.edge_id,
        session_key=msg.session_key,
        exclude=frozenset(msg.exclude_node_ids),
        label_selector=_selector(msg.label_selector),
        node_id=msg.node_id,
        prompt_tokens=msg.prompt_tokens,
        longest_input=msg.longest_input_tokens,
        max_reply=msg.max_reply_tokens,
        max_candidates=msg.max_candidates,
        num_ctx=msg.num_ctx,
        runner_options=from_map(dict(msg.runner_options)) if msg.runner_options else (),
        request_id=request_id,
    )


def _selector(wanted: Mapping[str, str]) -> labels.Labels:
    if len(wanted) > labels.MAX_LABELS:
        raise InvalidRequest(f"at most {labels.MAX_LABELS} labels in label_selector")
    return tuple(sorted(wanted.items()))


_PICK_STATUS = {
    PickStatus.OK: router_pb2.PICK_STATUS_OK,
    PickStatus.MODEL_NOT_FOUND: router_pb2.PICK_STATUS_MODEL_NOT_FOUND,
    PickStatus.NO_HEALTHY_NODE: router_pb2.PICK_STATUS_NO_HEALTHY_NODE,
    PickStatus.SATURATED: router_pb2.PICK_STATUS_SATURATED,
    PickStatus.NODE_NOT_FOUND: router_pb2.PICK_STATUS_NODE_NOT_FOUND,
}


def pick_response(outcome: PickOutcome) -> router_pb2.PickResponse:
    response = router_pb2.PickResponse(
        status=_PICK_STATUS[outcome.status],
        lease_id=outcome.lease_id,
        policy=outcome.policy,
        message=outcome.message,
        candidates=[
            router_pb2.Candidate(
                node_id=r.candidate.node_id,
                ollama_url=r.candidate.ollama_url,
                reason=r.reason,
                score=r.score,
                loaded=r.candidate.loaded,
            )
            for r in outcome.ranked
        ],
    )
    if outcome.retry_after_s:
        response.retry_after.CopyFrom(duration(outcome.retry_after_s))
    return response


def report(msg: router_pb2.ReportRequest) -> Report:
    """Raises InvalidRequest for a report without a lease. An outcome this control plane does
    not know (a newer edge's) counts as none given: the lease still ends, and no host is
    blamed or cleared for it. Refusing the report would hold the lease, and the host's slot,
    until its TTL."""
    if not msg.lease_id:
        raise InvalidRequest("lease_id is required")
    try:
        outcome = Outcome(msg.outcome)
    except ValueError:
        outcome = Outcome.UNSPECIFIED
    stats = None
    if msg.HasField("stats"):
        s = msg.stats
        stats = GenerationStats(
            s.total_duration_ns,
            s.load_duration_ns,
            s.prompt_eval_count,
            s.prompt_eval_duration_ns,
            s.eval_count,
            s.eval_duration_ns,
            s.first_token_ns,
            s.reply_ns,
            s.prompt_eval_cached_count if s.HasField("prompt_eval_cached_count") else None,
        )
    return Report(
        lease_id=msg.lease_id,
        node_id=msg.node_id,
        outcome=outcome,
        http_status=msg.http_status,
        ttfb_s=msg.time_to_first_byte.ToNanoseconds() / 1e9,
        duration_s=msg.duration.ToNanoseconds() / 1e9,
        retry_node_id=msg.retry_node_id,
        stats=stats,
        error=msg.error[:MAX_ERROR_TEXT],
        request_digest=msg.request_digest[:MAX_DIGEST],
    )


def inventory(fleet: Fleet) -> router_pb2.Inventory:
    return router_pb2.Inventory(
        version=fleet.version,
        generated_at=ts(time.time()),
        nodes=[
            router_pb2.InventoryNode(
                node_id=n.node_id,
                ollama_url=n.hello.ollama_url,
                routable=n.routable,
                ollama_version=n.snapshot.ollama_version,
                installed=[installed_pb(m) for m in n.snapshot.installed],
                loaded=[loaded_pb(m) for m in n.snapshot.loaded],
                upstream_headers=dict(n.hello.upstream_headers),
                labels=n.hello.label_map,
            )
            for n in sorted(fleet.nodes.values(), key=lambda n: n.node_id)
            if n.session is not None
        ],
    )


_NODE_STATE = {
    NodeState.ONLINE: admin_pb2.NODE_STATE_ONLINE,
    NodeState.UNHEALTHY: admin_pb2.NODE_STATE_UNHEALTHY,
    NodeState.OFFLINE: admin_pb2.NODE_STATE_OFFLINE,
}
_BREAKER = {
    BreakerState.CLOSED: admin_pb2.BREAKER_STATE_CLOSED,
    BreakerState.OPEN: admin_pb2.BREAKER_STATE_OPEN,
    BreakerState.HALF_OPEN: admin_pb2.BREAKER_STATE_HALF_OPEN,
}


def node_pb(
    node: Node, fleet: Fleet, learned: Sequence[admin_pb2.LearnedSpeed] = ()
) -> admin_pb2.Node:
    in_flight = fleet.leases.by_model(node.node_id)
    breaker = node.breaker
    wall_open_until = time.time() + max(breaker.open_until - breaker.clock(), 0.0)
    default_length, default_source = node.default_context
    return admin_pb2.Node(
        node_id=node.node_id,
        ollama_url=node.hello.ollama_url,
        labels=dict(node.hello.labels),
        state=_NODE_STATE[node.state],
        cordoned=node.cordoned,
        draining=node.draining,
        breaker=admin_pb2.Breaker(
            state=_BREAKER[breaker.state],
            consecutive_failures=breaker.consecutive_failures,
            open_until=ts(wall_open_until) if breaker.opened else None,
            last_failure=breaker.last_failure,
        ),
        snapshot=snapshot_pb(node.snapshot),
        in_flight=[
            admin_pb2.ModelInFlight(model=m, in_flight=c) for m, c in sorted(in_flight.items())
        ],
        in_flight_total=sum(in_flight.values()),
        automatic_context_length={
            key: length for key in node.installed_by_key if (length := node.automatic_context(key))
        },
        runner_options={key: describe(o) for key, o in node.runner_options.items() if o},
        default_context_length=default_length,
        default_context_source=default_source,
        capacity=capacity_pb(node.hello.capacity),
        connected_since=ts(node.connected_since) if node.session is not None else None,
        last_seen=ts(node.last_seen),
        conflicts=[
            admin_pb2.IdConflict(
                instance_id=c.instance_id,
                hostname=c.hostname,
                ollama_url=c.ollama_url,
                seen_at=ts(c.seen_at),
            )
            for c in node.conflicts
        ],
        hostname=node.hello.hostname,
        instance_id=node.hello.instance_id,
        weight=node.hello.weight,
        learned=learned,
    )


def learned_by_node(
    learned: Mapping[tuple[str, str], Learned],
) -> dict[str, list[admin_pb2.LearnedSpeed]]:
    """Routing's learned speeds, grouped by node id, each node's by model name."""
    out: dict[str, list[admin_pb2.LearnedSpeed]] = {}
    for (node_id, model), speed in sorted(learned.items()):
        out.setdefault(node_id, []).append(
            admin_pb2.LearnedSpeed(
                model=model,
                decode_tokens_per_second=speed.decode_tps,
                load_seconds=speed.load_seconds,
                samples=speed.samples,
                prompt_tokens_per_second=speed.prompt_tps,
            )
        )
    return out


def fleet_models(
    fleet: Fleet, figures: Callable[[str], tuple[float, float, float]] | None = None
) -> Iterable[admin_pb2.FleetModel]:
    """Every model on a connected node; ``figures``: what routing learned of a model key (its
    usual reply, a prompt's added tokens and token ratio: Learning.model_figures)."""
    models: dict[str, admin_pb2.FleetModel] = {}
    for node in sorted(fleet.nodes.values(), key=lambda n: n.node_id):
        if node.session is None:
            continue
        for m in node.snapshot.installed:
            entry = models.get(m.name)
            if entry is None:
                entry = admin_pb2.FleetModel(
                    name=m.name, size_bytes=m.size_bytes, details=details_pb(m.details)
                )
                models[m.name] = entry
            entry.installed_on.append(node.node_id)
        for loaded in node.snapshot.loaded:
            entry = models.setdefault(loaded.name, admin_pb2.FleetModel(name=loaded.name))
            entry.loaded_on.append(node.node_id)
    for name, entry in models.items():
        key = model_key(name)
        entry.in_flight = fleet.leases.model_total(key)
        if figures is not None:
            entry.reply_tokens, entry.prompt_added_tokens, entry.prompt_token_ratio = figures(key)
    return [models[k] for k in sorted(models)]
