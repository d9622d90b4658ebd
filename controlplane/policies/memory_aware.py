"""``memory_aware`` (the default): send each request where it will start soonest, counting model
loads, queues and evictions, as Ollama's scheduler would experience them.

Each candidate gets an expected cost in seconds before its reply can start streaming:
  warm, free slot                0 (the model is loaded and a parallel slot is free)
  warm, queued                   requests ahead / parallel slots x measured time per request
                                 (the usual reply, or a shorter reply limit the request asked)
  (listed while still loading)   + what is left of the load routed here (no reply yet)
  already loading here           what is left of the load, by the time since it was routed
                                 here, but at least half of it (it may have waited behind others)
  loaded with another context    as cold (Ollama reloads a model whose num_ctx differs), after
  length than asked for (or      the requests on the loaded instance, whose memory it reuses,
  than the host's automatic one, plus the reload that instance's clients (those asking other
  learned, when none is asked),  lengths; for options, all the model's clients) then pay,
  or other runner options        weighted by how often they ask, as for an evicted idle model
  (num_gpu, num_thread, ...)
  (cold, any of the below)       + the loads routed here before it (Ollama loads one at a time)
                                 + COLD_LOAD_PENALTY_S: a load is made only where it saves more
                                 than that (its memory is memory a later load may need, and a
                                 second copy of a model warm on a slower host rarely pays)
  cold, fits in free memory      measured (or estimated) load time (and under the host's
                                 OLLAMA_MAX_LOADED_MODELS, past which Ollama evicts too)
  cold, evicts idle models       load time + a penalty (someone's warm model goes away), plus
                                 for each model Ollama would evict, its reload time weighted by
                                 the chance it is asked for again soon (less if another host has
                                 it loaded): a big model in demand keeps its place
  cold, evicts busy models       load time + a prohibitive penalty (only if nothing else exists)
                                 + the time those models take to finish what they are doing
                                 (Ollama waits for them) + the reloads of every model evicted,
                                 busy or idle, weighted as above: among such hosts, the one
                                 free soonest whose models are least needed
plus the time the request itself takes at that host's measured decode speed (for a model not
run there yet, the host's measured decode bandwidth over the model's size) and the model's
average reply length, both learned from Reports (or the most the request lets its reply run to,
num_predict or max_tokens, when that is shorter: a short answer asked for is worth little speed,
so it stays warm on a slower host rather than load; a model that only embeds decodes no reply,
its request one pass over the weights), so a slow CPU host or a split GPU/CPU load costs what it
really costs; and, once the host's prompt speed is measured, the time evaluating the
request's prompt there (the edge's estimate of its size), where the session's previous host
evaluates only what its prompt cache does not hold: a long conversation stays where it is
cached unless the wait there costs more than evaluating it all again elsewhere. That host also
gets a small bonus (a warm prompt cache), small enough that a hot session does not pile onto a
busy host. Among equal costs the smaller host wins,
keeping big GPUs free for big models. Costs divide by the node's weight.

A host whose context length is shorter than the request's prompt and expected reply (the
instance's length when the model is loaded there, else the one a load for it takes: the length
asked, or the host's automatic one, learned or guessed: see Node.context_guess) would cut the
prompt, or drop its start mid-reply, without an error: it ranks after every host that reads it
whole (+ OVER_CONTEXT_PENALTY_S). When none can, the host that cuts the least is chosen
("over-context" in X-Hops-Route).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import ClassVar

from controlplane.model import EMBED_TOKENS, RouteRequest
from controlplane.policies.base import (
    DEFAULT_REPLY_TOKENS,
    KV_HEADROOM,
    Candidate,
    Ranked,
    Resident,
    decode_speed,
    fits_evicting_idle,
    memory_needed,
    predicted_victims,
    prompt_time,
    seconds_per_prompt_token,
)

EXPECTED_TOKENS = DEFAULT_REPLY_TOKENS
DEFAULT_LOAD_BYTES_PER_S = 2.0e9
LOAD_OVERHEAD_S = 0.5
EVICT_IDLE_PENALTY_S = 2.0
COLD_LOAD_PENALTY_S = 2.0  # chosen on the routing bench: see bench/README.md
EVICT_BUSY_PENALTY_S = 1000.0
# A host whose context length would cut the request's prompt ranks after every host that reads
# it whole, even one that must wait for busy models: a late answer beats a wrong one. Among
# hosts that all cut it, the one that cuts the least (each token cut weighs this much).
OVER_CONTEXT_PENALTY_S = 10_000.0
OVER_CONTEXT_S_PER_TOKEN = 1.0
ELSEWHERE_SHARE = 0.25  # of a victim's reload cost, when another host has it loaded too
AFFINITY_BONUS_S = 0.75
# The chance that a conversation whose cached prompt a request would take over comes back for
# another turn (then evaluating it all again): even odds, knowing no more.
CACHE_TAKEOVER_ODDS = 0.5
UNSURE_RELOAD_ODDS = 0.5  # of a load, for a warm instance whose context length may not match
SIZE_TIEBREAK_S_PER_BYTE = 1e-12  # 24 GiB -> 0.026 s: only decides between near-equal hosts


def load_estimate(c: Candidate) -> float:
    return _load_time(c.load_seconds, c.model_size)


def _load_time(learned_seconds: float, size_bytes: int) -> float:
    """The load time learned from Reports, else one estimated from the model's size."""
    if learned_seconds > 0:
        return learned_seconds
    return LOAD_OVERHEAD_S + size_bytes / DEFAULT_LOAD_BYTES_PER_S


