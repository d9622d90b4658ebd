"""The fleet's live state: one Node per agent-reported host, rebuilt entirely from agent streams.

Everything here runs on the control plane's event loop. ``version`` increases on every change that
edges can see (nodes coming and going, inventory, routability), and ``changed`` wakes whoever
waits for the next version (edge sessions, drain waiters).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum

from controlplane.breaker import Breaker
from controlplane.errors import NodeIdConflict
from controlplane.leases import LeaseTable
from hopscommon import names
from hopscommon.fleet import (
    Hello,
    InstalledModel,
    LoadedModel,
    Snapshot,
    embeds_only,
    runs_one_at_a_time,
)
from hopscommon.ollama_versions import automatic_context
from hopscommon.runner_options import RunnerOptions, needs_reload, with_defaults


class NodeState(Enum):
    ONLINE = 1
    UNHEALTHY = 2
    OFFLINE = 3


@dataclass(frozen=True, slots=True)
class IdConflict:
    instance_id: str
    hostname: str
    ollama_url: str
    seen_at: float


model_key = names.model_key


@dataclass(slots=True)
class Node:
    """One host. ``session`` is the agent stream that currently speaks for it (None: offline)."""

    hello: Hello
    breaker: Breaker
    snapshot: Snapshot = field(default_factory=Snapshot)
    session: object | None = None
    connected_since: float = 0.0
    last_seen: float = 0.0
    disconnected_at: float = 0.0
    cordoned: bool = False
    draining: bool = False
    conflicts: list[IdConflict] = field(default_factory=list)
    installed_by_key: dict[str, InstalledModel] = field(default_factory=dict)
    loaded_by_key: dict[str, LoadedModel] = field(default_factory=dict)
    # installed models Ollama runs with one parallel slot (embedding-only ones, a few
    # architectures), whatever the host's OLLAMA_NUM_PARALLEL
    one_slot: frozenset[str] = frozenset()
    # installed models that only embed: their requests decode no reply
    embedding_only: frozenset[str] = frozenset()
    # model key -> (when a load was routed here, the memory it will take)
    loading: dict[str, tuple[float, int]] = field(default_factory=dict)
    loading_bytes: int = 0  # size of the models in ``loading``, kept in step with it
    # loaded (or loading) model key -> the routed load that will evict it (no longer warm, or
    # soon warm, for routing)
    evicting: dict[str, str] = field(default_factory=dict)
    # model key -> the context length a routed reload of it asked for (a load in ``loading``
    # taking no new memory: Ollama replaces the instance loaded with another length)
    reloading: dict[str, int] = field(default_factory=dict)
    # models in ``loading`` a reply has shown loaded (an answer came), not yet in a snapshot
    answered: set[str] = field(default_factory=set)
    # model key -> when a load of it was routed here, for a routed load a snapshot lists but
    # no reply has shown done: Ollama lists a model from the start of its load (/api/ps), so
    # listed is not yet ready
    warming: dict[str, float] = field(default_factory=dict)
    # model key (see auto_key) -> the context length Ollama here gives it when a request names
    # none (OLLAMA_CONTEXT_LENGTH or its memory tier, capped at the trained length), learned
    # from replies: no API reports it
    auto_context: dict[str, int] = field(default_factory=dict)
    # The last automatic length learned here for a model it did not cap (below its trained
    # length): the host's own (OLLAMA_CONTEXT_LENGTH, or its VRAM tier), which every model
    # here gets, capped at its trained length. 0 while none is learned.
    auto_default: int = 0
    # model key -> the runner options (num_gpu, num_thread, ...) its instance here was loaded
    # with, where HOPS routed that load; no API reports them
    runner_options: dict[str, RunnerOptions] = field(default_factory=dict)
    # model key -> the runner options a routed load in ``loading`` asked: the instance's once a
    # snapshot shows the load, gone with it if it never happens (its requests all left)
    load_options: dict[str, RunnerOptions] = field(default_factory=dict)
    # model key -> the explicit context length a routed load (or reload) in ``loading`` runs
    # at: what a request naming none that joins it finds (and, unless it happens to be the
    # automatic length, reloads)
    load_context: dict[str, int] = field(default_factory=dict)
    # model key -> (the lengths listed, being loaded or asked when a request naming none
    # (re)loaded it, and asked since; until when to wait): the first snapshot listing another
    # one shows its automatic length
    context_probe: dict[str, tuple[tuple[int, ...], float]] = field(default_factory=dict)
    counted_warm: frozenset[str] = frozenset()  # its warm models as counted in Fleet.warm
    # installed model key -> the listed (or loading) model whose runner serves it (see _aliases)
    aliases: dict[str, str] = field(default_factory=dict)
    # installed model key -> every installed model on its weights (the same runner_id), for
    # models that share their weights with another
    siblings: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # model key (see auto_key) -> the memory an instance here takes per token of context per
    # parallel slot beyond its file (KV cache, and the graph, which grows with it), learned
    # from /api/ps: what a load at another context length will take
    kv_bytes: dict[str, float] = field(default_factory=dict)
    vram_total: int = 0
    vram_free: int = 0
    # The automatic length its Ollama version (from 0.15.5, with its VRAM) implies (0: none),
    # and whether the VRAM picked it ("vram") or the version's fixed default did ("version").
    version_context: tuple[int, str] = (0, "")

    @property
    def node_id(self) -> str:
        return self.hello.node_id

    @property
    def state(self) -> NodeState:
        if self.session is None:
            return NodeState.OFFLINE
        return NodeState.ONLINE if self.snapshot.ollama_healthy else NodeState.UNHEALTHY

    @property
    def routable(self) -> bool:
        """Connected, healthy and accepting new work (the breaker is checked per pick)."""
        return self.state is NodeState.ONLINE and not self.cordoned

    def has_model(self, key: str) -> bool:
        return key in self.installed_by_key

    def set_snapshot(self, snapshot: Snapshot) -> set[str]:
        """Take ``snapshot`` as what the host holds now. Returns the models whose marks the
        routed loads it lists settled (see forget_loads): no longer marked for eviction, or
        served by another instance now. Their floors may fall (one loading here again, say,
        whose old instance the snapshot shows gone), so the router refreshes them."""
        if snapshot.installed is not self.snapshot.installed:  # often the very same tuple
            self.installed_by_key = {model_key(m.name): m for m in snapshot.installed}
            self.one_slot = frozenset(
                key
                for key, m in self.installed_by_key.items()
                if runs_one_at_a_time(m.capabilities, m.details.family)
            )
            self.embedding_only = frozenset(
                key
                for key, m in self.installed_by_key.items()
                if embeds_only(m.capabilities, m.details.family)
            )
            groups: dict[str, list[str]] = {}
            for key, m in self.installed_by_key.items():
                if m.runner_id:
                    groups.setdefault(m.runner_id, []).append(key)
            self.siblings = {k: tuple(g) for g in groups.values() if len(g) > 1 for k in g}
        self.snapshot = snapshot
        self.loaded_by_key = {model_key(m.name): m for m in snapshot.loaded}
        self.aliases = _aliases(self.installed_by_key, self.loaded_by_key, self.loading)
        self.vram_total = snapshot.vram_total
        self.vram_free = snapshot.vram_free
        self.version_context = automatic_context(snapshot.ollama_version, self.vram_total)
        self._learn_kv_bytes()
        listed = {k: t for k, (t, _) in self.loading.items() if self._loaded_as_asked(k, t)}
        for key, since in listed.items():
            # Ollama lists a load under the name that asked for it: one routed for a model
            # whose runner was listed under another name (a reload for a model made FROM it)
            # shows under the asking model's, and its marks go with it.
            shown = self.runner_key(key)
            if key in self.load_options:
                self.runner_options[shown] = self.load_options.pop(key)
            if key not in self.answered:
                self.warming[shown] = since
        moved = self.forget_loads(lambda key, _: key in listed)
        if self.warming:  # an instance gone is no longer loading
            self.warming = {k: t for k, t in self.warming.items() if k in self.loaded_by_key}
        if self.runner_options:  # an instance gone (and not being loaded) takes its options
            self.runner_options = {
                k: v
                for k, v in self.runner_options.items()
                if k in self.loaded_by_key or k in self.loading
            }
        if self.context_probe:
            self.probe_context(time.monotonic())
        return moved

    def _learn_kv_bytes(self) -> None:
        """From each listed instance: its memory beyond its file, per token of its context
        length and per slot (Ollama gives each of NUM_PARALLEL slots the whole length)."""
        for key, loaded in self.loaded_by_key.items():
            installed = self.installed_by_key.get(key)
            if installed is None or loaded.context_length <= 0:
                continue
            beyond = loaded.size_bytes - installed.size_bytes
            if beyond > 0:
                slots = 1 if key in self.one_slot else max(self.hello.capacity.num_parallel, 1)
                self.kv_bytes[self.auto_key(key)] = beyond / (loaded.context_length * slots)

    def memory_needed(self, key: str, context: int, slots: int) -> int:
        """The memory an instance of ``key`` loaded here at ``context`` tokens (per slot) will
        take: its file and, per token, what its instances here were seen to take; 0 while none
        was seen or the length is not known (Candidate.memory_needed then estimates)."""
        installed = self.installed_by_key.get(key)
        per_token = self.kv_bytes.get(self.auto_key(key)) if self.kv_bytes else None
        if installed is None or per_token is None or context <= 0:
            return 0
        return installed.size_bytes + int(per_token * context * max(slots, 1))

    def probe_context(self, now: float) -> None:
        """Learn automatic lengths from the snapshot: a length other than those listed, being
        loaded or asked when a reply (re)loaded its model, or asked since. A listing that lags
        the reply still shows one of those, and so does one where Ollama did not reload (the
        automatic length was one of them): such probes end unlearned at their deadline."""
        for key, (before, until) in list(self.context_probe.items()):
            listed = self.loaded_by_key.get(key)
            length = listed.context_length if listed is not None else 0
            if length and length not in before:
                self.learn_auto_context(key, length)
                del self.context_probe[key]
            elif now > until:
                del self.context_probe[key]

    def _loaded_as_asked(self, key: str, _since: float) -> bool:
        """Whether a routed load of ``key`` shows in the snapshot: loaded, and for a reload,
        with the context length it asked for (the old instance is listed until it goes). Listed
        under the name of another model with the same files, it is that one's runner."""
        model = self.loaded_by_key.get(self.runner_key(key))
        if model is None:
            return False
        wanted = self.reloading.get(key)
        return wanted is None or not model.context_length or model.context_length == wanted

    def mark_loading(
        self,
        key: str,
        memory: int,
        victims: Iterable[str] = (),
        context: int = 0,
        *,
        asked: int = 0,
    ) -> set[str]:
        """A load of ``key`` was just routed here: it will take ``memory`` bytes before any
        snapshot says, and Ollama will evict ``victims`` (loaded, idle models) to make room.
        ``context``: it reloads ``key``, loaded here with another context length, at this one
        (in the old instance's memory). ``asked``: the explicit length it runs at (0: none).
        Returns the models another instance now serves (see _aliases)."""
        realiased: set[str] = set()
        if key not in self.loading:
            self.loading[key] = (time.monotonic(), memory)
            self.loading_bytes += memory
            if context:
                self.reloading[key] = context
            if asked:
                self.load_context[key] = asked
            # Copies and models on the same weights join this load (see _aliases).
            realiased = self._realias()
        for victim in victims:
            self.evicting[victim] = key
        return realiased

    def _realias(self) -> set[str]:
        """Recompute ``aliases``; returns the models whose serving instance changed."""
        before = self.aliases
        self.aliases = _aliases(self.installed_by_key, self.loaded_by_key, self.loading)
        if not before and not self.aliases:
            return set()
        keys = before.keys() | self.aliases.keys()
        return {k for k in keys if before.get(k) != self.aliases.get(k)}

    def auto_key(self, key: str) -> str:
        """Where ``auto_context`` keeps ``key``'s automatic length: under its runner_id where
        known, since models with the same weights get the same one (the same trained length),
        and Ollama relists their runner under whichever model last (re)loaded it."""
        model = self.installed_by_key.get(key)
        return model.runner_id if model is not None and model.runner_id else key

    def automatic_context(self, key: str) -> int:
        """The automatic length learned for ``key`` here, 0 while unknown (one learned before
        its runner_id was read is under its name)."""
        if not self.auto_context:
            return 0
        return self.auto_context.get(self.auto_key(key)) or self.auto_context.get(key, 0)

    def learn_auto_context(self, key: str, length: int) -> None:
        """A reply showed that a request naming no length runs ``key`` at ``length`` here."""
        self.auto_context[self.auto_key(key)] = length
        if 0 < length < self._trained_context(key):
            self.auto_default = length

    def _trained_context(self, key: str) -> int:
        installed = self.installed_by_key.get(key)
        return installed.details.context_length if installed is not None else 0

    def context_guess(self, key: str, num_ctx: int) -> int:
        """The context length a request asking ``num_ctx`` (0: none) most likely runs ``key``
        at here: wanted_context; for none asked and none learned for its weights, the host's
        default_context, capped at the model's trained length; 0: no telling. For weighing
        whether a prompt fits, never for telling a reload (a wrong guess there would route a
        warm request as cold)."""
        length = self.wanted_context(key, num_ctx)
        if length or num_ctx:
            return length
        guess, _ = self.default_context
        trained = self._trained_context(key)
        return min(guess, trained) if trained else guess

    @property
    def default_context(self) -> tuple[int, str]:
        """The host's automatic length and where it comes from: learned from a reply for
        another model ("learned"), else the OLLAMA_CONTEXT_LENGTH its agent declares
        ("declared"), else the one Ollama 0.15.5+ picks from this host's VRAM ("vram") or an
        older version's fixed default ("version"); (0, "") when none tells. A reply is
        Ollama's own word, so it outranks the declaration."""
        if self.auto_default:
            return self.auto_default, "learned"
        if self.hello.capacity.context_length:
            return self.hello.capacity.context_length, "declared"
        return self.version_context

    def wanted_context(self, key: str, num_ctx: int) -> int:
        """The context length a request asking for ``num_ctx`` runs ``key`` with here: capped
        at the model's trained length, when its host reports it; for 0 (none asked), the
        host's automatic length for the model, 0 while not learned."""
        if not num_ctx:
            return self.automatic_context(key)
        trained = self._trained_context(key)
        return min(num_ctx, trained) if trained else num_ctx

    def held_options(self, key: str) -> RunnerOptions:
        """The runner options (adapters included) the instance of ``key`` here was or is being
        loaded with: those a load HOPS routed asked, else its modelfile's (an instance loaded
        outside HOPS, as Ollama loads it for a request naming none)."""
        held = self.load_options.get(key) if self.load_options else None
        if held is None:
            held = self.runner_options.get(key)
        if held is None:
            installed = self.installed_by_key.get(key)
            held = installed.modelfile_options if installed is not None else ()
        return held

    def runner_key(self, key: str) -> str:
        """The model whose instance here serves a request for ``key``: a listed model with the
        same files (see _aliases), else ``key`` itself."""
        return self.aliases.get(key, key) if self.aliases else key

    def warm_keys(self) -> set[str]:
        """The models routing counts as loaded here: a copy of a loaded model too, and a model
        made FROM it, unless its modelfile asks what Ollama reloads the instance for."""
        warm = self.loaded_by_key.keys() - self.evicting.keys()
        if self.aliases:
            warm |= {
                alias
                for alias, listed in self.aliases.items()
                if listed in warm and self._runs_as_listed(alias, listed)
            }
        return warm

    def _runs_as_listed(self, alias: str, listed: str) -> bool:
        """Whether a request for ``alias`` naming no options runs on the instance listed as
        ``listed`` without a reload: its modelfile's options and adapters are those the
        instance has, and its length (its PARAMETER num_ctx, else the automatic one) the
        instance's, where both are known."""
        model = self.installed_by_key[alias]
        if needs_reload(self.held_options(listed), with_defaults(model.modelfile_options, ())):
            return False
        length = self.loaded_by_key[listed].context_length
        wanted = self.wanted_context(alias, model.num_ctx)
        return not (length and wanted) or length == wanted

    def forget_loads(self, done: Callable[[str, float], bool]) -> set[str]:
        """Drop the pending loads for which ``done(key, since)`` holds, and the evictions they
        were to cause once done or moot; returns the models no longer marked for eviction, and
        those another instance now serves (see _aliases)."""
        dropped = False
        for key, (since, size) in list(self.loading.items()):
            if done(key, since):
                del self.loading[key]
                self.loading_bytes -= size
                self.reloading.pop(key, None)
                self.load_context.pop(key, None)
                self.load_options.pop(key, None)
                self.answered.discard(key)
                dropped = True
        # A load that served other models no longer does.
        realiased = self._realias() if dropped and self.aliases else set()
        stale = [
            victim
            for victim, cause in self.evicting.items()
            if cause not in self.loading
            or (victim not in self.loaded_by_key and victim not in self.loading)
        ]
        for victim in stale:
            del self.evicting[victim]
        return realiased.union(stale)


