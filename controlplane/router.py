"""Per-request routing: filter the fleet, let the policy rank, open a lease; and close leases from
Reports, feeding each node's breaker and what is learned about its speed.

Filters, in order: connected and Ollama healthy, not cordoned or draining, has the model (any node
for a pull), not excluded, labels match exactly, the node named by the client if any, breaker
allows, under the node's own concurrency cap.

With a policy that can bound its cost from below (``BoundedPicker``, e.g. memory_aware), hosts
are visited cheapest floor first and the visit stops once no host left could rank: on a big
fleet only a handful of candidate records are built per pick, with the same answer.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum

from controlplane.fleet import Fleet, Node, model_key
from controlplane.leases import HeldFailure, Lease
from controlplane.metrics import ControlPlaneMetrics
from controlplane.model import ApiKind, GenerationStats, Outcome, Report, RouteRequest
from controlplane.policies import BoundedPicker, Candidate, Picker, Ranked
from controlplane.policies.base import (
    Busy,
    Resident,
    evictions_needed,
    fits_evicting_idle,
    memory_needed,
    prompt_time,
    seconds_per_prompt_token,
)
from hopscommon import labels, names
from hopscommon.fleet import InstalledModel
from hopscommon.runner_options import RunnerOptions, needs_reload, with_defaults

log = logging.getLogger("hops.controlplane")
EWMA_ALPHA = 0.3
LOADING_TTL_S = 300.0  # a routed load that never shows up in a snapshot is forgotten
# A load_duration up to this is Ollama handing over a loaded model (tens of ms), not a load.
WARM_HANDOVER_NS = 100_000_000
CONTEXT_PROBE_S = 10.0  # how long snapshots are watched for the length a reply (re)loaded at
MAX_SESSIONS = 10_000
MAX_FAILURES = 1_000  # failed requests remembered, to tell one failing on every host
FAILURE_MEMORY_S = 600.0  # for this long
DEMAND_WINDOW = 50  # picks: a model's demand is its expected share of about this many
DEMAND_DECAY = 1.0 - 1.0 / DEMAND_WINDOW
DEMAND_FORGOTTEN = 0.01  # decayed below this (about 230 picks of other keys), a key is dropped
NO_LOAD = "no-load"  # the route reason of a show or a pull: Ollama loads no model for it
TOKENS_STEP = 0.2
# A generation's real prompt against the edge's estimate of it, per model (see _prompt_scale):
# a prompt estimated under this many tokens teaches what the model's template and default
# system prompt add; a longer one, how many tokens its tokenizer makes of one the edge counts.
PROMPT_SCALE_LONG = 1024
PROMPT_RATIO_RANGE = (0.25, 4.0)
LOAD_RATE_STEP = 0.2
DECODE_RATE_STEP = 0.2
PROMPT_RATE_STEP = 0.2
# A reply whose prompt had fewer tokens says little of the prompt speed: the runner's fixed
# cost per batch dominates it.
MIN_PROMPT_SAMPLE = 64
# A time the edge measured (a whole reply, or a stream's time to its first token) holds its
# prompt's evaluation. Less the prompt at a speed measured on the host, the rest is learned
# from while the prompt took at most PROMPT_SHARE_MEASURED of it; at the cautious prior speed,
# the time is learned from as it is while the prompt took at most PROMPT_SHARE_PRIOR of it (so
# it holds at most that share of prompt). Beyond, an error in the prompt's estimate would be
# most of what is learned.
PROMPT_SHARE_MEASURED = 0.75
PROMPT_SHARE_PRIOR = 0.5
# A whole reply whose prompt took at least this share of it, its decoding at the speed known
# there set apart, teaches the prompt speed instead.
PROMPT_SHARE_TELLS = 0.5
# A request waits for a host at its cap (in admission) rather than go to a free one only when
# that host is expected to serve it this much sooner, its wait included.
WAIT_FOR_BETTER_S = 5.0
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
    # SATURATED only because a host at its cap would serve it much sooner than those free now
    # (see Router.pick's may_wait): one of those will do when it cannot wait any longer.
    better_busy: bool = False


@dataclass(slots=True)
class Learned:
    """What Reports taught us about one model on one node (exponentially weighted)."""

    decode_tps: float = 0.0
    load_seconds: float = 0.0
    prompt_tps: float = 0.0  # prompt tokens evaluated per second, none of them cached
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
    # Per session key: the node and model key it last ran on, and that request's prompt tokens
    # (what the node's prompt cache holds of the conversation).
    sessions: OrderedDict[str, tuple[str, str, int]] = field(default_factory=OrderedDict)
    recent: deque[Decision] = field(default_factory=lambda: deque(maxlen=RECENT_DECISIONS))
    # For a BoundedPicker: per model key, (floor, node id) sorted; per node, its floors by key.
    _floors: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    _floor_of: dict[str, dict[str, float]] = field(default_factory=dict)
    _floors_policy: BoundedPicker | None = None
    _checked: tuple[Picker, BoundedPicker | None] | None = None  # see _as_bounded
    # Per model key, (picks of it, decayed by DEMAND_DECAY per pick of any model; pick number).
    _demand: dict[str, tuple[float, int]] = field(default_factory=dict)
    _picks: int = 0
    _asked_lengths: set[str] = field(default_factory=set)  # models ever asked an explicit num_ctx
    # Per model key, reply length in tokens: (running average, the figure policies see). The
    # second moves only when the first drifts by TOKENS_STEP, since every host's floor uses it.
    _tokens: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Per model key, what Ollama counts of a generation's prompt against the edge's estimate:
    # (tokens its template and default system prompt add, real tokens per estimated one; 0 =
    # not learned), from the prompt_eval_count of replies. Ollama cuts a prompt over its
    # context length by its own count, so fitting a prompt weighs that count.
    _prompt_scale: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Per node, its load speed in bytes/s (model size / load time, over every model loaded
    # there): (running average, the figure candidates see, moved like _tokens). It estimates
    # the load time of a model never loaded on that host yet.
    _load_rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Per node, the weight bytes it reads per second decoding (tokens/s x model size, over every
    # model run there wholly in its memory; decoding is memory-bandwidth bound), moved like
    # _tokens. It estimates the decode speed of a model never run on that host yet.
    _decode_rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Per node, prompt tokens/s x model size over every model whose prompts it evaluated
    # (compute bound, so about inversely proportional to the model's size), moved like
    # _tokens. It estimates the prompt speed of a model never run on that host yet.
    _prompt_rates: dict[str, tuple[float, float]] = field(default_factory=dict)
    # Per (node id, model instance key), the sessions it served last, newest first, as many as
    # it has parallel slots: Ollama's runner keeps one cached prompt per slot and gives a new
    # conversation the slot of the oldest, so a session further back has lost its prefix.
    _slot_sessions: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    # (request digest, status, error text) -> (the first node it failed on, when), oldest
    # first: see _failed_alike_elsewhere
    _failures: OrderedDict[tuple[str, int, str], tuple[str, float]] = field(
        default_factory=OrderedDict
    )

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
        asked, options = _with_defaults(
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
        )
        if not request.runs_model:
            # A show or a pull loads nothing, counts as no demand for the model, and is never
            # the breaker's probe: its answer says nothing of whether the host runs models.
            # The policy's reasons ("cold-fit") would say a load; X-Hops-Route says none.
            ranked = tuple(replace(r, reason=NO_LOAD) for r in ranked)
            return PickOutcome(PickStatus.OK, name, lease_id=lease.lease_id, ranked=ranked)
        first.breaker.on_dispatch(lease.lease_id)
        lease.max_reply = request.max_reply
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
        self._count_demand(key)
        # Per length too, once the model was ever asked at an explicit one: what a reload
        # would cost the clients of the instance it replaces (see _replaced).
        if asked and key not in self._asked_lengths:
            self._asked_lengths.add(key)
        if asked is not None and key in self._asked_lengths:
            self._count_demand(_at_length(key, asked), counted=False)
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
                self._reload_memory(first, key, chosen) if chosen.reload else memory_needed(chosen)
            )
            wanted = lease.context or first.wanted_context(key, 0)
            context = wanted if chosen.reload else 0
            victims = self._victims(first, key, chosen)
            realiased = first.mark_loading(key, memory, victims, context, asked=lease.context)
            self.fleet.warm_changed(first.node_id, realiased)
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
        if not request.is_embedding and not chosen.over_context:  # a cut prompt counts less
            lease.prompt_estimate = request.context_prompt
        self._remember(request.session_key, first.node_id, asked_for, request.prompt_tokens)
        if request.session_key:
            self._into_slot(request.session_key, first.node_id, key, chosen.num_parallel)
        return PickOutcome(PickStatus.OK, name, lease_id=lease.lease_id, ranked=ranked)

    @staticmethod
    def _reload_memory(node: Node, key: str, chosen: Candidate) -> int:
        """What a reload takes beyond the instance it replaces: more at a longer context length,
        as far as the host's instances showed what a token takes (else nothing)."""
        listed = node.loaded_by_key.get(node.runner_key(key))
        if listed is None or not chosen.memory_needed:
            return 0
        held = listed.size_vram_bytes if chosen.on_gpu else listed.size_bytes
        return max(chosen.memory_needed - held, 0)

    def _victims(self, node: Node, key: str, chosen: Candidate) -> list[str]:
        """The models Ollama will evict to load ``key`` on ``node``: idle ones in its order, then,
        if those do not make room, busy ones, those still loading last (the load waits for them
        to finish, and a request sent to one of them meanwhile waits behind the load and then
        for a reload)."""
        if chosen.loaded or chosen.loading:
            return []
        order = [(r.key, r.memory_bytes) for r in chosen.idle_loaded]
        idle = {k for k, _ in order}
        on_gpu = node.vram_total > 0
        busy = sorted(
            (m.expires_at, loaded_key, m.size_vram_bytes if on_gpu else m.size_bytes)
            for loaded_key, m in node.loaded_by_key.items()
            if loaded_key not in node.evicting and loaded_key not in idle and loaded_key != key
        )
        order += [(busy_key, held) for _, busy_key, held in busy]
        order += [
            (loading_key, reserved)
            for loading_key, (_, reserved) in node.loading.items()
            if loading_key != key and loading_key not in node.evicting
        ]
        return [k for k, _ in order[: evictions_needed(chosen, (held for _, held in order))]]

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
        affinity = self._affinity(request.session_key, key)
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
        cached = self._cached_tokens(request.session_key, affinity, key)
        # What must fit the context length it runs at: the prompt, and a generation's reply
        # (the model's average so far, or the most the request lets it run to when fewer): a
        # reply that outgrows it makes Ollama drop half of the context, the prompt's start,
        # and go on without it.
        fit = request.context_prompt
        if fit and not request.is_embedding:
            fit = self._counted_prompt(key, fit)
            if key in self._tokens:
                reply = int(self._tokens[key][1])
                fit += min(reply, request.max_reply) if request.max_reply else reply

        def candidate_on(node: Node) -> Candidate:
            return self._candidate(
                node,
                key,
                affinity,
                context,
                request.runner_options,
                request.prompt_tokens,
                cached,
                request.session_key,
                fit,
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
        break them."""
        self._refresh_floors(policy)
        nodes = self.fleet.nodes
        affinity = self._affinity(request.session_key, key)
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
        for entry in self._floors.get(key, ()):
            if len(best) >= limit and entry > best[-1]:
                break  # this and every later host cost at least (floor, id) > the last kept
            node_id = entry[1]
            node = nodes.get(node_id)
            if node is not None and node_id != affinity:
                visit(node, entry[0])
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

    def _refresh_floors(self, policy: BoundedPicker) -> None:
        """Bring the floor index up to date with the hosts whose hello or snapshot changed:
        every floor of a host whose hello, installed models or memory changed, else only those
        of the models that became or stopped being warm there."""
        if self._floors_policy is not policy:  # a new policy: every floor is new
            self._floors.clear()
            self._floor_of.clear()
            self._floors_policy = policy
            self.fleet.reindexed.clear()
            self.fleet.rekeyed.clear()
            dirty: set[str] = set(self.fleet.nodes)
        else:
            dirty, self.fleet.reindexed = self.fleet.reindexed, set()
            rekeyed, self.fleet.rekeyed = self.fleet.rekeyed, {}
            for node_id, keys in rekeyed.items():
                node = self.fleet.nodes.get(node_id)
                if node is not None and node_id not in dirty:
                    for key in keys:
                        self._refresh_floor(node, key)
        for node_id in dirty:
            old = self._floor_of.pop(node_id, {})
            for key, floor in old.items():
                self._drop_floor(key, floor, node_id)
            node = self.fleet.nodes.get(node_id)
            if node is None:
                continue
            floors = {key: self._add_floor(node, key, policy) for key in node.installed_by_key}
            if floors:
                self._floor_of[node_id] = floors

    def _refresh_floor(self, node: Node, key: str) -> None:
        """What was learned about (node, key) changed: so may its floor, and the floors of the
        copies its instance there serves (see Node.runner_key)."""
        policy = self._floors_policy
        floors = self._floor_of.get(node.node_id)
        if policy is None or policy is not self.policy or floors is None:
            return  # not indexed (yet): the next full refresh computes it
        keys = [key]
        if node.aliases:
            keys += [alias for alias, listed in node.aliases.items() if listed == key]
        for each in keys:
            if each in floors:
                self._drop_floor(each, floors[each], node.node_id)
                floors[each] = self._add_floor(node, each, policy)

    def _add_floor(self, node: Node, key: str, policy: BoundedPicker) -> float:
        floor = policy.floor(self._candidate(node, key, ""))
        if floor != floor:  # NaN would break the order: such a host is always looked at
            floor = -math.inf
        bisect.insort(self._floors.setdefault(key, []), (floor, node.node_id))
        return floor

    def _drop_floor(self, key: str, floor: float, node_id: str) -> None:
        order = self._floors[key]
        del order[bisect.bisect_left(order, (floor, node_id))]
        if not order:
            del self._floors[key]

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

    def _candidate(
        self,
        node: Node,
        key: str,
        affinity_node: str,
        context: int | None = None,
        options: RunnerOptions = (),
        prompt_tokens: int = 0,
        cached_tokens: int = 0,
        session_key: str = "",
        context_prompt: int = 0,
    ) -> Candidate:
        """``prompt_tokens``: the request's prompt, of which ``cached_tokens`` are in the prompt
        cache of ``affinity_node`` (its session's last host) if the model is still loaded there.
        ``session_key``: the request's conversation, to tell whose cached prompt it would take
        over here. ``context_prompt``: the tokens that must fit the context length the request
        runs at here (its prompt, and a generation's expected reply). The hot path of every
        pick, once per eligible host: locals and plain dict lookups."""
        asked_model = node.installed_by_key.get(key)
        if context is not None and asked_model is not None:
            context, options = _with_defaults(asked_model, context, options)
        key = node.runner_key(key)  # a copy of a model loaded here: its instance
        node_id = node.hello.node_id
        per_model = self.fleet.leases.per_model
        installed = node.installed_by_key.get(key)
        size = installed.size_bytes if installed else 0
        on_gpu = node.vram_total > 0
        snapshot = node.snapshot
        total = node.vram_total if on_gpu else snapshot.system_memory_total_bytes
        free = node.vram_free if on_gpu else snapshot.system_memory_free_bytes
        evicting = node.evicting
        # Loaded with another context length than asked for (or, asked for none, than this
        # host's automatic one): Ollama reloads it for this request.
        reload = (
            context is not None
            and (context > 0 or node.automatic_context(key) > 0)  # none asked, none learned: match
            and _other_context(node, key, context)
        )
        # A load under way at another length: Ollama reloads it for this request once it is
        # done, so the request does not join it.
        after_load = (
            context is not None
            and key in node.loading
            and _loading_at_other_length(node, key, context)
        )
        reload = reload or after_load
        # Or with other runner options (num_gpu, num_thread, ..., and the adapters), as far as
        # HOPS routed its load: an instance loaded outside HOPS is taken to have its
        # modelfile's, as Ollama loads it for a request naming none. One still loading is
        # reloaded after its load, not joined.
        options_reload = (
            not reload
            and context is not None
            and (key in node.loaded_by_key or key in node.loading)
            and needs_reload(node.held_options(key), options)
        )
        reload = reload or options_reload
        # A cloud model runs on ollama.com: always ready, never loaded or evicted here.
        loaded = (
            key in node.loaded_by_key and key not in evicting and not reload
        ) or names.is_cloud(key)
        idle = idle_count = 0
        idle_models: list[tuple[float, str, int]] = []
        for loaded_key, model in node.loaded_by_key.items():
            held = model.size_vram_bytes if on_gpu else model.size_bytes
            if loaded_key in evicting or (reload and loaded_key == key):
                free += held  # a routed load is about to evict it, or this one replaces it
            elif not per_model.get((node_id, loaded_key)):
                idle += held
                idle_count += 1
                if not loaded:
                    idle_models.append((model.expires_at, loaded_key, held))
        # Loads routed here but not yet visible in a snapshot will take memory too, and Ollama
        # loads one model at a time: a new load waits for them.
        ahead = 0
        if node.loading:
            ahead = node.loading_bytes
            if key in node.loading:
                ahead -= node.loading[key][1]
            free -= ahead
        learned = self.learned.get((node_id, key))
        capacity = node.hello.capacity
        c = Candidate(
            node_id=node_id,
            ollama_url=node.hello.ollama_url,
            loaded=loaded,
            in_flight_model=per_model.get((node_id, key), 0),
            in_flight_node=self.fleet.leases.per_node.get(node_id, 0),
            num_parallel=1 if key in node.one_slot else capacity.num_parallel,
            weight=node.hello.weight,
            vram_total=node.vram_total,
            vram_free=node.vram_free,
            model_size=size,
            on_gpu=on_gpu,
            memory_total=total,
            memory_free=max(free, 0),
            loading=not loaded
            and key in node.loading
            and key not in evicting
            and not options_reload
            and not after_load,
            idle_loaded_bytes=idle,
            decode_tps=self._decode_tps(learned, node_id, size),
            load_seconds=self._load_seconds(learned, node_id, size),
            affinity=node_id == affinity_node,
            # Resident once the routed loads are done: a reload replaces an instance listed.
            loaded_count=len(node.loaded_by_key)
            - len(evicting)
            + len(node.loading)
            - len(node.reloading)
            - (key in node.loading and key not in node.reloading)
            - (reload and key in node.loaded_by_key),
            max_loaded=capacity.max_loaded_models or 3 * max(len(snapshot.gpus), 1),
            idle_loaded_count=idle_count,
            idle_loaded=self._residents(node, sorted(idle_models)) if idle_models else (),
            expected_tokens=self._tokens[key][1] if key in self._tokens else 0.0,
            loading_ahead=ahead,
            reload=reload,
            context_unsure=context == 0
            and not reload
            and key in self._asked_lengths
            and key in node.loaded_by_key
            and not node.automatic_context(key),
            replaced=(
                self._replaced(node, key, context, options_reload)
                if reload and context is not None
                else None
            ),
        )
        if not loaded and context is not None:  # what a load here would take
            c.memory_needed = node.memory_needed(
                key, node.wanted_context(key, context), c.num_parallel
            )
        if c.in_flight_model:
            c.prompt_ahead = self.fleet.leases.prompt_per_model.get((node_id, key), 0.0)
        if prompt_tokens:
            fresh = prompt_tokens - cached_tokens if c.affinity and loaded else prompt_tokens
            c.prompt_tokens = max(fresh, 0)
            c.prompt_tps = self._prompt_tps(learned, node_id, size)
        if session_key and loaded:
            c.cache_victim_tokens = self._cache_victim(node_id, key, session_key, c.num_parallel)
        if context_prompt and context is not None and not names.is_cloud(key):
            listed = node.loaded_by_key.get(key) if loaded else None
            # Warm: the length its instance was loaded with (Ollama runs the request there at
            # it); else the length a load for this request most likely takes here.
            runs_at = listed.context_length if listed is not None else 0
            runs_at = runs_at or node.context_guess(key, context)
            if runs_at and context_prompt > runs_at:
                c.over_context = context_prompt - runs_at
        if c.loading:
            c.loading_for = time.monotonic() - node.loading[key][0]
        elif loaded and key in node.warming:
            c.warming = True
            c.loading_for = time.monotonic() - node.warming[key]
        elif not loaded and not fits_evicting_idle(c):
            c.busy_victims = self._busy(node, key, c)
        return c

    def _replaced(self, node: Node, key: str, context: int, for_options: bool) -> Resident:
        """The instance a reload of ``key`` replaces, priced as an idle model evicted: its
        reload here, times the chance a request for it comes soon. Its clients are those asking
        other lengths than this request (asking ``context``, 0 for none), so the demand is the
        model's less this length's. Lengths are counted once the model was ever asked an
        explicit one; before that, the instance was loaded outside HOPS by clients it does not
        see, and it is taken to be in use as much as the model is. A reload ``for_options``
        (other runner options) counts the model's whole demand: options are not counted apart,
        and a request asking unusual ones is better sent where it replaces nobody's instance."""
        held = node.loaded_by_key.get(key)  # None: still loading, with other options
        installed = node.installed_by_key.get(key)
        size = installed.size_bytes if installed else held.size_bytes if held else 0
        other = self.demand(key)
        if not for_options:
            other -= self.demand(_at_length(key, context))
        if held is None:
            memory = node.loading[key][1] if key in node.loading else size
        else:
            memory = held.size_vram_bytes if node.vram_total > 0 else held.size_bytes
        return Resident(
            key,
            memory,
            size,
            self._load_seconds(self.learned.get((node.node_id, key)), node.node_id, size),
            max(other, 0.0),
        )

    def _busy(self, node: Node, key: str, c: Candidate) -> tuple[Busy, ...]:
        """The busy and loading models Ollama would evict for ``c``'s load, with what it takes
        them to finish."""
        idle = {r.key for r in c.idle_loaded}
        per_model = self.fleet.leases.per_model
        out = []
        for victim in self._victims(node, key, c):
            if victim in idle:
                continue
            installed = node.installed_by_key.get(victim)
            size = installed.size_bytes if installed is not None else 0
            learned = self.learned.get((node.node_id, victim))
            # Counted warm here too unless still loading (victims are never marked evicting).
            here = 1 if victim in node.loaded_by_key else 0
            routed = node.loading.get(victim)
            warming = node.warming.get(victim) if routed is None else None
            since = routed[0] if routed is not None else warming
            out.append(
                Busy(
                    victim,
                    per_model.get((node.node_id, victim), 0),
                    size,
                    self._decode_tps(learned, node.node_id, size),
                    self._tokens[victim][1] if victim in self._tokens else 0.0,
                    self._load_seconds(learned, node.node_id, size),
                    routed is not None,
                    warming is not None,
                    time.monotonic() - since if since is not None else 0.0,
                    self._weights_demand(node, victim),
                    self.fleet.warm.get(victim, 0) > here,
                )
            )
        return tuple(out)

    def _residents(
        self, node: Node, idle_models: list[tuple[float, str, int]]
    ) -> tuple[Resident, ...]:
        """The idle models of ``node`` in Ollama's eviction order (the soonest to expire, that
        is the least recently used under one keep-alive, first), with what evicting each costs."""
        out = []
        warm = self.fleet.warm
        for _, key, held in idle_models:
            installed = node.installed_by_key.get(key)
            size = installed.size_bytes if installed else held
            out.append(
                Resident(
                    key,
                    held,
                    size,
                    self._load_seconds(self.learned.get((node.node_id, key)), node.node_id, size),
                    self._weights_demand(node, key),
                    warm.get(key, 0) > 1,  # warm here (idle, not evicting) and elsewhere
                )
            )
        return tuple(out)

    def _count_demand(self, key: str, *, counted: bool = True) -> None:
        """One more pick of ``key``; ``counted`` False for a second key of the same pick (a
        model at one context length), which must not advance the window twice."""
        if counted:
            self._picks += 1
        self._demand[key] = (self._decayed(key) + 1.0, self._picks)

    def _decayed(self, key: str) -> float:
        seen = self._demand.get(key)
        if seen is None:
            return 0.0
        count, at = seen
        return count * DEMAND_DECAY ** (self._picks - at)

    def demand(self, key: str) -> float:
        """Picks of ``key`` among about the last DEMAND_WINDOW picks (exponentially weighted):
        how many of the next DEMAND_WINDOW it can expect. Divided by the weight the picks so far
        carry, so a young control plane's figure is not biased low."""
        if not self._picks:
            return 0.0
        return self._decayed(key) / (1.0 - DEMAND_DECAY**self._picks)

    def _weights_demand(self, node: Node, key: str) -> float:
        """The demand on ``node``'s instance of ``key``: that of every model there on its
        weights, whose requests all reload it once it is evicted. Each pick counts under one
        name (the model's own, or the one its runner was listed or loading under), so the sum
        counts none twice."""
        siblings = node.siblings.get(key) if node.siblings else None
        if siblings is None:
            return self.demand(key)
        return sum(self.demand(k) for k in siblings)

    def _affinity(self, session_key: str, key: str) -> str:
        """The node this session last ran on, if it is still up with the model loaded."""
        if not session_key:
            return ""
        seen = self.sessions.get(session_key)
        if seen is None or seen[1] != key:
            return ""
        node = self.fleet.nodes.get(seen[0])
        if node is None or node.session is None or node.runner_key(key) not in node.loaded_by_key:
            del self.sessions[session_key]  # the host left or unloaded the model: forget
            return ""
        return seen[0]

    def _cached_tokens(self, session_key: str, affinity_node: str, key: str) -> int:
        """How much of this session's prompt its host (``affinity_node``) has cached: the
        prompt of its last request there (its reply is cached too, but is not counted), unless
        as many other sessions have run there since as the instance has slots."""
        if not affinity_node:
            return 0
        runner = self.fleet.nodes[affinity_node].runner_key(key)
        if session_key not in self._slot_sessions.get((affinity_node, runner), ()):
            return 0
        return self.sessions[session_key][2]

    def _cache_victim(self, node_id: str, key: str, session_key: str, slots: int) -> int:
        """The prompt tokens of the conversation whose cached prompt this session would take
        over on ``node_id``'s instance of ``key`` (0 = none): when as many other conversations
        hold its slots as it has, the least recently served one, if that is where it last ran
        (its next turn there then evaluates it all again)."""
        served = self._slot_sessions.get((node_id, key))
        if not served or len(served) < max(slots, 1) or session_key in served:
            return 0
        victim = self.sessions.get(served[-1])
        return victim[2] if victim is not None and victim[0] == node_id else 0

    def _into_slot(self, session_key: str, node_id: str, key: str, slots: int) -> None:
        served = self._slot_sessions.setdefault((node_id, key), [])
        if session_key in served:
            served.remove(session_key)
        served.insert(0, session_key)
        del served[max(slots, 1) :]

    def _remember(self, session_key: str, node_id: str, key: str, prompt_tokens: int) -> None:
        if not session_key:
            return
        self.sessions[session_key] = (node_id, key, prompt_tokens)
        self.sessions.move_to_end(session_key)
        while len(self.sessions) > MAX_SESSIONS:
            self.sessions.popitem(last=False)

    def report(self, report: Report) -> bool:
        """Apply one attempt's outcome; False when the lease is unknown (closed or expired)."""
        lease = self.fleet.leases.get(report.lease_id)
        if lease is None:
            return False
        node = self.fleet.nodes.get(report.node_id or lease.node_id)
        runs = lease.runs_model
        outcome = self._settle_held(lease, report)
        if node is not None and (runs or outcome.is_host_failure):
            # A show or a pull answered does not vouch for the host (see _pick); failing, it
            # still says the host is unwell.
            detail = f"http {report.http_status}" if report.http_status else ""
            if outcome.is_host_failure and 200 <= report.http_status < 300:
                detail = f"failed mid-stream (http {report.http_status})"
            if report.error:
                detail = f"{detail}: {report.error}" if detail else report.error
            if _may_be_the_requests(report, outcome):
                lease.held = HeldFailure(node.node_id, report.http_status, report.error, detail)
            else:
                if self._failed_alike_elsewhere(report, outcome, node.node_id):
                    outcome = Outcome.REQUEST_ERROR
                node.breaker.record(outcome, lease.lease_id, detail)
        if node is not None and runs:
            first_try = lease.attempts == 1 and node.hello.node_id == lease.node_id
            self._learn(
                node.node_id,
                lease.model,
                report,
                clean_load=lease.clean_load and first_try,
                ready=lease.ready and first_try,
                fresh_prompt=not (lease.cached_prompt and first_try),
                prompt=(_prompt_spent(lease, report.stats), lease.prompt_measured)
                if first_try
                else (0.0, False),
                reply_limit=lease.max_reply,
            )
            stats = report.stats
            if first_try and lease.prompt_estimate and stats and stats.prompt_eval_count:
                self._learn_prompt_scale(
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

    def _settle_held(self, lease: Lease, report: Report) -> Outcome:
        """Feed the breaker the failure the lease's previous attempt left held, now that the
        next one is known, and return ``report``'s outcome as it counts. The same error from the
        next host (the same status and text) follows the request, not the hosts: a wrongly
        typed option, an image no runner can read, whatever a newer Ollama refuses with a 500;
        neither host is failed, or one client's bad requests would open every breaker in the
        fleet. Any other outcome leaves the held failure the host's own."""
        held, lease.held = lease.held, None
        if held is None:
            return report.outcome
        same = (
            report.outcome in (Outcome.UPSTREAM_ERROR, Outcome.REQUEST_ERROR)
            and report.http_status == held.http_status
            and report.error == held.error
        )
        node = self.fleet.nodes.get(held.node_id)
        if node is not None:
            outcome = Outcome.REQUEST_ERROR if same else Outcome.UPSTREAM_ERROR
            node.breaker.record(outcome, lease.lease_id, held.detail)
        if not same:
            return report.outcome
        log.info(
            "lease %s: %s and %s answered the same error, the request's own: %s",
            lease.lease_id,
            held.node_id,
            report.node_id or lease.node_id,
            report.error,
        )
        return Outcome.REQUEST_ERROR

    def _failed_alike_elsewhere(self, report: Report, outcome: Outcome, node_id: str) -> bool:
        """Whether this failure (one with an error text and the request's digest) is one the
        same request met on another host lately, with the same status and text: a prompt that
        crashes every runner it reaches, sent again by its client. Ollama cannot be asked twice
        once its reply began, so this is how such a request is told from a failing host: the
        first host it failed on pays one failure, the others none (the failures the same host
        meets again count, as they would for a host that fails everything)."""
        if not (outcome is Outcome.UPSTREAM_ERROR and report.error and report.request_digest):
            return False
        seen = (report.request_digest, report.http_status, report.error)
        now = time.monotonic()
        first = self._failures.get(seen)
        if first is not None and now - first[1] < FAILURE_MEMORY_S:
            if first[0] != node_id:
                log.info(
                    "%s failed a request as %s did: the request's own fault: %s",
                    node_id,
                    first[0],
                    report.error,
                )
                return True
            return False
        self._failures[seen] = (node_id, now)
        self._failures.move_to_end(seen)
        while len(self._failures) > MAX_FAILURES:
            self._failures.popitem(last=False)
        return False

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

    def _learn(
        self,
        node_id: str,
        model: str,
        report: Report,
        *,
        clean_load: bool,
        ready: bool,
        fresh_prompt: bool = True,
        prompt: tuple[float, bool] = (0.0, False),
        reply_limit: int = 0,
    ) -> None:
        """Fold one reply's figures in. Its load_duration (for a reply timed by the edge, its
        time to the first token) teaches load speed only when ``clean_load``: a request that
        waited for other loads or for a busy model to finish, or that came while its model was
        already loading, reports the wait (or the rest of a load). ``ready``: it was sent to a
        loaded instance with a free slot (see _split_reply). Its prompt speed teaches only when
        ``fresh_prompt``: Ollama counts every prompt token, but times only those not found in
        the prompt cache, which a request sent back to its session's host mostly finds; a reply
        that says how many it found there (newer Ollama) teaches it from the others, wherever
        it was sent.
        ``prompt``: its prompt's evaluation there as estimated when picked, and whether at a
        measured speed, which the edge's times hold (see _less_prompt). A reply that ran to
        ``reply_limit``, the most its request let it (0: no limit), was cut short: it says the
        model's usual reply is at least that long, which teaches only when the average so far
        is shorter."""
        stats = report.stats
        if stats is None:
            return
        evaluated = stats.prompt_evaluated
        if evaluated is not None:  # the reply says what its prompt_eval_duration timed
            stats = replace(stats, prompt_eval_count=evaluated)
            fresh_prompt = True
        learned = self.learned.setdefault((node_id, model), Learned())
        node = self.fleet.nodes.get(node_id)
        installed = node.installed_by_key.get(model) if node is not None else None
        size = installed.size_bytes if installed is not None else 0
        if stats.reply_ns:
            stats = self._split_reply(
                stats, learned, node_id, size, clean_load, ready, fresh_prompt, prompt
            )
        elif stats.first_token_ns:
            stats = self._split_first_token(
                stats, learned, node_id, size, ready and fresh_prompt, prompt
            )
        if stats.eval_count and stats.eval_duration_ns:
            tps = stats.eval_count / (stats.eval_duration_ns / 1e9)
            learned.decode_tps = _ewma(learned.decode_tps, tps)
            if node is not None and size and _wholly_in_memory(node, model):
                self._learn_rate(self._decode_rates, node, tps * size, DECODE_RATE_STEP)
        if (
            fresh_prompt
            and stats.prompt_eval_count >= MIN_PROMPT_SAMPLE
            and stats.prompt_eval_duration_ns
        ):
            tps = stats.prompt_eval_count / (stats.prompt_eval_duration_ns / 1e9)
            learned.prompt_tps = _ewma(learned.prompt_tps, tps)
            if node is not None and size and _wholly_in_memory(node, model):
                self._learn_rate(self._prompt_rates, node, tps * size, PROMPT_RATE_STEP)
        if clean_load and stats.load_wait_ns > WARM_HANDOVER_NS:
            seconds = stats.load_wait_ns / 1e9
            learned.load_seconds = _ewma(learned.load_seconds, seconds)
            if node is not None and size:
                self._learn_rate(self._load_rates, node, size / seconds, LOAD_RATE_STEP)
        learned.samples += 1
        if node is not None:
            self._refresh_floor(node, model)
        count = stats.eval_count
        cut = 0 < reply_limit <= count
        if count and not (cut and count <= self._tokens.get(model, (0.0, 0.0))[0]):
            self._learn_tokens(model, count)

    def _split_reply(
        self,
        stats: GenerationStats,
        learned: Learned,
        node_id: str,
        size: int,
        clean_load: bool,
        ready: bool,
        fresh_prompt: bool,
        prompt: tuple[float, bool],
    ) -> GenerationStats:
        """A reply the edge timed whole (not streamed, no durations) as the part it can stand
        for. Sent to an instance ready with a free slot, its time is prompt evaluation and
        decoding: when the prompt was evaluated whole (``fresh_prompt``), of a length its usage
        tells, and took most of the time beside the decoding at the speed known there, the
        prompt; else less the prompt (see _less_prompt), decoding. From a load routed to start
        at once, its time less the decoding and less the prompt is the load. Otherwise (a
        queue, a wait for other loads, a retry, no decode speed known yet, a prompt that took
        too much of it to tell) only its length."""
        tps = self._decode_tps(learned, node_id, size)
        decoding_ns = int(stats.eval_count / tps * 1e9) if tps > 0 else 0
        if ready:
            prompt_ns = stats.reply_ns - decoding_ns
            if (
                decoding_ns
                and fresh_prompt
                and stats.prompt_eval_count >= MIN_PROMPT_SAMPLE
                and prompt_ns >= stats.reply_ns * PROMPT_SHARE_TELLS
            ):
                return replace(stats, prompt_eval_duration_ns=prompt_ns)
            return replace(stats, eval_duration_ns=_less_prompt(stats.reply_ns, *prompt))
        if clean_load and decoding_ns:
            first_token_ns = max(stats.reply_ns - decoding_ns, 0)
            return replace(stats, first_token_ns=_less_prompt(first_token_ns, *prompt))
        return stats

    def _split_first_token(
        self,
        stats: GenerationStats,
        learned: Learned,
        node_id: str,
        size: int,
        fresh: bool,
        prompt: tuple[float, bool],
    ) -> GenerationStats:
        """A stream the edge timed (no durations): its time to the first token is its load, if
        any, and its prompt (see _less_prompt). ``fresh``: it was sent to an instance ready
        with a free slot that evaluated its prompt whole (none of it cached there); that time
        is then the prompt and one token decoded, and teaches the prompt speed when its usage
        tells the prompt's length."""
        if fresh and stats.prompt_eval_count >= MIN_PROMPT_SAMPLE:
            tps = self._decode_tps(learned, node_id, size)
            one_token_ns = int(1e9 / tps) if tps > 0 else 0
            if stats.first_token_ns > 2 * one_token_ns:
                prompt_ns = stats.first_token_ns - one_token_ns
                return replace(stats, first_token_ns=0, prompt_eval_duration_ns=prompt_ns)
        return replace(stats, first_token_ns=_less_prompt(stats.first_token_ns, *prompt))

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

    def model_figures(self, key: str) -> tuple[float, float, float]:
        """What replies taught of ``key``'s generations: its usual reply, what Ollama's count
        adds to a prompt's estimate, and its tokens per estimated one (each 0 until known)."""
        added, ratio = self._prompt_scale.get(key, (0.0, 0.0))
        return self._tokens.get(key, (0.0, 0.0))[0], added, ratio

    def _counted_prompt(self, key: str, estimate: int) -> int:
        """The tokens Ollama will most likely count of a generation's prompt the edge estimated
        at ``estimate``: what the model's template adds, and the estimate scaled by what its
        tokenizer makes of it, when that is more (an estimate that errs long stays as it is:
        it is kept long on purpose)."""
        extra, ratio = self._prompt_scale.get(key, (0.0, 0.0))
        return int(extra + estimate * max(ratio, 1.0))

    def _learn_prompt_scale(self, model: str, estimate: int, count: int) -> None:
        """One reply said Ollama counted ``count`` tokens of a prompt estimated at ``estimate``."""
        extra, ratio = self._prompt_scale.get(model, (0.0, 0.0))
        if estimate < PROMPT_SCALE_LONG:
            extra = _ewma(extra, max(count - estimate, 0))
        else:
            low, high = PROMPT_RATIO_RANGE
            ratio = _ewma(ratio, min(max((count - extra) / estimate, low), high))
        self._prompt_scale[model] = (extra, ratio)

    def _learn_tokens(self, model: str, count: int) -> None:
        self._tokens[model], moved = _stepped(self._tokens.get(model), count, TOKENS_STEP)
        if moved:  # every host's cost, and so floor, for this model changed
            for node in self.fleet.holders.get(model, {}).values():
                self._refresh_floor(node, model)

    def _learn_rate(
        self, rates: dict[str, tuple[float, float]], node: Node, rate: float, step: float
    ) -> None:
        """Fold one model's measured speed into ``node``'s speed (load or decode, in bytes/s)."""
        rates[node.node_id], moved = _stepped(rates.get(node.node_id), rate, step)
        if moved:  # the estimate, and so the floor, of every model not yet measured here
            for key in node.installed_by_key:
                self._refresh_floor(node, key)

    def _load_seconds(self, learned: Learned | None, node_id: str, size_bytes: int) -> float:
        """How long loading a model of ``size_bytes`` on this node takes: ``learned`` from its
        own loads there, else at the node's measured load speed; 0 while nothing was loaded."""
        if learned is not None and learned.load_seconds:
            return learned.load_seconds
        rate = self._load_rates.get(node_id)
        return size_bytes / rate[1] if rate is not None else 0.0

    def _prompt_tps(self, learned: Learned | None, node_id: str, size_bytes: int) -> float:
        """Prompt tokens/s for a model of ``size_bytes`` on this node: ``learned`` from its own
        replies there, else at the node's measured prompt rate; 0 while none was measured."""
        if learned is not None and learned.prompt_tps:
            return learned.prompt_tps
        rate = self._prompt_rates.get(node_id)
        return rate[1] / size_bytes if rate is not None and size_bytes else 0.0

    def _decode_tps(self, learned: Learned | None, node_id: str, size_bytes: int) -> float:
        """Tokens/s decoding a model of ``size_bytes`` on this node: ``learned`` from its own
        replies there, else at the node's measured decode bandwidth; 0 while nothing ran."""
        if learned is not None and learned.decode_tps:
            return learned.decode_tps
        rate = self._decode_rates.get(node_id)
        return rate[1] / size_bytes if rate is not None and size_bytes else 0.0

    def sweep(self, lease_ttl: float) -> int:
        """Release leases older than ``lease_ttl``; forget long-offline nodes."""
        expired = self._abandon(self.fleet.leases.expire(lease_ttl))
        stale = time.monotonic() - LOADING_TTL_S
        for node in self.fleet.nodes.values():
            self._forget_loads(node, lambda _, t: t < stale)
        self.fleet.forget_offline()
        # Demand long decayed is forgotten: the keys per context length are as many as the
        # lengths clients send, which they choose.
        self._demand = {
            key: seen
            for key, seen in self._demand.items()
            if seen[0] * DEMAND_DECAY ** (self._picks - seen[1]) >= DEMAND_FORGOTTEN
        }
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
            held, lease.held = lease.held, None
            if held is not None and held.node_id in self.fleet.nodes:  # nothing came to clear it
                self.fleet.nodes[held.node_id].breaker.record(
                    Outcome.UPSTREAM_ERROR, lease.lease_id, held.detail
                )
            node = self.fleet.nodes.get(lease.node_id)
            if node is not None:
                node.breaker.abandon(lease.lease_id)
        return len(leases)


def _may_be_the_requests(report: Report, outcome: Outcome) -> bool:
    """Whether a failure waits for the next attempt before it counts (see _settle_held): a 5xx
    with an error text (not Ollama's busy 503: a full queue is the host's), whose request the
    edge is trying on another host."""
    return (
        outcome is Outcome.UPSTREAM_ERROR
        and report.http_status >= 500
        and report.http_status != 503
        and bool(report.error)
        and bool(report.retry_node_id)
    )


def _with_defaults(
    model: InstalledModel | None, context: int | None, options: RunnerOptions
) -> tuple[int | None, RunnerOptions]:
    """The context length and runner options a request for ``model`` runs with: Ollama takes
    what the request leaves out from the model's modelfile PARAMETERs (``num_ctx``, ``num_gpu``,
    ...), so a model made FROM another with a PARAMETER num_ctx (or an ADAPTER) of its own
    reloads the other's runner. ``context`` as RouteRequest.context (None: the request runs no
    model). An option the request names at Ollama's default stands over the modelfile's."""
    if model is None or context is None:
        return context, options
    if not context and model.num_ctx:
        context = model.num_ctx
    return context, with_defaults(model.modelfile_options, options)


def _at_length(key: str, context: int) -> str:
    """The demand key of ``key`` asked at context length ``context`` (0: none named)."""
    return f"{key}\x00{context}"


def _other_context(node: Node, key: str, num_ctx: int) -> bool:
    """Whether ``key`` is loaded on ``node`` with another context length than a request asking
    for ``num_ctx`` (0: none) would run with, so Ollama would reload it; or is being reloaded
    (the instance listed is going away). A loaded length not reported (0) is taken to match,
    and so is any for a request asking none while the host's automatic length is unknown."""
    model = node.loaded_by_key.get(key)
    if model is None:
        return False
    wanted = node.wanted_context(key, num_ctx)
    if not wanted:
        return False
    if key in node.reloading:
        return True
    return bool(model.context_length) and model.context_length != wanted


def _loading_at_other_length(node: Node, key: str, num_ctx: int) -> bool:
    """Whether the load of ``key`` routed to ``node`` and under way runs at another context
    length than a request asking for ``num_ctx`` (0: none) would: the length of a reload, else
    the explicit one it was asked at, else the host's automatic one. Unknown lengths match."""
    wanted = node.wanted_context(key, num_ctx)
    at = node.reloading.get(key) or node.load_context.get(key) or node.automatic_context(key)
    return bool(wanted and at) and at != wanted


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


def _wholly_in_memory(node: Node, key: str) -> bool:
    """Whether ``key`` runs entirely in the node's GPU memory (or on a CPU-only node): a model
    split between GPU and CPU decodes at the CPU's pace and says little about the GPU's."""
    loaded = node.loaded_by_key.get(key)
    if node.vram_total <= 0:
        return True
    return loaded is not None and loaded.size_vram_bytes >= loaded.size_bytes > 0


def _prompt_spent(lease: Lease, stats: GenerationStats | None) -> float:
    """The seconds ``lease``'s prompt took to evaluate on its node, as well as known: from the
    tokens its reply says the host evaluated (those not cached; else the prompt's length less
    the part counted as cached at pick), at the speed the pick assumed; without a count, the
    pick's estimate from the edge's guess of the length."""
    if stats is None or not stats.prompt_eval_count:
        return lease.prompt_seconds
    evaluated = stats.prompt_evaluated
    if evaluated is None:
        evaluated = max(stats.prompt_eval_count - lease.prompt_credit, 0)
    return evaluated * lease.prompt_per_token


def _less_prompt(span_ns: int, prompt_seconds: float, measured: bool) -> int:
    """What an edge-timed span (a whole reply, or the time to a stream's first token) stands
    for once its prompt's evaluation (``prompt_seconds``, estimated at pick) is set apart: at
    a ``measured`` prompt speed the span less the prompt; at the prior speed, which is
    cautious (slow), the span as it is. 0 (learn nothing from it) when the prompt took more of
    the span than PROMPT_SHARE_MEASURED or PROMPT_SHARE_PRIOR allow."""
    prompt_ns = int(prompt_seconds * 1e9)
    share = PROMPT_SHARE_MEASURED if measured else PROMPT_SHARE_PRIOR
    if prompt_ns > span_ns * share:
        return 0
    return span_ns - prompt_ns if measured else span_ns


def _ewma(old: float, new: float) -> float:
    return new if old == 0 else old + EWMA_ALPHA * (new - old)


def _stepped(
    seen: tuple[float, float] | None, sample: float, step: float
) -> tuple[tuple[float, float], bool]:
    """Fold ``sample`` into (running average, the figure policies see); the figure follows the
    average only when it drifts by ``step`` (floors depend on it). Returns the pair and whether
    the figure moved."""
    average, used = seen or (0.0, 0.0)
    average = _ewma(average, sample)
    moved = not used or abs(average - used) > step * used
    return (average, average if moved else used), moved