def load_left(load: float, loading_for: float) -> float:
    """What is left of a load under way for ``loading_for`` seconds since it was routed: at
    least half of it, as the load may have waited behind others (Ollama loads one at a time) and
    a snapshot may not show it done yet; so only the first half counts down."""
    return max(load - loading_for, load / 2)


def listed_load_left(load: float, loading_for: float) -> float:
    """What is left of a load routed ``loading_for`` seconds ago whose model a snapshot lists
    (so it has started) but no reply has shown done."""
    return max(load - loading_for, 0.0)


def loads_ahead(c: Candidate) -> float:
    """Seconds until the loads already routed to this host are done, at its load speed."""
    if not c.loading_ahead:
        return 0.0
    rate = c.model_size / c.load_seconds if c.load_seconds > 0 else DEFAULT_LOAD_BYTES_PER_S
    return c.loading_ahead / KV_HEADROOM / max(rate, 1.0)


def eviction_cost(c: Candidate) -> float:
    """What the models Ollama would evict for this load are expected to cost later: each one's
    reload time on this host, times the chance it is asked for among the next picks (less when
    another host has it loaded too and can take those requests)."""
    return sum(victim_cost(r) for r in predicted_victims(c))


def victim_cost(r: Resident) -> float:
    """One evicted model's expected cost: its reload time on this host times the chance it is
    asked for soon (less when another host has it loaded too)."""
    return _reload_cost(r.reload_seconds, r.size_bytes, r.demand, r.elsewhere)


def _reload_cost(learned_seconds: float, size_bytes: int, demand: float, elsewhere: bool) -> float:
    return (
        _load_time(learned_seconds, size_bytes)
        * (1.0 - math.exp(-demand))
        * (ELSEWHERE_SHARE if elsewhere else 1.0)
    )


def busy_eviction_cost(c: Candidate) -> float:
    """What a load that must evict busy models costs later: every idle model goes first, then
    the busy ones, each priced as an evicted idle model (its reload here, times the chance it is
    asked for soon). Among hosts that all make a load wait, the one whose models are least
    needed is evicted; a big model in demand keeps its place as it does against idle victims."""
    idle = sum(victim_cost(r) for r in c.idle_loaded)
    return idle + sum(
        _reload_cost(b.load_seconds, b.size_bytes, b.demand, b.elsewhere) for b in c.busy_victims
    )


def service_time(c: Candidate) -> float:
    """Seconds a request for ``c``'s model usually takes decoding there."""
    return _service_time(_usual_tokens(c.embeds_only, c.expected_tokens), c.decode_tps, c.on_gpu)


def ahead_time(c: Candidate) -> float:
    """Seconds each request in flight for ``c``'s model there takes decoding, on average."""
    usual = _usual_tokens(c.embeds_only, c.expected_tokens)
    tokens = _tokens_in_flight(usual, c.limits_ahead, c.in_flight_model)
    return _service_time(tokens, c.decode_tps, c.on_gpu)