def _aliases(
    installed: dict[str, InstalledModel],
    loaded: dict[str, LoadedModel],
    loading: Iterable[str] = (),
) -> dict[str, str]:
    """Installed models not listed that a listed model's runner serves. Ollama keys a runner
    by the model's weights file, serves any model with the same weights from it, and `/api/ps`
    lists it once, under the name that loaded it. A copy (``ollama cp``) has the very same
    manifest, so the same digest; a model made ``FROM`` another has another digest and the
    same runner_id (read by the agent from its modelfile). Requests for either go to that
    runner: warm, or a reload where they run with another context length, runner options or
    adapters (its modelfile's PARAMETERs and ADAPTERs too, see Candidates.build). A load
    routed here (``loading``) and not listed yet serves them the same way once done: they join
    it, or reload it after, rather than load the same weights a second time."""
    serving: dict[tuple[str, str], str] = {}
    for key, listed in loaded.items():
        if listed.digest:
            serving[("digest", listed.digest)] = key
        runner = installed[key].runner_id if key in installed else ""
        if runner:
            serving[("runner", runner)] = key
    for key in loading:
        m = installed.get(key)
        if m is not None and key not in loaded:  # a listed model's runner comes first
            if m.digest:
                serving.setdefault(("digest", m.digest), key)
            if m.runner_id:
                serving.setdefault(("runner", m.runner_id), key)
    if not serving:
        return {}
    aliases = {}
    for key, m in installed.items():
        if key in loaded:
            continue
        by = serving.get(("runner", m.runner_id)) if m.runner_id else None
        by = by or serving.get(("digest", m.digest))
        if by is not None and by != key:
            aliases[key] = by
    return aliases


