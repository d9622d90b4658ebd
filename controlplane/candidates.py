"""The candidate a host makes for one request: what the policy weighs of it there (warm or not,
its queue, the memory a load would take and what it would evict, what is learned of its speeds,
its prompt cache, whether the prompt fits the context length it would run at). Built once per
eligible host per pick, so the hot path of routing: locals and plain dict lookups. Runs on the
control plane's event loop, called by the Router and its floor index.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from controlplane.demand import Demand
from controlplane.fleet import Fleet, Node
from controlplane.learning import Learning
from controlplane.policies import Candidate
from controlplane.policies.base import Busy, Resident, evictions_needed, fits_evicting_idle
from controlplane.sessions import Sessions
from hopscommon import names
from hopscommon.fleet import InstalledModel
from hopscommon.runner_options import RunnerOptions, needs_reload, with_defaults


@dataclass(slots=True)
class Candidates:
    fleet: Fleet
    learning: Learning
    demand: Demand
    sessions: Sessions

    @staticmethod
    def reload_memory(node: Node, key: str, chosen: Candidate) -> int:
        """What a reload takes beyond the instance it replaces: more at a longer context length,
        as far as the host's instances showed what a token takes (else nothing)."""
        listed = node.loaded_by_key.get(node.runner_key(key))
        if listed is None or not chosen.memory_needed:
            return 0
        held = listed.size_vram_bytes if chosen.on_gpu else listed.size_bytes
        return max(chosen.memory_needed - held, 0)

    def victims(self, node: Node, key: str, chosen: Candidate) -> list[str]:
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

    def plain(self, node: Node, key: str) -> Candidate:
        """The candidate ``node`` makes for a request for ``key`` that asks nothing more of
        it: no session, no prompt, no context length; what floors are taken from."""
        return self.build(node, key, "")

    def build(
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
        reply_limit: int = 0,
    ) -> Candidate:
        """``prompt_tokens``: the request's prompt, of which ``cached_tokens`` are in the prompt
        cache of ``affinity_node`` (its session's last host) if the model is still loaded there.
        ``session_key``: the request's conversation, to tell whose cached prompt it would take
        over here. ``context_prompt``: the tokens that must fit the context length the request
        runs at here (its prompt, and a generation's expected reply). ``reply_limit``: the
        most tokens its reply may run to (0: no limit). The hot path of every pick, once per
        eligible host: locals and plain dict lookups."""
        asked_model = node.installed_by_key.get(key)
        if context is not None and asked_model is not None:
            context, options = with_modelfile_defaults(asked_model, context, options)
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
        learned = self.learning.learned.get((node_id, key))
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
            decode_tps=self.learning.decode_tps(learned, node_id, size),
            load_seconds=self.learning.load_seconds(learned, node_id, size),
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
            expected_tokens=self.learning.usual_reply(key),
            loading_ahead=ahead,
            reload=reload,
            context_unsure=context == 0
            and not reload
            and key in self.demand.asked_lengths
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
        if key in node.embedding_only:
            c.embeds_only = True
        if reply_limit:
            c.reply_limit = reply_limit
        if c.in_flight_model:
            leases = self.fleet.leases
            c.prompt_ahead = leases.prompt_per_model.get((node_id, key), 0.0)
            c.limits_ahead = leases.limits_on(node_id, key)
        if prompt_tokens:
            fresh = prompt_tokens - cached_tokens if c.affinity and loaded else prompt_tokens
            c.prompt_tokens = max(fresh, 0)
            c.prompt_tps = self.learning.prompt_tps(learned, node_id, size)
        if session_key and loaded:
            c.cache_victim_tokens = self.sessions.cache_victim(
                node_id, key, session_key, c.num_parallel
            )
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
        other = self.demand.of(key) if for_options else self.demand.at_other_lengths(key, context)
        if held is None:
            memory = node.loading[key][1] if key in node.loading else size
        else:
            memory = held.size_vram_bytes if node.vram_total > 0 else held.size_bytes
        return Resident(
            key,
            memory,
            size,
            self.learning.load_seconds(
                self.learning.learned.get((node.node_id, key)), node.node_id, size
            ),
            max(other, 0.0),
        )

    def _busy(self, node: Node, key: str, c: Candidate) -> tuple[Busy, ...]:
        """The busy and loading models Ollama would evict for ``c``'s load, with what it takes
        them to finish."""
        idle = {r.key for r in c.idle_loaded}
        leases = self.fleet.leases
        per_model = leases.per_model
        out = []
        for victim in self.victims(node, key, c):
            if victim in idle:
                continue
            installed = node.installed_by_key.get(victim)
            size = installed.size_bytes if installed is not None else 0
            learned = self.learning.learned.get((node.node_id, victim))
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
                    self.learning.decode_tps(learned, node.node_id, size),
                    self.learning.usual_reply(victim),
                    self.learning.load_seconds(learned, node.node_id, size),
                    routed is not None,
                    warming is not None,
                    time.monotonic() - since if since is not None else 0.0,
                    self._weights_demand(node, victim),
                    self.fleet.warm.get(victim, 0) > here,
                    victim in node.embedding_only,
                    leases.limits_on(node.node_id, victim),
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
                    self.learning.load_seconds(
                        self.learning.learned.get((node.node_id, key)), node.node_id, size
                    ),
                    self._weights_demand(node, key),
                    warm.get(key, 0) > 1,  # warm here (idle, not evicting) and elsewhere
                )
            )
        return tuple(out)

    def _weights_demand(self, node: Node, key: str) -> float:
        """The demand on ``node``'s instance of ``key``: that of every model there on its
        weights, whose requests all reload it once it is evicted. Each pick counts under one
        name (the model's own, or the one its runner was listed or loading under), so the sum
        counts none twice."""
        siblings = node.siblings.get(key) if node.siblings else None
        if siblings is None:
            return self.demand.of(key)
        return sum(self.demand.of(k) for k in siblings)


def with_modelfile_defaults(
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