def _tokens_in_flight(usual: float, limits: Iterable[tuple[int, int]], in_flight: int) -> float:
    """The tokens each of ``in_flight`` requests decodes, on average: the usual reply, or the
    most it lets its reply run to where that is shorter (``limits``: (limit, how many))."""
    limited = count = 0.0
    for limit, n in limits:
        limited += min(usual, limit) * n
        count += n
    total = max(in_flight, count, 1)
    return (limited + (total - count) * usual) / total


def own_time(c: Candidate) -> float:
    """Seconds this request is expected to take decoding there: the usual reply, or the most
    it lets its reply run to when that is shorter."""
    tokens = _usual_tokens(c.embeds_only, c.expected_tokens)
    if c.reply_limit:
        tokens = min(tokens, c.reply_limit)
    return _service_time(tokens, c.decode_tps, c.on_gpu)


def _usual_tokens(embeds_only: bool, expected_tokens: float) -> float:
    """The tokens a request for a model usually decodes: its usual reply, learned; for a model
    that only embeds, EMBED_TOKENS (see controlplane.model)."""
    if embeds_only:
        return EMBED_TOKENS
    return expected_tokens or EXPECTED_TOKENS


def limited_share(reply_limit: int, usual_replies: Iterable[float]) -> float:
    """At least own_time / service_time for any candidate of a request limited to
    ``reply_limit`` tokens whose expected_tokens is among ``usual_replies``."""
    if not reply_limit:
        return 1.0
    longest = max((u or EXPECTED_TOKENS for u in usual_replies), default=EXPECTED_TOKENS)
    if reply_limit >= longest:
        return 1.0  # own_time is service_time, computed alike
    return reply_limit / longest * (1.0 - 1e-9)  # a little under, whatever the rounding


def _service_time(expected_tokens: float, decode_tps: float, on_gpu: bool) -> float:
    return (expected_tokens or EXPECTED_TOKENS) / decode_speed(decode_tps, on_gpu)


def busy_wait(c: Candidate) -> float:
    """Seconds until the busy models a load here has to evict are done: each finishes its
    requests (and its own load, if still loading) side by side, so the slowest sets the wait."""
    slots = max(c.num_parallel, 1)
    wait = 0.0
    for b in c.busy_victims:
        tokens = _usual_tokens(b.embeds_only, b.expected_tokens)
        if b.limits:
            tokens = _tokens_in_flight(tokens, b.limits, b.in_flight)
        per_request = _service_time(tokens, b.decode_tps, c.on_gpu)
        own_load = 0.0
        if b.loading or b.warming:
            load = _load_time(b.load_seconds, b.size_bytes)
            left = load_left if b.loading else listed_load_left
            own_load = left(load, b.loading_for)
        wait = max(wait, own_load + b.in_flight * per_request / slots)
    return wait


def queue_wait(c: Candidate, per_request: float) -> float:
    """Time waiting for a parallel slot behind the requests already in flight here, each
    taking ``per_request`` and its share of the prompts they carry."""
    slots = max(c.num_parallel, 1)
    ahead = max(c.in_flight_model - slots + 1, 0)
    if not ahead:
        return 0.0
    return ahead * (per_request + c.prompt_ahead / c.in_flight_model) / slots