class Fleet:
    """All nodes plus the lease table; owned by the event loop."""

    def __init__(self, *, breaker_factory: Callable[[], Breaker], forget_after: float) -> None:
        self.nodes: dict[str, Node] = {}
        self.holders: dict[str, dict[str, Node]] = {}  # model key -> nodes with it on disk
        # For the router's floor index: nodes whose hello, installed models or memory changed,
        # and per node the models that became or stopped being warm (nothing else changed).
        self.reindexed: set[str] = set()
        self.rekeyed: dict[str, set[str]] = {}
        # model key -> connected nodes with it loaded and not marked for eviction
        self.warm: dict[str, int] = {}
        self.leases = LeaseTable()
        self.version = 1
        self._changed = asyncio.Event()
        self._breaker_factory = breaker_factory
        self.forget_after = forget_after

    def touch(self) -> None:
        """Record a visible change and wake waiters."""
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_changed(
        self,
        seen_version: int,
        timeout: float | None = None,  # noqa: ASYNC109 - False on timeout is the contract
    ) -> bool:
        """Wait until ``version`` passes ``seen_version``; False on timeout."""
        if self.version != seen_version:
            return True
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def attach(self, hello: Hello, session: object) -> tuple[Node, bool]:
        """Register an agent stream for ``hello.node_id``; returns (node, replaced_previous).

        A stream from the same host (same hostname and Ollama URL, e.g. a restarted agent)
        replaces a previous one. A different host claiming an id that is connected is refused
        with NodeIdConflict and recorded on the node, so the admin sees it.
        """
        now = time.time()
        node = self.nodes.get(hello.node_id)
        if node is None:
            node = Node(hello=hello, breaker=self._breaker_factory())
            self.nodes[hello.node_id] = node
            replaced = False
        else:
            same_host = (node.hello.hostname, node.hello.ollama_url) == (
                hello.hostname,
                hello.ollama_url,
            )
            if not same_host:
                node.conflicts.append(
                    IdConflict(hello.instance_id, hello.hostname, hello.ollama_url, now)
                )
                del node.conflicts[:-10]
                if node.session is not None:
                    self.touch()
                    raise NodeIdConflict(
                        f"node id {hello.node_id!r} is held by {node.hello.hostname} "
                        f"({node.hello.ollama_url}); this agent is {hello.hostname} "
                        f"({hello.ollama_url})"
                    )
            replaced = node.session is not None
            node.hello = hello
        node.session = session
        node.connected_since = now
        node.last_seen = now
        self._index(node, Snapshot())
        self.touch()
        return node, replaced

    def detach(self, node_id: str, session: object) -> bool:
        """The stream ``session`` closed; the node leaves routing at once if it was current."""
        node = self.nodes.get(node_id)
        if node is None or node.session is not session:
            return False
        node.session = None
        node.disconnected_at = time.time()
        self.count_warm(node)
        self.touch()
        return True

    def update(self, node_id: str, session: object, snapshot: Snapshot) -> None:
        node = self.nodes.get(node_id)
        if node is None or node.session is not session:
            return
        if snapshot.sequence and snapshot.sequence < node.snapshot.sequence:
            return  # stale
        node.last_seen = time.time()
        self._index(node, snapshot)
        self.touch()

    def _index(self, node: Node, snapshot: Snapshot) -> None:
        old = node.snapshot
        if (
            snapshot.installed is old.installed
            and snapshot.vram_total == old.vram_total
            and snapshot.system_memory_total_bytes == old.system_memory_total_bytes
        ):  # the usual snapshot: only what is loaded (and free memory) moved
            warm, aliases = node.warm_keys(), node.aliases
            changed = node.set_snapshot(snapshot)
            changed |= warm ^ node.warm_keys()
            if aliases or node.aliases:  # a copy now served by another instance, or its own
                changed |= {
                    key
                    for key in aliases.keys() | node.aliases.keys()
                    if aliases.get(key) != node.aliases.get(key)
                }
            self.warm_changed(node.node_id, changed)
            self.count_warm(node)
            return
        self.reindexed.add(node.node_id)
        before = set(node.installed_by_key)
        node.set_snapshot(snapshot)
        after = set(node.installed_by_key)
        for key in before - after:
            holders = self.holders.get(key)
            if holders is not None:
                holders.pop(node.node_id, None)
                if not holders:
                    del self.holders[key]
        for key in after - before:
            self.holders.setdefault(key, {})[node.node_id] = node
        self.count_warm(node)

    def warm_changed(self, node_id: str, keys: set[str]) -> None:
        if keys:  # the router refreshes the floors of their copies too (FloorIndex.refresh)
            self.rekeyed.setdefault(node_id, set()).update(keys)

    def count_warm(self, node: Node) -> None:
        """Keep ``warm`` in step with what ``node`` has warm while it is connected: call after
        its snapshot, its connection or the models marked for eviction on it changed."""
        now = frozenset(node.warm_keys()) if node.session is not None else frozenset()
        if now == node.counted_warm:
            return
        for key in node.counted_warm - now:
            left = self.warm[key] - 1
            if left:
                self.warm[key] = left
            else:
                del self.warm[key]
        for key in now - node.counted_warm:
            self.warm[key] = self.warm.get(key, 0) + 1
        node.counted_warm = now

    def seen(self, node_id: str, session: object) -> None:
        node = self.nodes.get(node_id)
        if node is not None and node.session is session:
            node.last_seen = time.time()

    def forget_offline(self) -> list[str]:
        """Drop nodes offline for longer than ``forget_after`` seconds."""
        cutoff = time.time() - self.forget_after
        gone = [
            n.node_id
            for n in self.nodes.values()
            if n.session is None and n.disconnected_at < cutoff
        ]
        for node_id in gone:
            self._index(self.nodes.pop(node_id), Snapshot())
        if gone:
            self.touch()
        return gone
