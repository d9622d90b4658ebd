"""Per-request routing: filter the fleet, let the policy rank, open a lease; and close leases from
Reports, feeding each node's breaker and what is learned about its speed.

Filters, in order: connected and Ollama healthy, not cordoned or draining, has the model (any node
for a pull), not excluded, labels match exactly, the node named by the client if any, breaker
allows, under the node's own concurrency cap.

With a policy that can bound its cost from below (``BoundedPicker``, e.g. memory_aware), hosts
are visited cheapest floor first and the visit stops once no host left could rank: on a big
fleet only a handful of candidate records are built per pick, with the same answer.

The Router composes its parts, each in its own module, and holds the steps that touch several:
- ``candidates``: the record each host makes for a request (controlplane.candidates);
- ``floors``: the floor index of a bounded policy (controlplane.floors);
- ``learning``: the speeds and lengths replies teach (controlplane.learning);
- ``demand``: how often each model is asked for (controlplane.demand);
- ``sessions``: session affinity and the prompt caches it aims for (controlplane.sessions);
- ``blame``: which failures count against a host's breaker (controlplane.blame).
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum

from controlplane.blame import Blame
from controlplane.candidates import Candidates, with_modelfile_defaults
from controlplane.demand import Demand
from controlplane.fleet import Fleet, Node, model_key
from controlplane.floors import FloorIndex
from controlplane.learning import WARM_HANDOVER_NS, Learning, prompt_spent
from controlplane.leases import Lease
from controlplane.metrics import ControlPlaneMetrics
from controlplane.model import ApiKind, GenerationStats, Outcome, Report, RouteRequest
from controlplane.policies import BoundedPicker, Candidate, Picker, Ranked
from controlplane.policies.base import (
    DEFAULT_REPLY_TOKENS,
    memory_needed,
    prompt_time,
    seconds_per_prompt_token,
)
from controlplane.sessions import Sessions
from hopscommon import labels

log = logging.getLogger("hops.controlplane")
LOADING_TTL_S = 300.0  # a routed load that never shows up in a snapshot is forgotten
CONTEXT_PROBE_S = 10.0  # how long snapshots are watched for the length a reply (re)loaded at
NO_LOAD = "no-load"  # the route reason of a show or a pull: Ollama loads no model for it
# A request waits for a host at its cap (in admission) rather than go to a free one only when
# that host is expected to serve it this much sooner, its wait included.
WAIT_FOR_BETTER_S = 5.0
RECENT_DECISIONS = 50
# A limited pick's bound of a host is summed in another order than its cost: a little under,
# whatever the rounding (costs are >= 0).
LIMITED_BOUND_MARGIN = 1.0 - 1e-9


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
    # SATURATED only because a host at its cap would serve it much sooner than those free now
    # (see Router.pick's may_wait): one of those will do when it cannot wait any longer.
    better_busy: bool = False


@dataclass(slots=True)
class Router:
    fleet: Fleet
    policy: Picker
    metrics: ControlPlaneMetrics
    max_candidates: int = 3
    retry_after_s: float = 2.0
    queue_per_slot: int = 0  # in flight per parallel slot before a host is saturated (0: no cap)
    recent: deque[Decision] = field(default_factory=lambda: deque(maxlen=RECENT_DECISIONS))
    _checked: tuple[Picker, BoundedPicker | None] | None = None  # see _as_bounded
    # The parts, built from the fleet (see __post_init__).
    learning: Learning = field(init=False)
    demand: Demand = field(init=False)
    sessions: Sessions = field(init=False)
    candidates: Candidates = field(init=False)
    floors: FloorIndex = field(init=False)
    blame: Blame = field(init=False)

    def __post_init__(self) -> None:
        self.learning = Learning(self.fleet, self._refresh_floor)
        self.demand = Demand()
        self.sessions = Sessions(self.fleet)
        self.candidates = Candidates(self.fleet, self.learning, self.demand, self.sessions)
        self.floors = FloorIndex(self.fleet, self.candidates.plain)
        self.blame = Blame(self.fleet)

    def pick(self, request: RouteRequest, *, may_wait: bool = False) -> PickOutcome:
        """Rank the hosts for ``request`` and open a lease on the first. ``may_wait``: the caller
        (admission) can hold the request, so it may be answered SATURATED (better_busy) while
        hosts are free, when a host at its cap would serve it much sooner."""
        started = time.perf_counter()
        outcome = self._pick(request, may_wait)
        # Held for a busy host while others are free: not the fleet at its cap.
        status = "waiting_for_better" if outcome.better_busy else outcome.status.name.lower()
        self.metrics.observe_pick(outcome.policy, status, time.perf_counter() - started)
        first = outcome.ranked[0] if outcome.ranked else None
        if first is not None and first.candidate.over_context and outcome.lease_id:
            self.metrics.over_context.labels(first.candidate.node_id).inc()
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

    def _as_bounded(self, policy: Picker) -> BoundedPicker | None:
        """The policy if it bounds its costs, else None. isinstance on a Protocol costs about
        as much as a whole pick, so it is asked once per policy, not per pick or report."""
        if self._checked is None or self._checked[0] is not policy:
            self._checked = (policy, policy if isinstance(policy, BoundedPicker) else None)
        return self._checked[1]

    def _pick(self, request: RouteRequest, may_wait: bool) -> PickOutcome:
        if request.session_key and request.is_embedding:
            # An embedding model's attention reads its inputs whole each time, so no host holds
            # a cached part of them: identical inputs are no session, and spread as others do.
            request = replace(request, session_key="")
        name = self.policy.name
        key = model_key(request.model)
        limit = request.max_candidates or self.max_candidates
        policy = self._as_bounded(self.policy)
        asked = request.context
        if request.label_selector:
            outside = self._outside_labels(request, key)
            if outside is not None:
                return outside
        if policy is not None and not request.node_id and request.api is not ApiKind.PULL:
            found = self._rank_bounded(request, key, limit, policy, asked, may_wait)
        else:
            found = self._rank_all(request, key, limit, asked)
        if isinstance(found, PickOutcome):
            return found
        ranked = found
        first = self.fleet.nodes[ranked[0].candidate.node_id]
        asked_for = key
        # As the candidate saw it: the model's modelfile PARAMETERs fill what the request leaves
        # out (Ollama loads it so).
        asked, options = with_modelfile_defaults(
            first.installed_by_key.get(key), asked, request.runner_options
        )
        key = first.runner_key(key)  # a copy of a model loaded there runs on its instance
        lease = self.fleet.leases.open(
            request.edge_id,
            first.node_id,
            key,
            request.request_id,
            runs_model=request.runs_model,
            prompt_seconds=prompt_time(ranked[0].candidate),
            max_reply=request.reply_limit if request.runs_model else 0,
        )
        if not request.runs_model:
            # A show or a pull loads nothing, counts as no demand for the model, and is never
            # the breaker's probe: its answer says nothing of whether the host runs models.
            # The policy's reasons ("cold-fit") would say a load; X-Hops-Route says none.
            ranked = tuple(replace(r, reason=NO_LOAD) for r in ranked)
            return PickOutcome(PickStatus.OK, name, lease_id=lease.lease_id, ranked=ranked)
        first.breaker.on_dispatch(lease.lease_id)
        if asked == 0:
            listed = first.loaded_by_key.get(key)
            lengths = {listed.context_length} if listed is not None else set()
            if key in first.loading:  # a load under way: the explicit length it runs at
                lengths.add(first.load_context.get(key, 0))
            lease.auto_from = tuple(sorted(lengths - {0}))
        elif asked:
            lease.context = first.wanted_context(key, asked)
            probe = first.context_probe.get(key)
            if probe is not None:  # this request may reload it before the next snapshot
                first.context_probe[key] = ((*probe[0], lease.context), probe[1])
        # Per length too, once the model was ever asked at an explicit one: what a reload
        # would cost the clients of the instance it replaces (see Candidates._replaced).
        self.demand.count(key, asked)
        chosen = ranked[0].candidate
        lease.ready = (
            chosen.loaded
            and not chosen.context_unsure
            and chosen.in_flight_model < chosen.num_parallel
        )
        if not chosen.loaded:
            # Ollama will evict these for it: no longer warm here. Their floors stay as low
            # as when they were warm, still a bound; the next snapshot tightens them.
            # A reload takes the memory of the instance it replaces, and what a longer
            # context length needs beyond it.
            memory = (
                Candidates.reload_memory(first, key, chosen)
                if chosen.reload
                else memory_needed(chosen)
            )
            wanted = lease.context or first.wanted_context(key, 0)
            context = wanted if chosen.reload else 0
            victims = self.candidates.victims(first, key, chosen)
            realiased = first.mark_loading(key, memory, victims, context, asked=lease.context)
            # Loading here now: its floor falls to the loading tier's (see BoundedPicker).
            self.fleet.warm_changed(first.node_id, realiased | {key})
            if not chosen.loading:  # its own load: the instance will have its runner options
                first.load_options[key] = options
            self.fleet.count_warm(first)
            lease.clean_load = not (
                chosen.loading
                or chosen.loading_ahead
                or chosen.busy_victims
                or (chosen.reload and chosen.in_flight_model)  # it waits for those
            )
        lease.cached_prompt = chosen.affinity and chosen.loaded
        lease.prompt_measured = chosen.prompt_tps > 0
        lease.prompt_per_token = seconds_per_prompt_token(chosen)
        lease.prompt_credit = max(request.prompt_tokens - chosen.prompt_tokens, 0)
        if request.is_embedding:
            lease.embedding = True
        elif not chosen.over_context:  # a cut prompt counts less
            lease.prompt_estimate = request.context_prompt
        self.sessions.ran(
            request.session_key,
            first.node_id,
            asked_for,
            key,
            request.prompt_tokens,
            chosen.num_parallel,
        )
        return PickOutcome(PickStatus.OK, name, lease_id=lease.lease_id, ranked=ranked)

    def _rank_all(
        self, request: RouteRequest, key: str, limit: int, context: int | None
    ) -> tuple[Ranked, ...] | PickOutcome:
        """Build a candidate for every host that passes the filters; the policy ranks them."""
        pool = self.fleet.nodes if request.api is ApiKind.PULL else self.fleet.holders.get(key, {})
        if request.node_id:
            named = self.fleet.nodes.get(request.node_id)
            if named is None or named.session is None:
                return PickOutcome(
                    PickStatus.NODE_NOT_FOUND,
                    self.policy.name,
                    message=f"node {request.node_id!r} is not connected",
                )
            pool = {named.node_id: named} if named.node_id in pool else {}
        holders = [n for n in pool.values() if n.session is not None]
        if not holders:
            return self._not_found(request)
        eligible: list[Candidate] = []
        saturated = 0
        affinity = self.sessions.affinity(request.session_key, key)
        candidate_on = self._candidates_for(request, key, context, affinity)
        for node in holders:
            if not self._passes(node, request):
                continue
            if self._full(node, request):
                saturated += 1
                continue
            eligible.append(candidate_on(node))
        if not eligible:
            return self._none_eligible(saturated)
        return tuple(self.policy.pick(request, eligible, limit))

    def _candidates_for(
        self, request: RouteRequest, key: str, context: int | None, affinity: str
    ) -> Callable[[Node], Candidate]:
        """The candidate each host makes for ``request``, whose session last ran on
        ``affinity``: what that host holds cached of it is looked up once."""
        cached = self.sessions.cached_tokens(request.session_key, affinity, key)
        # What must fit the context length it runs at: the prompt, and a generation's reply
        # (the model's average so far, or the most the request lets it run to when fewer;
        # unknown, the limit up to the reply routing assumes, as replies cut at a short limit
        # teach no average): a reply that outgrows it makes Ollama drop half of the context,
        # the prompt's start, and go on without it.
        fit = request.context_prompt
        if fit and not request.is_embedding:
            fit = self.learning.counted_prompt(key, fit)
            reply = int(self.learning.usual_reply(key))
            if request.max_reply:
                fit += min(reply or DEFAULT_REPLY_TOKENS, request.max_reply)
            else:
                fit += reply

        def candidate_on(node: Node) -> Candidate:
            return self.candidates.build(
                node,
                key,
                affinity,
                context,
                request.runner_options,
                request.prompt_tokens,
                cached,
                request.session_key,
                fit,
                request.reply_limit,
            )

        return candidate_on

    def _rank_bounded(
        self,
        request: RouteRequest,
        key: str,
        limit: int,
        policy: BoundedPicker,
        context: int | None,
        may_wait: bool = False,
    ) -> tuple[Ranked, ...] | PickOutcome:
        """As _rank_all, visiting hosts in floor order and stopping once no host left could
        rank in the top ``limit``: every host not visited has a floor, so a cost, above the
        ``limit``-th best (cost, node id) found, and ties go to the lower id, as policies
        break them. Floors bound requests with no reply limit; a shorter reply asked costs
        less, so only a share of each floor bounds it in order, and a host whose floor's
        waits and that share of its decoding rank it out is skipped."""
        self.floors.refresh_all(policy)
        share = self._reply_share(request, key, policy) if request.reply_limit else 1.0
        nodes = self.fleet.nodes
        affinity = self.sessions.affinity(request.session_key, key)
        candidate_on = self._candidates_for(request, key, context, affinity)
        evaluated: list[Candidate] = []
        best: list[tuple[float, str]] = []  # the ``limit`` lowest (cost, node id), sorted
        saturated = 0
        full: list[tuple[float, Node]] = []  # hosts at their cap, with their floors

        def visit(node: Node, floor: float = -math.inf) -> None:
            nonlocal saturated
            if not self._passes(node, request):
                return
            if self._full(node, request):
                saturated += 1
                if may_wait:
                    full.append((floor, node))
                return
            candidate = candidate_on(node)
            evaluated.append(candidate)
            bisect.insort(best, (policy.cost(candidate), node.node_id))
            del best[limit:]

        if affinity in self.fleet.holders.get(key, ()):  # its bonus is not in its floor
            visit(nodes[affinity])
        # A share of a floor scales its waits too. Its waits and a share of its decoding bound
        # a host more tightly, but are not in order: they only skip it (no candidate built).
        fixed = self.floors.fixed.get(key, {}) if share < 1.0 else None
        for floor, node_id in self.floors.by_key.get(key, ()):
            bound = floor * share
            if len(best) >= limit and (bound, node_id) > best[-1]:
                break  # this and every later host cost at least (floor x share, id) > the last
            if fixed is not None:
                base = fixed[node_id]
                bound = (base + share * (floor - base)) * LIMITED_BOUND_MARGIN
                if len(best) >= limit and (bound, node_id) > best[-1]:
                    continue
            node = nodes.get(node_id)
            if node is not None and node_id != affinity:
                visit(node, bound)
        if not evaluated:
            if not any(n.session is not None for n in self.fleet.holders.get(key, {}).values()):
                return self._not_found(request)
            return self._none_eligible(saturated)
        if full and _busy_serves_sooner(full, best[0][0], candidate_on, policy):
            return PickOutcome(
                PickStatus.SATURATED,
                self.policy.name,
                message="the hosts free now would serve this much later than a busy one",
                retry_after_s=self.retry_after_s,
                better_busy=True,
            )
        return tuple(policy.pick(request, evaluated, limit))

    def _reply_share(self, request: RouteRequest, key: str, policy: BoundedPicker) -> float:
        """The share of ``key``'s floors that bounds a request letting its reply run to fewer
        tokens than usual: each host weighs the usual reply of the instance that serves
        ``key`` there, the model's own or, where a copy's runner is loaded, that one's. A host
        where that instance only embeds has its floor taken at EMBED_TOKENS already, the
        least any request decodes, so it weighs none."""
        usual = self.learning.usual_reply
        replies: set[float] = set()
        for node in self.fleet.holders.get(key, {}).values():
            runner = node.runner_key(key)
            if runner not in node.embedding_only:
                replies.add(usual(runner))
        return policy.floor_share(request.reply_limit, replies) if replies else 1.0

    def _refresh_floor(self, node: Node, key: str) -> None:
        """What was learned about (node, key) changed: refresh its floors if indexed for the
        policy in use (a policy without floors, or one not yet indexed, needs none)."""
        if self.floors.policy is self.policy:  # never None: the router always has a policy
            self.floors.refresh(node, key)

    def _full(self, node: Node, request: RouteRequest) -> bool:
        """At the host's own cap (max_in_flight, else num_parallel x queue_per_slot), for a
        request that runs its model: a show or a pull takes none of Ollama's slots."""
        if not request.runs_model:
            return False
        capacity = node.hello.capacity
        cap = capacity.max_in_flight or capacity.num_parallel * self.queue_per_slot
        return bool(cap) and self.fleet.leases.in_flight(node.node_id) >= cap

    def _not_found(self, request: RouteRequest) -> PickOutcome:
        return PickOutcome(
            PickStatus.MODEL_NOT_FOUND,
            self.policy.name,
            message=f"model {request.model!r} is not on any host",
        )

    def _outside_labels(self, request: RouteRequest, key: str) -> PickOutcome | None:
        """A pick its labels rule out for good, as not found (no host carrying them has the
        model, or the node named does not carry them), rather than a 503 that tells the
        client to try again; None when some host carrying them could answer it."""
        wanted = request.label_selector
        shown = labels.shown(wanted)
        if request.node_id:
            named = self.fleet.nodes.get(request.node_id)
            if named is None or labels.matches(named.hello.label_map, wanted):
                return None
            return PickOutcome(
                PickStatus.NODE_NOT_FOUND,
                self.policy.name,
                message=f"node {request.node_id!r} does not carry the labels {shown}",
            )
        pool = self.fleet.nodes if request.api is ApiKind.PULL else self.fleet.holders.get(key, {})
        connected = [n for n in pool.values() if n.session is not None]
        if not connected or any(labels.matches(n.hello.label_map, wanted) for n in connected):
            return None  # not on any host at all: the usual not found
        return PickOutcome(
            PickStatus.MODEL_NOT_FOUND,
            self.policy.name,
            message=f"model {request.model!r} is on no host with the labels {shown}",
        )

    def _none_eligible(self, saturated: int) -> PickOutcome:
        status = PickStatus.SATURATED if saturated else PickStatus.NO_HEALTHY_NODE
        message = (
            "every host with this model is at its concurrency limit"
            if saturated
            else "no healthy host can serve this model now"
        )
        return PickOutcome(
            status, self.policy.name, message=message, retry_after_s=self.retry_after_s
        )

    @staticmethod
    def _passes(node: Node, request: RouteRequest) -> bool:
        if not node.routable or node.node_id in request.exclude:
            return False
        if request.label_selector and not labels.matches(
            node.hello.label_map, request.label_selector
        ):
            return False
        return node.breaker.allows()

    def report(self, report: Report) -> bool:
        """Apply one attempt's outcome; False when the lease is unknown (closed or expired)."""
        lease = self.fleet.leases.get(report.lease_id)
        if lease is None:
            return False
        node = self.fleet.nodes.get(report.node_id or lease.node_id)
        runs = lease.runs_model
        outcome = self.blame.settle_held(lease, report)
        if node is not None and (runs or outcome.is_host_failure):
            # A show or a pull answered does not vouch for the host (see _pick); failing, it
            # still says the host is unwell.
            outcome = self.blame.assign(node, lease, report, outcome)
        if node is not None and runs:
            first_try = lease.attempts == 1 and node.hello.node_id == lease.node_id
            self.learning.learn(
                node.node_id,
                lease.model,
                report,
                clean_load=lease.clean_load and first_try,
                ready=lease.ready and first_try,
                fresh_prompt=not (lease.cached_prompt and first_try),
                prompt=(prompt_spent(lease, report.stats), lease.prompt_measured)
                if first_try
                else (0.0, False),
                reply_limit=lease.max_reply,
                embedding=lease.embedding,
            )
            stats = report.stats
            if first_try and lease.prompt_estimate and stats and stats.prompt_eval_count:
                self.learning.learn_prompt_scale(
                    lease.model, lease.prompt_estimate, stats.prompt_eval_count
                )
            # An edge-timed reply cannot tell a load from a slow prompt: it teaches no length.
            if first_try and lease.auto_from is not None and stats and stats.from_ollama:
                self._learn_auto_context(node, lease.model, lease.auto_from, stats)
        if report.retry_node_id and report.retry_node_id in self.fleet.nodes:
            self.fleet.leases.move(lease.lease_id, report.retry_node_id)
            if runs:
                self.fleet.nodes[report.retry_node_id].breaker.on_dispatch(lease.lease_id)
        else:
            self.fleet.leases.close(lease.lease_id)
        if node is not None and runs:
            replied = 200 <= report.http_status < 300
            if replied:  # a reply came: its load is done, under whichever name it is listed
                node.warming.pop(lease.model, None)
                node.warming.pop(node.runner_key(lease.model), None)
            if lease.model in node.loading:
                if replied:
                    node.answered.add(lease.model)
                else:
                    self._forget_load_unless_awaited(node, lease.model)
        self.metrics.observe_report(outcome.name.lower())
        return True

    def _forget_load_unless_awaited(self, node: Node, key: str) -> None:
        """A request for ``key`` on ``node`` ended without a reply (never sent, refused, timed
        out, or its client left before the first byte). Ollama loads a model for the request
        that asked and stops when it goes, so once no request there waits for ``key``, a load
        routed for it will not happen: stop counting it as loading, and its victims as evicted,
        rather than for LOADING_TTL_S; unless a reply already showed it done."""
        if (
            key in node.loading
            and key not in node.answered
            and not self.fleet.leases.in_flight(node.node_id, key)
        ):
            self._forget_loads(node, lambda k, _: k == key)

    def abandon(self, edge_id: str, request_id: int) -> bool:
        """The edge never got the answer to its pick ``request_id``: close the lease it opened
        as cancelled; False when there is none (the pick opened none, or it is closed)."""
        lease = self.fleet.leases.by_request(edge_id, request_id)
        if lease is None:
            return False
        log.info("lease %s closed: edge %s never got its pick's answer", lease.lease_id, edge_id)
        return self.report(Report(lease.lease_id, lease.node_id, Outcome.CLIENT_CANCELLED))

    def _learn_auto_context(
        self, node: Node, key: str, found: tuple[int, ...], stats: GenerationStats
    ) -> None:
        """Learn the context length ``node`` gives ``key`` when a request names none, from the
        reply to such a request that found it listed, or being loaded, at the lengths
        ``found`` (none: neither, or not reported). Ollama reloads for such a request only
        when the instance was loaded with an explicit, other length (sched.go needsReload), so
        a reply that waited for no load ran at the automatic length; one that loaded shows it
        in the first listing at a length not found, nor asked by requests in flight there
        (they may have reloaded it since: the snapshot may lag the reply)."""
        if stats.load_duration_ns > WARM_HANDOVER_NS:
            leases = self.fleet.leases.on(node.node_id, key)
            found += tuple(lease.context for lease in leases if lease.context)
            now = time.monotonic()
            node.context_probe[key] = (found, now + CONTEXT_PROBE_S)
            node.probe_context(now)  # the listing may show it already
            return
        if len(found) != 1:  # not listed, or also being loaded at another length: unclear
            return
        listed = found[0]
        was = node.automatic_context(key)
        node.learn_auto_context(key, listed)
        if was and was != listed and node.reloading.get(key) == was:
            # A reload routed at the length learned before, which Ollama did not make (its
            # automatic length changed, say on a restart): the mark would wait for it in vain.
            self._forget_loads(node, lambda k, _: k == key)

    def sweep(self, lease_ttl: float) -> int:
        """Release leases older than ``lease_ttl``; forget long-offline nodes."""
        expired = self._abandon(self.fleet.leases.expire(lease_ttl))
        stale = time.monotonic() - LOADING_TTL_S
        for node in self.fleet.nodes.values():
            self._forget_loads(node, lambda _, t: t < stale)
        self.fleet.forget_offline()
        self.demand.forget_decayed()
        return expired

    def _forget_loads(self, node: Node, done: Callable[[str, float], bool]) -> None:
        """Drop ``node``'s routed loads for which ``done(key, since)`` holds; the models they
        were to evict and still loaded are warm again, for ranking and for the warm counts."""
        self.fleet.warm_changed(node.node_id, node.forget_loads(done))
        self.fleet.count_warm(node)

    def release_edge(self, edge_id: str) -> int:
        """The edge's session closed: its leases end without an outcome (and the connections
        it held to hosts with it, so the loads they waited for stop)."""
        leases = self.fleet.leases.release_edge(edge_id)
        for lease in leases:
            node = self.fleet.nodes.get(lease.node_id)
            if node is not None:
                self._forget_load_unless_awaited(node, lease.model)
        return self._abandon(leases)

    def _abandon(self, leases: list[Lease]) -> int:
        for lease in leases:
            self.blame.drop_held(lease)
            node = self.fleet.nodes.get(lease.node_id)
            if node is not None:
                node.breaker.abandon(lease.lease_id)
        return len(leases)


def _busy_serves_sooner(
    full: list[tuple[float, Node]],
    best: float,
    candidate_on: Callable[[Node], Candidate],
    policy: BoundedPicker,
) -> bool:
    """Whether one of the ``full`` hosts (at their cap; with their floors) would serve the
    request more than WAIT_FOR_BETTER_S sooner than the ``best`` cost among those free, its
    wait included. Only hosts whose floor leaves them a chance are costed: under overload no
    host is free and this is never asked."""
    return any(
        floor + WAIT_FOR_BETTER_S < best
        and policy.cost(candidate_on(node)) + WAIT_FOR_BETTER_S < best
        for floor, node in full
    )