def _cost(c: Candidate) -> tuple[float, str, float]:
    """Seconds until this request would be done here, its tier, and the queue wait (the reason
    text is only built for the hosts that are returned)."""
    per_request = service_time(c)
    own = own_time(c) if c.reply_limit else per_request  # this request
    ahead = ahead_time(c) if c.limits_ahead else per_request  # each in flight here
    if c.loaded:
        wait = queue_wait(c, ahead)
        tier = "queued" if wait else "warm"
        if c.warming:  # Ollama lists a model as it starts to load it
            left = listed_load_left(load_estimate(c), c.loading_for)
            if left:
                wait += left
                tier = "loading"
    else:
        load = load_estimate(c)
        if c.loading:
            wait = load_left(load, c.loading_for) + queue_wait(c, ahead)
            tier = "loading"
            return _total(wait, own, c), tier, wait
        load += loads_ahead(c)  # Ollama loads one model at a time
        load += COLD_LOAD_PENALTY_S
        if c.reload:  # Ollama reloads once the requests on the loaded instance are done,
            load += c.in_flight_model * ahead / max(c.num_parallel, 1)
            if c.replaced is not None:  # and that instance's clients then reload it back
                load += victim_cost(c.replaced)
        if memory_needed(c) <= c.memory_free and c.loaded_count < c.max_loaded:
            wait, tier = load, "cold-fit"
        elif fits_evicting_idle(c):
            wait = load + EVICT_IDLE_PENALTY_S + eviction_cost(c)
            tier = "cold-evict-idle"
        else:
            wait = load + busy_wait(c) + EVICT_BUSY_PENALTY_S + busy_eviction_cost(c)
            tier = "cold-evict-busy"
    cost = _total(wait, own, c)
    if c.context_unsure and c.loaded:  # still warm, but below an instance known to match
        cost += load_estimate(c) * UNSURE_RELOAD_ODDS / max(c.weight, 1e-6)
    if c.affinity and c.loaded:
        cost -= AFFINITY_BONUS_S / max(c.weight, 1e-6)
    if c.cache_victim_tokens:  # another conversation's cached prompt, lost if it comes back
        taken = c.cache_victim_tokens * seconds_per_prompt_token(c) * CACHE_TAKEOVER_ODDS
        cost += taken / max(c.weight, 1e-6)
    if c.over_context:
        cut = OVER_CONTEXT_PENALTY_S + c.over_context * OVER_CONTEXT_S_PER_TOKEN
        cost += cut / max(c.weight, 1e-6)
    return cost, tier, wait


def _total(wait: float, decoding: float, c: Candidate) -> float:
    # One expression for cost and floor, so rounding keeps floor <= cost (wait >= 0; a floor's
    # candidate has no prompt to evaluate). Every term is >= 0, so a share of the floor bounds
    # a cost whose decoding is at least that share of the floor's (see limited_share).
    spent = wait + decoding + prompt_time(c) + c.memory_total * SIZE_TIEBREAK_S_PER_BYTE
    return spent / max(c.weight, 1e-6)


def _floor_wait(c: Candidate) -> float:
    """The least wait of the host's tier (see MemoryAwarePicker.floor)."""
    if c.loaded:
        return 0.0
    if c.loading:
        return load_estimate(c) / 2
    return load_estimate(c) + COLD_LOAD_PENALTY_S


def _reason(c: Candidate, tier: str, wait: float) -> str:
    if c.reload:  # e.g. "reload-fit": loaded with another context length
        tier = tier.replace("cold", "reload", 1)
    reason = f"queued {wait * 1000:.0f}ms" if tier == "queued" else tier
    if c.over_context:  # no host reads the prompt whole: say so
        reason += " over-context"
    return f"affinity {reason}" if c.affinity and c.loaded else reason


def expected_cost(c: Candidate) -> tuple[float, str]:
    """Seconds until this request would be done here, and why (the tier it falls in)."""
    cost, tier, wait = _cost(c)
    return cost, _reason(c, tier, wait)


class MemoryAwarePicker:
    name: ClassVar[str] = "memory_aware"

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def cost(self, c: Candidate) -> float:
        return _cost(c)[0]

    def floor(self, c: Candidate) -> float:
        """The least the host can cost: no queue for a loaded model; half a load for one being
        loaded there (the loading tier); else a whole load and COLD_LOAD_PENALTY_S (the
        cheapest cold tier); and the usual reply's decoding. Only what snapshots, routed loads
        and Reports change enters: loaded, loading or neither, model size, learned speeds,
        memory size, weight."""
        return _total(_floor_wait(c), service_time(c), c)

    def floor_fixed(self, c: Candidate) -> float:
        return _total(_floor_wait(c), 0.0, c)

    def floor_share(self, reply_limit: int, usual_replies: Iterable[float]) -> float:
        return limited_share(reply_limit, usual_replies)

    def pick(
        self, request: RouteRequest, candidates: Sequence[Candidate], limit: int
    ) -> list[Ranked]:
        # (cost, node id) orders totally: node ids are unique, so the candidate is never compared.
        costed = []
        for c in candidates:
            cost, tier, wait = _cost(c)
            costed.append((cost, c.node_id, tier, wait, c))
        best = heapq.nsmallest(limit, costed, key=lambda item: (item[0], item[1]))
        return [Ranked(c, -cost, _reason(c, tier, wait)) for cost, _, tier, wait, c in best]
