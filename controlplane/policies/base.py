"""The policy interface: a policy ranks the hosts that passed the router's filters.

A policy is a small class with one pure, synchronous method. It sees only plain values (never the
fleet, never protobuf), may keep its own tiny state (a counter, a seeded RNG), and returns the
``limit`` best candidates it is given (all of them when there are fewer), best first, each with a
short reason for X-Hops-Route.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from controlplane.model import RouteRequest

KV_HEADROOM = 1.15  # a model takes about this much more memory than its file (KV cache, graph)
# The tokens a model's reply is taken to run to until one that ended by itself (or one cut at a
# longer limit) was seen.
DEFAULT_REPLY_TOKENS = 200
DEFAULT_GPU_TPS = 60.0  # decode tokens/s of a model on a host where nothing was measured yet
DEFAULT_CPU_TPS = 10.0
# Until a host's prompt speed is measured: its decode speed times this. Conservative (a GPU
# evaluates a prompt some 20-60 times faster than it decodes, a CPU some 3-6 times), so a long
# prompt is not sent to a host that cannot take it before anything was measured there.
PROMPT_OVER_DECODE_GPU = 10.0
PROMPT_OVER_DECODE_CPU = 2.0


@dataclass(frozen=True, slots=True)
class Resident:
    """A model loaded on a candidate's host with nothing in flight: what evicting it would cost."""

    key: str
    memory_bytes: int  # what it holds now (VRAM, or system memory on a CPU-only host)
    size_bytes: int  # on disk, for estimating a reload
    reload_seconds: float  # on this host: learned, else at its load speed; 0 = not yet known
    demand: float  # expected requests for it among the next DEMAND_WINDOW picks, fleet-wide
    elsewhere: bool = False  # loaded on another connected host too


@dataclass(frozen=True, slots=True)
class Busy:
    """A model with requests in flight (or a load under way) on a candidate's host that Ollama
    must wait for before it can evict it: what a load that needs its memory waits for."""

    key: str
    in_flight: int  # open leases for it on this host
    size_bytes: int
    decode_tps: float  # on this host: learned, else at its decode bandwidth; 0 = not yet known
    expected_tokens: float  # its average reply length; 0 = unknown
    load_seconds: float = 0.0  # on this host: learned, else at its load speed; 0 = not yet known
    loading: bool = False  # routed here to load and not yet listed
    # Listed, but the load routed here has shown no reply yet (Ollama lists a model as it
    # starts loading it): what is left of that load is still ahead of its requests.
    warming: bool = False
    loading_for: float = 0.0  # seconds since that load was routed here
    demand: float = 0.0  # expected requests for it among the next DEMAND_WINDOW picks
    elsewhere: bool = False  # loaded on another connected host too
    embeds_only: bool = False  # it only embeds: its requests decode no reply
    # The reply limits its requests in flight here asked, as (limit, how many): the others
    # run to its usual reply.
    limits: tuple[tuple[int, int], ...] = ()


@dataclass(slots=True)
class Candidate:
    """One eligible host for one request, with what a policy may weigh. Built for every eligible
    host on every pick, so not frozen (a frozen dataclass pays a setattr call per field); policies
    treat it as read-only."""

    node_id: str
    ollama_url: str
    loaded: bool
    in_flight_model: int
    in_flight_node: int
    num_parallel: int
    weight: float = 1.0
    vram_total: int = 0
    vram_free: int = 0
    model_size: int = 0
    on_gpu: bool = True
    memory_total: int = 0  # GPU memory, or system memory on a CPU-only host
    memory_free: int = 0
    loading: bool = False  # a load of this model was just routed here
    loading_for: float = 0.0  # seconds since that load was routed here
    # Loaded, from a load routed here that no reply has shown done yet (Ollama lists a model
    # while it loads): ``loading_for`` counts since it was routed.
    warming: bool = False
    idle_loaded_bytes: int = 0  # memory held by loaded models with nothing in flight
    decode_tps: float = 0.0  # learned from Reports; 0 = not yet known
    load_seconds: float = 0.0  # learned here, else at the host's load speed; 0 = not yet known
    affinity: bool = False  # the request's session last ran here
    loaded_count: int = 0  # models resident now
    max_loaded: int = 3  # OLLAMA_MAX_LOADED_MODELS in effect (3 per GPU by default)
    idle_loaded_count: int = 0  # resident models with nothing in flight
    idle_loaded: tuple[Resident, ...] = ()  # those models, in the order Ollama evicts them
    expected_tokens: float = 0.0  # this model's average reply length, from Reports; 0 = unknown
    embeds_only: bool = False  # the model only embeds: its requests decode no reply
    # The most tokens this request's reply may run to (num_predict, max_tokens); 0 = no limit.
    # A limit under the usual reply shortens the request's own decoding, not the queue's.
    reply_limit: int = 0
    loading_ahead: int = 0  # memory of other loads routed here and not done: they go first
    # When evicting idle models cannot make room: the busy (or loading) models Ollama would
    # evict, each after its requests finish, in its order.
    busy_victims: tuple[Busy, ...] = ()
    # Loaded here with another context length than the request asks for: Ollama reloads it
    # once its ``in_flight_model`` requests are done (not ``loaded``; its memory counts as free).
    reload: bool = False
    # For a reload: the instance it replaces, as a resident whose demand is the model's from
    # requests asking other lengths (they pay a reload in turn when they come back).
    replaced: Resident | None = None
    # Loaded, for a request asking no context length, on a host whose automatic length is not
    # learned yet, while clients ask this model at explicit ones: the instance may be theirs,
    # which Ollama reloads unless its length happens to be the automatic one.
    context_unsure: bool = False
    # The memory a load here will take at the context length the request runs with (see
    # Node.memory_needed); 0 = not estimated: the file and KV_HEADROOM of it.
    memory_needed: int = 0
    # The request's prompt tokens this host would evaluate: all of them, less what its prompt
    # cache holds of the conversation on its session's last host (0 = no size given).
    prompt_tokens: int = 0
    prompt_tps: float = 0.0  # prompt tokens/s measured here (or at its rate); 0 = not yet known
    # The prompt_time of the requests in flight for this model here, summed: a request that
    # queues waits for their prompts too.
    prompt_ahead: float = 0.0
    # Of the requests in flight for this model here, those asking a reply limit: (limit, how
    # many ask it). Each takes at most its limit; the others, the usual reply.
    limits_ahead: tuple[tuple[int, int], ...] = ()
    # Loaded here with every prompt-cache slot holding another conversation: the prompt tokens
    # of the one this request would take over (its next turn here evaluates them again).
    cache_victim_tokens: int = 0
    # The request's tokens beyond the context length it runs at here (the instance's, loaded;
    # else the length asked, or this host's automatic one, learned or guessed: see
    # Node.context_guess), its prompt's and a generation's expected reply's: Ollama cuts the
    # prompt to fit, and a reply that outgrows the rest drops half of it, with no error.
    # 0: it all fits, or that length is not known.
    over_context: int = 0


def decode_speed(decode_tps: float, on_gpu: bool) -> float:
    """Tokens/s decoding: as measured, else a default for the kind of host."""
    return decode_tps or (DEFAULT_GPU_TPS if on_gpu else DEFAULT_CPU_TPS)


def prompt_time(c: Candidate) -> float:
    """Seconds evaluating the request's prompt on ``c``'s host (see seconds_per_prompt_token)."""
    return c.prompt_tokens * seconds_per_prompt_token(c) if c.prompt_tokens else 0.0


def seconds_per_prompt_token(c: Candidate) -> float:
    """What one prompt token takes to evaluate on ``c``'s host: at the speed measured there,
    else at a conservative multiple of its decode speed."""
    factor = PROMPT_OVER_DECODE_GPU if c.on_gpu else PROMPT_OVER_DECODE_CPU
    return 1.0 / (c.prompt_tps or decode_speed(c.decode_tps, c.on_gpu) * factor)


def memory_needed(c: Candidate) -> int:
    """The memory loading ``c``'s model will take on its host."""
    return c.memory_needed or int(c.model_size * KV_HEADROOM)


def fits_evicting_idle(c: Candidate) -> bool:
    """Whether ``c``'s model fits on its host as things are or once idle models are evicted (in
    memory and under the host's loaded-model limit), so no load waits for busy ones."""
    return memory_needed(c) <= c.memory_free + c.idle_loaded_bytes and (
        c.loaded_count < c.max_loaded or c.idle_loaded_count > 0
    )


def predicted_victims(c: Candidate) -> list[Resident]:
    """The idle models Ollama would evict to load ``c``'s model on its host, in its order: while
    the model does not fit (or the host is at its loaded-model limit), the next idle one goes.
    Empty when the model is loaded, already loading, or fits as things are."""
    if c.loaded or c.loading:
        return []
    return list(c.idle_loaded[: evictions_needed(c, (r.memory_bytes for r in c.idle_loaded))])


def evictions_needed(c: Candidate, held: Iterable[int]) -> int:
    """How many of the models holding ``held`` bytes, evicted in that order, Ollama unloads
    before ``c``'s model fits (in memory and under the host's loaded-model limit)."""
    short = memory_needed(c) - c.memory_free
    count = c.loaded_count
    taken = 0
    for memory in held:
        if short <= 0 and count < c.max_loaded:
            break
        taken += 1
        short -= memory
        count -= 1
    return taken


@dataclass(frozen=True, slots=True)
class Ranked:
    candidate: Candidate
    score: float
    reason: str


class Picker(Protocol):
    """Ranks candidates for one request."""

    name: ClassVar[str]

    def pick(
        self, request: RouteRequest, candidates: Sequence[Candidate], limit: int
    ) -> list[Ranked]: ...


@runtime_checkable
class BoundedPicker(Picker, Protocol):
    """A policy that ranks by a cost alone (lowest first, ties by node id) and can bound that
    cost from below for a host and model. The router then keeps each model's hosts in floor
    order and builds candidates only for the hosts that could still rank in the top ``limit``:
    the same answer as ranking every host, at a fraction of the work on a big fleet.

    ``floor(c)`` must not exceed ``cost(x)`` for any candidate ``x`` of the same host and model
    built while the host's hello, snapshot, learned figures and routed load of that model (if
    any) are those of ``c``: that is, it must hold whatever the in-flight counts, the other
    models' routed loads and evictions, and the free and idle memory figures derived from them.
    The router refreshes a floor when the model becomes or stops being warm there, and when a
    load of it is routed there; not when such a load ends unseen, so a floor must not fall
    then.
    Affinity is excluded (the session's host is always evaluated).
    """

    def cost(self, c: Candidate) -> float: ...

    def floor(self, c: Candidate) -> float: ...

    def floor_fixed(self, c: Candidate) -> float:
        """The part of ``floor(c)`` a reply limit does not shrink (all of it but the decoding):
        a request whose decoding is at least a share s of the floor's (see floor_share) costs
        at least ``floor_fixed(c) + s * (floor(c) - floor_fixed(c))``."""
        ...

    def floor_share(self, reply_limit: int, usual_replies: Iterable[float]) -> float:
        """The share of a floor that still bounds the cost of a request whose reply may run
        to ``reply_limit`` tokens (0: no limit; 1.0 then), when its candidates' usual reply
        lengths are among ``usual_replies`` (0: not known): floors are taken for requests
        with no limit."""
        ...
