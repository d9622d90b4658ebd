import itertools
import math
import random
import time
from dataclasses import replace
from unittest import mock

import pytest

from controlplane import router as router_module
from controlplane.demand import DEMAND_WINDOW
from controlplane.fleet import Fleet, Node
from controlplane.model import (
    EMBED_TOKENS,
    ApiKind,
    GenerationStats,
    Outcome,
    Report,
    RouteRequest,
)
from controlplane.policies import Candidate
from controlplane.policies.base import (
    KV_HEADROOM,
    Busy,
    Resident,
    predicted_victims,
    prompt_time,
)
from controlplane.policies.memory_aware import (
    MemoryAwarePicker,
    busy_wait,
    eviction_cost,
    expected_cost,
    queue_wait,
    service_time,
)
from controlplane.router import Router
from hopscommon.fleet import Gpu, InstalledModel, LoadedModel, Snapshot
from tests.controlplane import builders

GIB = 1024**3
REQ = RouteRequest(model="m:latest")
BASE = Candidate(
    node_id="n",
    ollama_url="http://n",
    loaded=False,
    in_flight_model=0,
    in_flight_node=0,
    num_parallel=1,
    model_size=5 * GIB,
    memory_total=24 * GIB,
    memory_free=20 * GIB,
    decode_tps=50.0,
    load_seconds=6.0,
)


def _order(*candidates: Candidate) -> list[str]:
    return [r.candidate.node_id for r in MemoryAwarePicker().pick(REQ, candidates, 10)]


def test_tiers_in_order() -> None:
    warm = replace(BASE, node_id="warm", loaded=True)
    queued = replace(BASE, node_id="queued", loaded=True, in_flight_model=1)
    fit = replace(BASE, node_id="fit")
    evict_idle = replace(
        BASE, node_id="evict-idle", memory_free=2 * GIB, idle_loaded_bytes=10 * GIB
    )
    evict_busy = replace(BASE, node_id="evict-busy", memory_free=2 * GIB)
    assert _order(evict_busy, evict_idle, fit, queued, warm) == [
        "warm",
        "queued",
        "fit",
        "evict-idle",
        "evict-busy",
    ]
    assert expected_cost(warm)[1] == "warm" and expected_cost(fit)[1] == "cold-fit"
    assert expected_cost(queued)[1].startswith("queued ")


def test_a_long_queue_on_a_warm_host_loses_to_a_cold_load_elsewhere() -> None:
    swamped = replace(BASE, node_id="swamped", loaded=True, in_flight_model=12, decode_tps=20.0)
    cold = replace(BASE, node_id="cold", load_seconds=5.0)
    assert _order(swamped, cold) == ["cold", "swamped"]
    short = replace(swamped, in_flight_model=1, decode_tps=50.0)  # one 4 s request ahead
    assert _order(short, cold) == ["swamped", "cold"]


def test_a_second_copy_is_loaded_only_when_it_saves_more_than_a_load_costs() -> None:
    # A free slot on a slower warm host: 200 tokens at 40/s = 5 s. A faster card would take a
    # 2 s load and 2 s of decoding, 1 s sooner; not worth a load (memory, a later eviction).
    warm = replace(BASE, node_id="warm", loaded=True, decode_tps=40.0)
    faster = replace(BASE, node_id="faster", decode_tps=100.0, load_seconds=2.0)
    assert _order(warm, faster) == ["warm", "faster"]
    # Twice as slow (10 s): the load saves 6 s, so it is made. A preference, not a pin.
    slower = replace(warm, decode_tps=20.0)
    assert _order(slower, faster) == ["faster", "warm"]


def test_smallest_host_that_fits_keeps_big_gpus_free() -> None:
    big = replace(BASE, node_id="big", memory_total=24 * GIB, memory_free=24 * GIB)
    small = replace(BASE, node_id="small", memory_total=8 * GIB, memory_free=8 * GIB)
    assert _order(big, small) == ["small", "big"]


def test_slow_cpu_host_costs_what_it_costs() -> None:
    gpu = replace(BASE, node_id="gpu", decode_tps=80.0)
    cpu = replace(BASE, node_id="cpu", on_gpu=False, decode_tps=0.0, load_seconds=0.0)
    assert _order(cpu, gpu) == ["gpu", "cpu"]


def test_a_short_reply_asked_for_stays_warm_on_a_slow_host_rather_than_load() -> None:
    # 200 usual tokens: 20 s on the warm CPU host, against a 3 s load, its 2 s cost and 2.5 s
    # on the GPU. Ten tokens asked (num_predict, max_tokens): 1 s there, against 5.1 s.
    usual = replace(BASE, expected_tokens=200)
    cpu = replace(usual, node_id="cpu", loaded=True, on_gpu=False, decode_tps=10.0)
    gpu = replace(usual, node_id="gpu", decode_tps=80.0, load_seconds=3.0)
    assert _order(cpu, gpu) == ["gpu", "cpu"]
    assert _order(replace(cpu, reply_limit=10), replace(gpu, reply_limit=10)) == ["cpu", "gpu"]
    # A limit longer than the usual reply changes nothing.
    long = [replace(c, reply_limit=4096) for c in (cpu, gpu)]
    assert [MemoryAwarePicker().cost(c) for c in long] == [
        MemoryAwarePicker().cost(c) for c in (cpu, gpu)
    ]


def test_a_short_reply_waits_for_the_replies_in_flight_ahead_as_long_as_they_may_run() -> None:
    queued = replace(BASE, loaded=True, in_flight_model=3, num_parallel=2, expected_tokens=200)
    short = replace(queued, reply_limit=20)
    # Two requests ahead of it over two slots, each the usual 200 tokens at 50/s: 4 s of
    # waiting either way; only its own decoding shrinks, from 4 s to 0.4 s.
    assert queue_wait(short, service_time(short)) == pytest.approx(4.0)
    picker = MemoryAwarePicker()
    assert picker.cost(queued) - picker.cost(short) == pytest.approx(4.0 - 0.4)
    # Those in flight asked for 20 tokens each too: they take 0.4 s, not 4 s, so the wait
    # behind them is 0.4 s. A limit longer than the usual reply counts the usual one.
    behind_short = replace(short, limits_ahead=((20, 3),))
    assert picker.cost(short) - picker.cost(behind_short) == pytest.approx(4.0 - 0.4)
    behind_long = replace(short, limits_ahead=((4096, 2),))
    assert picker.cost(behind_long) == pytest.approx(picker.cost(short))
    # Two of three asked 20 tokens: on average (0.4 + 0.4 + 4) / 3 s each.
    mixed = replace(short, limits_ahead=((20, 2),))
    assert picker.cost(short) - picker.cost(mixed) == pytest.approx(4.0 - 4.8 / 3)


def test_a_model_that_only_embeds_decodes_no_reply_so_stays_warm_on_the_cpu_host() -> None:
    # Unmeasured, 200 tokens at a CPU's 10 tokens/s would be 20 s; an embedding decodes none:
    # one pass over the weights, as one decoding step (0.1 s), and its inputs' evaluation (10
    # tokens at the CPU prior: 0.5 s), against a load on the GPU.
    cpu = replace(BASE, node_id="cpu", loaded=True, on_gpu=False, decode_tps=0.0, prompt_tokens=10)
    gpu = replace(BASE, node_id="gpu", decode_tps=0.0, load_seconds=1.0, prompt_tokens=10)
    assert _order(cpu, gpu) == ["gpu", "cpu"]
    embed = [replace(c, embeds_only=True) for c in (cpu, gpu)]
    assert _order(*embed) == ["cpu", "gpu"]
    assert service_time(embed[0]) == pytest.approx(0.1)
    assert expected_cost(embed[0])[0] == pytest.approx(0.1 + 0.5, abs=0.03)  # + size tiebreak
    # An embed queued behind two others (one slot) waits for their passes and inputs.
    queued = replace(embed[0], in_flight_model=2, prompt_ahead=3.0)
    assert queue_wait(queued, service_time(queued)) == pytest.approx(2 * (0.1 + 1.5))


def test_a_node_knows_which_installed_models_only_embed() -> None:
    fleet = builders.fleet()
    node = builders.add_node(fleet, "n", models=["e:latest", "m:latest"])
    kinds = {"e:latest": ("embedding",), "m:latest": ("completion", "embedding")}
    installed = tuple(replace(m, capabilities=kinds[m.name]) for m in node.snapshot.installed)
    fleet.update("n", node.session, replace(node.snapshot, sequence=2, installed=installed))
    assert node.embedding_only == {"e:latest"}
    router = builders.router(fleet, "memory_aware")
    assert router.candidates.build(node, "e:latest", "").embeds_only
    assert not router.candidates.build(node, "m:latest", "").embeds_only


def test_a_candidate_knows_the_reply_limits_of_the_requests_in_flight_there() -> None:
    """An embedding, of a generation model too, counts its one decoding step as its limit."""
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["m:latest"], loaded=["m"])
    router = builders.router(fleet, "memory_aware")
    picks = [router.pick(RouteRequest(model="m", edge_id="e", max_reply=r)) for r in (10, 10, 0)]
    router.pick(RouteRequest(model="m", edge_id="e", api=ApiKind.SHOW, max_reply=10))
    router.pick(RouteRequest(model="m", edge_id="e", api=ApiKind.OPENAI_EMBEDDINGS))
    queued = router.candidates.build(fleet.nodes["n"], "m:latest", "")
    assert (queued.in_flight_model, queued.limits_ahead) == (4, ((10, 2), (EMBED_TOKENS, 1)))
    for outcome in picks[:2]:
        router.report(Report(outcome.lease_id, "n", Outcome.OK, http_status=200))
    after = router.candidates.build(fleet.nodes["n"], "m:latest", "")
    assert (after.in_flight_model, after.limits_ahead) == (2, ((EMBED_TOKENS, 1),))


def test_a_request_asking_a_short_reply_is_routed_warm_to_the_cpu_host() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "cpu", models=["m:latest"], loaded=["m"], vram_gb=0)
    builders.add_node(fleet, "gpu", models=["m:latest"])
    router = builders.router(fleet, "memory_aware")
    assert fleet.nodes["cpu"].vram_total == 0 and fleet.nodes["gpu"].vram_total > 0
    short = router.pick(RouteRequest(model="m", edge_id="e", max_reply=10))
    assert [(r.candidate.node_id, r.reason) for r in short.ranked] == [
        ("cpu", "warm"),
        ("gpu", "cold-fit"),
    ]
    router.fleet.leases.close(short.lease_id)
    usual = router.pick(RouteRequest(model="m", edge_id="e"))  # 200 tokens: 20 s on the CPU
    assert usual.ranked[0].candidate.node_id == "gpu"


def test_affinity_is_a_weight_not_a_pin() -> None:
    mine = replace(BASE, node_id="mine", loaded=True, affinity=True)
    other = replace(BASE, node_id="other", loaded=True)
    assert _order(other, mine) == ["mine", "other"]
    assert expected_cost(mine)[1] == "affinity warm"
    busy_mine = replace(mine, in_flight_model=3)
    assert _order(other, busy_mine) == ["other", "mine"]


def test_a_routed_cold_load_counts_as_loading_at_once() -> None:
    fleet = builders.fleet()
    for node_id in ("a", "b"):
        builders.add_node(fleet, node_id, models=["m:latest"], num_parallel=2)
    router = builders.router(fleet, "memory_aware")
    first = router.pick(RouteRequest(model="m", edge_id="e"))
    chosen = first.ranked[0].candidate.node_id
    assert first.ranked[0].reason == "cold-fit"
    second = router.pick(RouteRequest(model="m", edge_id="e"))
    assert second.ranked[0].candidate.node_id == chosen  # no second cold load elsewhere
    assert second.ranked[0].reason == "loading"


def test_a_load_under_way_costs_what_is_left_of_it_but_at_least_half() -> None:
    """A load routed moments ago has all of it left: a second request does better with a
    quicker cold load elsewhere. As the load goes on it costs less, down to half (it may have
    waited behind other loads, and a snapshot may not show it done yet)."""
    quicker = replace(BASE, node_id="quicker", load_seconds=3.5)  # 3.5 + 2 s penalty
    just_routed = replace(BASE, node_id="loading", loading=True)  # 6 s left

    def left(loading_for: float) -> float:
        return expected_cost(replace(just_routed, loading_for=loading_for))[0]

    assert expected_cost(just_routed)[1] == "loading"
    assert _order(just_routed, quicker) == ["quicker", "loading"]
    assert _order(replace(just_routed, loading_for=2.0), quicker) == ["loading", "quicker"]
    assert left(0.0) - left(2.0) == pytest.approx(2.0)
    assert left(3.0) == pytest.approx(left(2.0) - 1.0)
    assert left(3.0) == pytest.approx(left(5.0)) == pytest.approx(left(60.0))


def test_a_candidate_counts_a_load_under_way_from_when_it_was_routed() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a", models=["m:latest"], num_parallel=2)
    router = builders.router(fleet, "memory_aware")
    routed_at = time.monotonic()
    router.pick(RouteRequest(model="m", edge_id="e"))
    node = fleet.nodes["a"]
    with mock.patch.object(router_module.time, "monotonic", return_value=routed_at + 2.5):
        c = router.candidates.build(node, "m:latest", "")
    assert c.loading and c.loading_for == pytest.approx(2.5, abs=0.2)
    assert router.candidates.build(node, "other:latest", "").loading_for == 0.0


def test_a_model_listed_while_its_routed_load_goes_on_costs_what_is_left_of_it() -> None:
    """Ollama lists a model (/api/ps) as its load starts: listed, a model loaded by a load
    routed moments ago is not ready yet, and a request does better with a quicker load
    elsewhere; once the load time has passed it is warm."""
    listed = replace(BASE, node_id="listed", loaded=True, warming=True)  # 6 s left
    quicker = replace(BASE, node_id="quicker", load_seconds=3.5)  # 3.5 + 2 s penalty
    assert expected_cost(listed)[1] == "loading"
    assert _order(listed, quicker) == ["quicker", "listed"]
    assert _order(replace(listed, loading_for=2.0), quicker) == ["listed", "quicker"]
    assert expected_cost(replace(listed, loading_for=7.0)) == expected_cost(
        replace(listed, warming=False)
    )
    assert expected_cost(replace(listed, loading_for=7.0))[1] == "warm"


def test_a_routed_load_listed_by_a_snapshot_is_warming_until_a_reply_comes() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a", models=["m:latest"], num_parallel=2)
    router = builders.router(fleet, "memory_aware")
    routed_at = time.monotonic()
    first = router.pick(RouteRequest(model="m", edge_id="e"))
    node = fleet.nodes["a"]

    def listed(sequence: int, *models: str) -> None:
        loaded = tuple(LoadedModel(name=m) for m in models)
        fleet.update("a", node.session, replace(node.snapshot, sequence=sequence, loaded=loaded))

    listed(2, "m:latest")
    assert not node.loading and node.warming == {"m:latest": pytest.approx(routed_at, abs=0.2)}
    with mock.patch.object(router_module.time, "monotonic", return_value=routed_at + 1.5):
        c = router.candidates.build(node, "m:latest", "")
    assert c.loaded and c.warming and c.loading_for == pytest.approx(1.5, abs=0.2)
    router.report(Report(first.lease_id, "a", Outcome.OK, http_status=200))
    assert not node.warming and not router.candidates.build(node, "m:latest", "").warming
    second = router.pick(RouteRequest(model="m", edge_id="e", node_id="a"))
    assert second.ranked[0].reason == "warm"  # no load routed: nothing to count down
    listed(3, "m:latest")
    assert not node.warming
    # A routed load whose model goes from the listing before any reply is not warming either.
    router.report(Report(second.lease_id, "a", Outcome.OK, http_status=200))
    listed(4)
    router.pick(RouteRequest(model="m", edge_id="e"))
    listed(5, "m:latest")
    assert "m:latest" in node.warming
    listed(6)
    assert not node.warming


def test_session_affinity_follows_the_session_and_is_forgotten_on_unload() -> None:
    fleet = builders.fleet()
    for node_id in ("a", "b"):
        builders.add_node(fleet, node_id, models=["m:latest"], loaded=["m:latest"])
    router = builders.router(fleet, "memory_aware")
    first = router.pick(RouteRequest(model="m", edge_id="e", session_key="s1"))
    home = first.ranked[0].candidate.node_id
    router.fleet.leases.close(first.lease_id)
    again = router.pick(RouteRequest(model="m", edge_id="e", session_key="s1"))
    assert again.ranked[0].candidate.node_id == home
    assert again.ranked[0].reason == "affinity warm"
    router.fleet.leases.close(again.lease_id)
    node = fleet.nodes[home]
    fleet.update(home, node.session, replace(node.snapshot, sequence=9, loaded=()))
    assert router.sessions.affinity("s1", "m:latest") == ""  # the host unloaded it: forgotten
    assert "s1" not in router.sessions.last


def test_max_loaded_models_makes_a_load_evict_even_with_free_memory() -> None:
    full_busy = replace(BASE, node_id="full", loaded_count=3, max_loaded=3)
    assert expected_cost(full_busy)[1] == "cold-evict-busy"
    full_idle = replace(full_busy, idle_loaded_count=1, idle_loaded_bytes=2 * GIB)
    assert expected_cost(full_idle)[1] == "cold-evict-idle"
    assert expected_cost(replace(full_busy, loaded_count=2))[1] == "cold-fit"


def _victim(key: str, demand: float, *, elsewhere: bool = False) -> Resident:
    return Resident(key, 10 * GIB, 9 * GIB, 6.0, demand, elsewhere)


def test_an_eviction_costs_the_victims_reload_weighted_by_its_demand() -> None:
    tight = replace(BASE, memory_free=1 * GIB, idle_loaded_bytes=10 * GIB, idle_loaded_count=1)
    popular = replace(tight, node_id="popular", idle_loaded=(_victim("hot", 5.0),))
    unwanted = replace(tight, node_id="unwanted", idle_loaded=(_victim("stale", 0.0),))
    assert _order(popular, unwanted) == ["unwanted", "popular"]
    assert eviction_cost(unwanted) == 0.0
    assert eviction_cost(popular) > 5.9  # nearly its whole 6 s reload: it is wanted again
    shared = replace(popular, node_id="shared", idle_loaded=(_victim("hot", 5.0, elsewhere=True),))
    assert _order(popular, shared) == ["shared", "popular"]  # another host can serve it warm
    # Only the models Ollama would evict count: here the first one frees enough.
    two = replace(tight, idle_loaded=(_victim("stale", 0.0), _victim("hot", 5.0)))
    assert [r.key for r in predicted_victims(two)] == ["stale"]
    assert eviction_cost(two) == 0.0


def _m1_on_a_full_small_host() -> tuple[Fleet, Node, Snapshot, Router]:
    """m1 loaded on "small" (3 GiB, half a GiB free, no room for m2 beside it); "other" has m1
    on disk and room for it."""
    fleet = builders.fleet()
    small = builders.add_node(fleet, "small", models=["m1:latest", "m2:latest"], loaded=["m1"])
    builders.add_node(fleet, "other", models=["m1:latest"])
    tight = replace(small.snapshot, sequence=2, gpus=(Gpu(0, "GPU", "", 3 * GIB, GIB // 2),))
    fleet.update("small", small.session, tight)
    return fleet, small, tight, builders.router(fleet, "memory_aware")


def test_a_warm_host_that_a_routed_load_will_evict_is_warm_no_more() -> None:
    fleet, small, tight, router = _m1_on_a_full_small_host()
    warm = router.pick(RouteRequest(model="m1", edge_id="e"))
    assert warm.ranked[0].reason == "warm"
    router.fleet.leases.close(warm.lease_id)  # m1 is idle: a load may evict it
    load = router.pick(RouteRequest(model="m2", edge_id="e", max_candidates=1))
    assert load.ranked[0].candidate.node_id == "small"
    assert load.ranked[0].reason == "cold-evict-idle"
    assert small.evicting == {"m1:latest": "m2:latest"}
    after = router.pick(RouteRequest(model="m1", edge_id="e"))
    assert after.ranked[0].candidate.node_id == "other"  # not "warm" on small
    assert after.ranked[0].reason == "cold-fit"
    # The load finished and m1 survived it (a snapshot says so): warm again.
    both = replace(tight, sequence=3, loaded=(*tight.loaded, LoadedModel(name="m2:latest")))
    fleet.update("small", small.session, both)
    assert small.evicting == {}
    assert router.pick(RouteRequest(model="m1", edge_id="e")).ranked[0].reason == "warm"


def test_a_busy_model_a_routed_load_waits_to_evict_is_warm_no_more() -> None:
    _, small, _, router = _m1_on_a_full_small_host()
    busy = router.pick(RouteRequest(model="m1", edge_id="e"))
    assert busy.ranked[0].candidate.node_id == "small"  # in flight: m1 stays busy
    load = router.pick(RouteRequest(model="m2", edge_id="e", node_id="small"))
    assert load.ranked[0].reason == "cold-evict-busy"
    assert small.evicting == {"m1:latest": "m2:latest"}  # once its request is done
    # Sent to small now, m1 would wait behind m2's load and then for its own reload.
    after = router.pick(RouteRequest(model="m1", edge_id="e"))
    assert after.ranked[0].candidate.node_id == "other"
    assert after.ranked[0].reason == "cold-fit"


def test_a_load_that_must_wait_for_busy_models_goes_where_they_finish_first() -> None:
    def full(node_id: str, load_s: float, victim: Busy) -> Candidate:
        return replace(
            BASE, node_id=node_id, memory_free=GIB, load_seconds=load_s, busy_victims=(victim,)
        )

    # Loads fast, but its model has three long replies to finish first (3 x 200 / 10 = 60 s).
    swamped = full("swamped", 2.0, Busy("v:latest", 3, 5 * GIB, 10.0, 200.0))
    # Loads slower, after one short reply (1 x 200 / 100 = 2 s).
    soon = full("soon", 6.0, Busy("v:latest", 1, 5 * GIB, 100.0, 200.0))
    # A victim still loading finishes its load (about half of 12 s is left) and its reply.
    loading = full("loading", 2.0, Busy("v:latest", 1, 5 * GIB, 100.0, 200.0, 12.0, True))
    evict_idle = replace(BASE, node_id="idle", memory_free=GIB, idle_loaded_bytes=10 * GIB)
    assert _order(swamped, soon, loading, evict_idle) == ["idle", "soon", "loading", "swamped"]
    assert {expected_cost(c)[1] for c in (swamped, soon, loading)} == {"cold-evict-busy"}
    # Three embeds to finish are three passes over the weights (3 x 1 / 10 = 0.3 s), not three
    # replies: the fast loader goes first.
    embeds = full("embeds", 2.0, Busy("v:latest", 3, 5 * GIB, 10.0, 0.0, embeds_only=True))
    assert busy_wait(embeds) == pytest.approx(0.3)
    assert _order(embeds, soon) == ["embeds", "soon"]
    # So are three replies asked to stop at 5 tokens (3 x 5 / 10 = 1.5 s); a fourth with no
    # limit runs to the usual reply (+ 200 / 10).
    short = Busy("v:latest", 3, 5 * GIB, 10.0, 200.0, limits=((5, 3),))
    assert busy_wait(full("short", 2.0, short)) == pytest.approx(1.5)
    assert _order(full("short", 2.0, short), soon) == ["short", "soon"]
    assert busy_wait(full("short", 2.0, replace(short, in_flight=4))) == pytest.approx(21.5)


def test_a_load_that_must_wait_for_busy_models_evicts_those_least_needed() -> None:
    """Evicting a busy model costs its reload later, as evicting an idle one does: between
    hosts whose models finish as soon, the load goes where they are asked for least, and the
    idle models it evicts first count too."""

    def full(node_id: str, *, demand: float, elsewhere: bool = False) -> Candidate:
        victim = Busy("v:latest", 1, 5 * GIB, 100.0, 200.0, 6.0, demand=demand)
        return replace(
            BASE,
            node_id=node_id,
            memory_free=GIB,
            busy_victims=(replace(victim, elsewhere=elsewhere),),
        )

    wanted, spare = full("a-wanted", demand=10.0), full("b-spare", demand=0.5)
    assert _order(wanted, spare) == ["b-spare", "a-wanted"]
    # Loaded on another host too, a wanted model costs a quarter as much to evict.
    assert _order(full("a-wanted", demand=10.0, elsewhere=True), spare) == ["a-wanted", "b-spare"]
    idle = Resident("i:latest", GIB, GIB, 6.0, demand=10.0)
    also_idle = replace(spare, idle_loaded=(idle,), idle_loaded_count=1, idle_loaded_bytes=GIB)
    assert expected_cost(also_idle)[1] == "cold-evict-busy"
    assert _order(wanted, also_idle) == ["a-wanted", "b-spare"]


def test_a_candidate_lists_the_busy_models_its_load_would_wait_for() -> None:
    fleet, small, _, router = _m1_on_a_full_small_host()
    busy = router.pick(RouteRequest(model="m1", edge_id="e", node_id="small", max_reply=9))
    waits = router.candidates.build(small, "m2:latest", "")
    assert [(b.key, b.in_flight, b.loading, b.limits) for b in waits.busy_victims] == [
        ("m1:latest", 1, False, ((9, 1),))
    ]
    assert waits.busy_victims[0].demand == pytest.approx(router.demand.of("m1:latest"))
    assert waits.busy_victims[0].demand > 0 and not waits.busy_victims[0].elsewhere
    other = fleet.nodes["other"]
    warm_there = replace(other.snapshot, sequence=2, loaded=(LoadedModel(name="m1:latest"),))
    fleet.update("other", other.session, warm_there)
    assert router.candidates.build(small, "m2:latest", "").busy_victims[0].elsewhere
    assert not waits.busy_victims[0].embeds_only
    small.embedding_only = frozenset({"m1:latest"})  # as a snapshot listing it so would set
    assert router.candidates.build(small, "m2:latest", "").busy_victims[0].embeds_only
    fleet.leases.close(busy.lease_id)  # m1 idle: evicting it makes room, nothing to wait for
    assert router.candidates.build(small, "m2:latest", "").busy_victims == ()


def test_a_busy_model_still_loading_counts_as_warm_elsewhere_if_loaded_on_one_other_host() -> None:
    fleet = builders.fleet()
    small = builders.add_node(fleet, "small", models=["m1:latest", "m2:latest"], vram_gb=3.0)
    builders.add_node(fleet, "other", models=["m1:latest"], loaded=["m1:latest"])
    router = builders.router(fleet, "memory_aware")
    router.pick(RouteRequest(model="m1", edge_id="e", node_id="small"))  # loads there, busy
    (victim,) = router.candidates.build(small, "m2:latest", "").busy_victims
    assert (victim.key, victim.loading, victim.elsewhere) == ("m1:latest", True, True)


def test_a_busy_model_listed_while_its_routed_load_goes_on_is_warming() -> None:
    fleet = builders.fleet()
    small = builders.add_node(fleet, "small", models=["m1:latest", "m2:latest"], vram_gb=3.0)
    router = builders.router(fleet, "memory_aware")
    routed_at = time.monotonic()
    router.pick(RouteRequest(model="m1", edge_id="e", node_id="small"))  # loads there, busy
    used = (Gpu(0, "GPU", "", 3 * GIB, GIB // 2),)
    listed = (LoadedModel(name="m1:latest", size_bytes=2 * GIB, size_vram_bytes=2 * GIB),)
    fleet.update(
        "small", small.session, replace(small.snapshot, sequence=2, loaded=listed, gpus=used)
    )
    with mock.patch.object(router_module.time, "monotonic", return_value=routed_at + 1.5):
        (victim,) = router.candidates.build(small, "m2:latest", "").busy_victims
    assert (victim.key, victim.loading, victim.warming) == ("m1:latest", False, True)
    assert victim.loading_for == pytest.approx(1.5, abs=0.2)


def test_a_busy_victim_still_loading_finishes_what_is_left_of_its_load_first() -> None:
    """A busy model a load must wait for first finishes its own load if one is under way: at
    least half of it while no snapshot lists the model, all that is left once one does."""

    def waits(victim: Busy) -> float:
        return busy_wait(replace(BASE, memory_free=GIB, busy_victims=(victim,)))

    loaded = Busy("v:latest", 1, 5 * GIB, 100.0, 200.0, 12.0)  # one 2 s reply
    reply = waits(loaded)
    assert reply == pytest.approx(2.0)
    routed, listed = replace(loaded, loading=True), replace(loaded, warming=True)
    assert waits(routed) == pytest.approx(reply + 12.0) == pytest.approx(waits(listed))
    assert waits(replace(routed, loading_for=9.0)) == pytest.approx(reply + 6.0)  # half
    assert waits(replace(listed, loading_for=9.0)) == pytest.approx(reply + 3.0)
    assert waits(replace(listed, loading_for=20.0)) == pytest.approx(reply)


def test_a_load_that_waited_for_a_busy_model_teaches_no_load_time() -> None:
    _, _, _, router = _m1_on_a_full_small_host()
    router.pick(RouteRequest(model="m1", edge_id="e", node_id="small"))  # m1 stays busy
    load = router.pick(RouteRequest(model="m2", edge_id="e", node_id="small"))
    assert load.ranked[0].reason == "cold-evict-busy"
    waited = GenerationStats(load_duration_ns=9 * 10**9, eval_count=1)  # m1's reply, then m2
    assert router.report(Report(load.lease_id, "small", Outcome.OK, stats=waited))
    assert router.learning.learned[("small", "m2:latest")].load_seconds == 0.0


def test_a_model_still_loading_that_a_later_load_will_evict_is_not_sent_there() -> None:
    fleet = builders.fleet()
    small = builders.add_node(
        fleet, "small", models=["m1:latest", "m2:latest"], vram_gb=3.0, num_parallel=2
    )
    builders.add_node(fleet, "other", models=["m1:latest"])
    router = builders.router(fleet, "memory_aware")
    first = router.pick(RouteRequest(model="m1", edge_id="e", node_id="small"))
    assert first.ranked[0].reason == "cold-fit" and "m1:latest" in small.loading
    load = router.pick(RouteRequest(model="m2", edge_id="e", node_id="small"))
    assert load.ranked[0].reason == "cold-evict-busy"  # m1 takes the room until it is done
    assert small.evicting == {"m1:latest": "m2:latest"}
    # A snapshot from before m1's load shows: the mark stays (m1 is still on its way in).
    fleet.update("small", small.session, replace(small.snapshot, sequence=2))
    assert small.evicting == {"m1:latest": "m2:latest"}
    after = router.pick(RouteRequest(model="m1", edge_id="e"))
    assert after.ranked[0].candidate.node_id == "other"  # not "loading" on small
    # m1's load shows up in a snapshot: still marked, so still not warm for routing.
    shown = replace(small.snapshot, sequence=3, loaded=(LoadedModel(name="m1:latest"),))
    fleet.update("small", small.session, shown)
    assert small.evicting == {"m1:latest": "m2:latest"} and fleet.warm == {}


def test_a_model_another_load_will_evict_is_not_counted_as_warm_elsewhere() -> None:
    fleet = builders.fleet()
    tight = {}
    for node_id in ("a", "b"):
        node = builders.add_node(fleet, node_id, models=["m1:latest", "m2:latest"], loaded=["m1"])
        gpus = (Gpu(0, "GPU", "", 3 * GIB, GIB // 2),)
        tight[node_id] = replace(node.snapshot, sequence=2, gpus=gpus)
        fleet.update(node_id, node.session, tight[node_id])
    router = builders.router(fleet, "memory_aware")
    for _ in range(3):  # m1 is in demand, then idle
        router.fleet.leases.close(router.pick(RouteRequest(model="m1", edge_id="e")).lease_id)
    before = router.candidates.build(fleet.nodes["b"], "m2:latest", "")
    assert [(r.key, r.elsewhere) for r in before.idle_loaded] == [("m1:latest", True)]
    load = router.pick(RouteRequest(model="m2", edge_id="e", node_id="a"))
    assert load.ranked[0].reason == "cold-evict-idle"
    assert fleet.warm == {"m1:latest": 1}  # a's copy is on its way out
    after = router.candidates.build(fleet.nodes["b"], "m2:latest", "")
    assert [(r.key, r.elsewhere) for r in after.idle_loaded] == [("m1:latest", False)]
    assert eviction_cost(after) > eviction_cost(before)  # its last copy: the full reload
    # The load is done and took m1's place on a (a snapshot says so): counted as it is.
    swapped = replace(tight["a"], sequence=3, loaded=(LoadedModel(name="m2:latest"),))
    fleet.update("a", fleet.nodes["a"].session, swapped)
    assert fleet.warm == {"m1:latest": 1, "m2:latest": 1}


def test_demand_is_each_models_share_of_recent_picks() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["a:latest", "b:latest"], loaded=["a", "b"])
    router = builders.router(fleet, "memory_aware")
    for i in range(40):
        outcome = router.pick(RouteRequest(model="b" if i % 4 == 3 else "a", edge_id="e"))
        router.fleet.leases.close(outcome.lease_id)
    a, b = router.demand.of("a:latest"), router.demand.of("b:latest")
    assert a + b == pytest.approx(DEMAND_WINDOW)  # every pick was one of the two
    assert 2.5 < a / b < 3.5
    assert router.demand.of("c:latest") == 0.0


def test_reply_length_is_learned_from_reports() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["m:latest"], loaded=["m"])
    router = builders.router(fleet, "memory_aware")
    for _ in range(20):
        outcome = router.pick(RouteRequest(model="m", edge_id="e"))
        stats = GenerationStats(eval_count=80, eval_duration_ns=10**9)
        router.report(Report(outcome.lease_id, "n", Outcome.OK, stats=stats))
    learned = router.candidates.build(fleet.nodes["n"], "m:latest", "")
    assert learned.expected_tokens == pytest.approx(80, rel=0.2)
    assert service_time(learned) == pytest.approx(1.0, rel=0.2)  # 80 tokens at 80 tokens/s


def test_a_first_reply_cut_at_its_limit_teaches_only_a_length_over_the_default() -> None:
    """A reply stopped at its request's limit says the usual one is at least that long. Before
    any reply was seen, routing takes it to be DEFAULT_REPLY_TOKENS: a reply cut at 3 tokens
    (a title, a yes/no) must not make every later request look 3 tokens long; one cut at 1,000
    says more than the default does."""
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["m:latest"], loaded=["m"])
    router = builders.router(fleet, "memory_aware")

    def cut_at(limit: int) -> None:
        outcome = router.pick(RouteRequest(model="m", edge_id="e", max_reply=limit))
        stats = GenerationStats(eval_count=limit, eval_duration_ns=10**9)
        router.report(Report(outcome.lease_id, "n", Outcome.OK, http_status=200, stats=stats))

    cut_at(3)
    assert router.learning.usual_reply("m:latest") == 0.0  # still unknown: the default holds
    cut_at(1000)
    assert router.learning.usual_reply("m:latest") == 1000


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_usual_reply_is_the_mean_of_replies_that_vary_and_seldom_moves(seed: int) -> None:
    """Reply lengths vary widely from one reply to the next; what ranking needs is their mean.
    A figure that follows the last few replies is far from it and moves on most Reports, and
    each move refreshes the floor of every host that has the model."""
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["m:latest"], loaded=["m"])
    router = builders.router(fleet, "memory_aware")
    rng = random.Random(seed)
    lengths, figures = [], []
    for _ in range(100):
        outcome = router.pick(RouteRequest(model="m", edge_id="e"))
        count = max(1, int(rng.lognormvariate(math.log(200), 0.8)))  # half within 117-342
        lengths.append(count)
        stats = GenerationStats(eval_count=count, eval_duration_ns=10**9)
        router.report(Report(outcome.lease_id, "n", Outcome.OK, http_status=200, stats=stats))
        figures.append(router.candidates.build(fleet.nodes["n"], "m:latest", "").expected_tokens)
    mean = sum(lengths) / len(lengths)
    assert all(abs(f - mean) < 0.5 * mean for f in figures[40:]), (mean, figures[40:])
    moves = sum(before != after for before, after in itertools.pairwise(figures[20:]))
    assert moves <= 8  # of 79 Reports (following the last few replies: about 35)


def test_a_cold_load_waits_for_the_loads_routed_to_its_host_before_it() -> None:
    free = replace(BASE, node_id="free")
    busy_loading = replace(BASE, node_id="behind", loading_ahead=20 * GIB)  # a 32b-size load
    assert _order(busy_loading, free) == ["free", "behind"]
    assert expected_cost(busy_loading)[0] > expected_cost(free)[0] + 10  # ~17 GiB at 6 s / 5 GiB


def test_a_routed_load_reserves_the_memory_it_will_take_not_its_file_size() -> None:
    fleet = builders.fleet()
    node = builders.add_node(fleet, "n", models=["m:latest"])
    router = builders.router(fleet, "memory_aware")
    router.pick(RouteRequest(model="m", edge_id="e"))
    file_size = node.installed_by_key["m:latest"].size_bytes
    assert node.loading["m:latest"][1] == int(file_size * KV_HEADROOM)


def test_a_hosts_load_speed_estimates_the_models_never_loaded_there() -> None:
    fleet = builders.fleet()
    sizes = {"small:latest": 2 * builders.GB, "big:latest": 8 * builders.GB}
    for node_id, vram in (("fast", 48.0), ("slow", 24.0)):
        node = builders.add_node(fleet, node_id, models=list(sizes), vram_gb=vram)
        installed = tuple(InstalledModel(name=m, size_bytes=s) for m, s in sizes.items())
        fleet.update(node_id, node.session, replace(node.snapshot, sequence=2, installed=installed))
    router = builders.router(fleet, "memory_aware")
    for node_id, load_s in (("fast", 1), ("slow", 4)):  # 2 GB/s and 0.5 GB/s
        lease = router.pick(RouteRequest(model="small", edge_id="e", node_id=node_id)).lease_id
        stats = GenerationStats(load_duration_ns=load_s * 10**9, eval_count=1)
        router.report(Report(lease, node_id, Outcome.OK, stats=stats))
    fast = router.candidates.build(fleet.nodes["fast"], "big:latest", "")
    slow = router.candidates.build(fleet.nodes["slow"], "big:latest", "")
    assert (fast.load_seconds, slow.load_seconds) == (pytest.approx(4.0), pytest.approx(16.0))
    # Without the hosts' speeds both would cost the same estimate and the smaller host win.
    outcome = router.pick(RouteRequest(model="big", edge_id="e"))
    assert outcome.ranked[0].candidate.node_id == "fast"
    assert outcome.ranked[0].reason == "cold-fit"


def test_a_hosts_decode_bandwidth_estimates_the_models_never_run_there() -> None:
    fleet = builders.fleet()
    sizes = {"small:latest": 2 * builders.GB, "big:latest": 8 * builders.GB}
    installed = tuple(InstalledModel(name=m, size_bytes=s) for m, s in sizes.items())
    small = LoadedModel(name="small:latest", size_bytes=sizes["small:latest"])
    for node_id, vram in (("fast", 48.0), ("slow", 24.0)):
        node = builders.add_node(fleet, node_id, models=list(sizes), vram_gb=vram)
        fleet.update(node_id, node.session, replace(node.snapshot, sequence=2, installed=installed))
    router = builders.router(fleet, "memory_aware")

    def decode(node_id: str, tps: int, vram_share: float) -> None:
        node = fleet.nodes[node_id]
        loaded = replace(small, size_vram_bytes=int(small.size_bytes * vram_share))
        fleet.update(
            node_id,
            node.session,
            replace(node.snapshot, sequence=node.snapshot.sequence + 1, loaded=(loaded,)),
        )
        lease = router.pick(RouteRequest(model="small", edge_id="e", node_id=node_id)).lease_id
        stats = GenerationStats(eval_count=tps, eval_duration_ns=10**9)
        router.report(Report(lease, node_id, Outcome.OK, stats=stats))

    decode("slow", 5, 0.5)  # split with the CPU: decodes at the CPU's pace, says nothing
    assert router.candidates.build(fleet.nodes["slow"], "big:latest", "").decode_tps == 0.0
    decode("fast", 100, 1.0)  # 2 GB at 100 and 25 tokens/s: 200 and 50 GB/s of weights
    decode("slow", 25, 1.0)
    fast = router.candidates.build(fleet.nodes["fast"], "big:latest", "")
    slow = router.candidates.build(fleet.nodes["slow"], "big:latest", "")
    assert (fast.decode_tps, slow.decode_tps) == (pytest.approx(25.0), pytest.approx(6.25))
    # Without the hosts' speeds both would decode at one default and the smaller host win.
    outcome = router.pick(RouteRequest(model="big", edge_id="e"))
    assert outcome.ranked[0].candidate.node_id == "fast"


def _prompt_stats(tokens: int, tps: float) -> GenerationStats:
    return GenerationStats(
        prompt_eval_count=tokens,
        prompt_eval_duration_ns=int(tokens / tps * 1e9),
        eval_count=50,
        eval_duration_ns=10**9,
    )


def test_prompt_speed_is_learned_from_prompts_not_found_in_a_cache() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["m:latest"], loaded=["m:latest"])
    router = builders.router(fleet, "memory_aware")

    def run(tokens: int, tps: float, session: str = "") -> None:
        asked = RouteRequest(model="m", edge_id="e", session_key=session, prompt_tokens=tokens)
        lease = router.pick(asked).lease_id
        router.report(Report(lease, "n", Outcome.OK, stats=_prompt_stats(tokens, tps)))

    node = fleet.nodes["n"]
    run(20, 50.0)  # too short a prompt to tell the speed from a batch's fixed cost
    # Until a speed is measured, a GPU host's is taken as 10x its decoding (50 tokens/s here).
    assert prompt_time(router.candidates.build(node, "m:latest", "", prompt_tokens=1000)) == 2.0
    run(2000, 1000.0, "chat")  # the session's first turn: nothing of it was cached
    ask = router.candidates.build(node, "m:latest", "", prompt_tokens=1000)
    assert prompt_time(ask) == pytest.approx(1.0)
    # Its next turn goes back to the same host, which times only the part it had not cached:
    # Ollama counts every token, so that reply would make the host look 20x faster.
    run(2100, 20_000.0, "chat")
    ask = router.candidates.build(node, "m:latest", "", prompt_tokens=1000)
    assert prompt_time(ask) == pytest.approx(1.0)
    # The session's host has its last prompt cached: only the new part costs there.
    mine = router.candidates.build(node, "m:latest", "n", prompt_tokens=2600, cached_tokens=2100)
    assert mine.affinity and prompt_time(mine) == pytest.approx(0.5)


def test_a_long_prompt_goes_where_it_is_evaluated_soonest() -> None:
    """A host measured to evaluate prompts slowly (a CPU) loses a long prompt to a faster one
    with a queue, and still takes a short one; a host's prompt rate estimates its other models."""
    fleet = builders.fleet()
    whole = LoadedModel(
        name="m:latest", size_bytes=2 * builders.GB, size_vram_bytes=2 * builders.GB
    )
    for node_id in ("gpu", "cpu"):
        node = builders.add_node(fleet, node_id, models=["m:latest", "other:latest"])
        fleet.update(node_id, node.session, replace(node.snapshot, sequence=2, loaded=(whole,)))
    router = builders.router(fleet, "memory_aware")
    for node_id, tps in (("gpu", 2000.0), ("cpu", 50.0)):
        lease = router.pick(RouteRequest(model="m", edge_id="e", node_id=node_id)).lease_id
        stats = replace(_prompt_stats(1000, tps), eval_count=100, eval_duration_ns=5 * 10**9)
        router.report(Report(lease, node_id, Outcome.OK, stats=stats))
    busy = router.pick(RouteRequest(model="m", edge_id="e", node_id="gpu"))  # 5 s to go
    assert busy.status.name == "OK"
    short = router.pick(RouteRequest(model="m", edge_id="e", prompt_tokens=50))
    assert short.ranked[0].candidate.node_id == "cpu"  # 1 s of prompt beats 5 s of queue
    router.fleet.leases.close(short.lease_id)
    long = router.pick(RouteRequest(model="m", edge_id="e", prompt_tokens=4000))
    assert long.ranked[0].candidate.node_id == "gpu"  # 80 s of prompt on the CPU: wait
    assert long.ranked[0].reason.startswith("queued")
    other = router.candidates.build(fleet.nodes["cpu"], "other:latest", "", prompt_tokens=100)
    assert prompt_time(other) == pytest.approx(2.0)  # the same size: the host's rate


def test_a_long_conversation_stays_where_it_is_cached_unless_the_wait_costs_more() -> None:
    fleet = builders.fleet()
    for node_id in ("a", "b"):
        builders.add_node(fleet, node_id, models=["m:latest"], loaded=["m:latest"])
    router = builders.router(fleet, "memory_aware")
    for node_id in ("a", "b"):  # both evaluate 1,000 prompt tokens/s and decode 100 tokens in 2 s
        lease = router.pick(RouteRequest(model="m", edge_id="e", node_id=node_id)).lease_id
        stats = replace(_prompt_stats(1000, 1000.0), eval_count=100, eval_duration_ns=2 * 10**9)
        router.report(Report(lease, node_id, Outcome.OK, stats=stats))

    def turn(tokens: int) -> str:
        asked = RouteRequest(model="m", edge_id="e", session_key="s", prompt_tokens=tokens)
        outcome = router.pick(asked)
        router.fleet.leases.close(outcome.lease_id)
        return outcome.ranked[0].candidate.node_id

    home = turn(12_000)
    other = "b" if home == "a" else "a"
    queued = router.pick(RouteRequest(model="m", edge_id="e", node_id=home))  # 2 s of queue
    # Elsewhere its 12,500 tokens cost 12.5 s; at home, the 500 new ones 0.5 s after the queue.
    assert turn(12_500) == home
    router.fleet.leases.close(queued.lease_id)
    # A short conversation is not worth a queue: the other host evaluates it all in 0.5 s.
    for _ in range(2):
        router.pick(RouteRequest(model="m", edge_id="e", node_id=home))
    asked = RouteRequest(model="m", edge_id="e", session_key="t", prompt_tokens=400)
    router.fleet.leases.close(router.pick(asked).lease_id)
    router.sessions.last["t"] = (home, "m:latest", 400)
    assert router.pick(replace(asked, prompt_tokens=500)).ranked[0].candidate.node_id == other


def test_a_conversation_loses_its_cache_once_others_took_every_slot() -> None:
    """Ollama keeps one cached prompt per parallel slot: after as many other conversations
    as the instance has slots ran there, a session's prefix is gone, and its host evaluates
    the whole prompt again like any other."""
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["m:latest"], loaded=["m:latest"], num_parallel=2)
    router = builders.router(fleet, "memory_aware")

    def turn(session: str, tokens: int) -> int:
        outcome = router.pick(
            RouteRequest(model="m", edge_id="e", session_key=session, prompt_tokens=tokens)
        )
        router.fleet.leases.close(outcome.lease_id)
        return router.sessions.cached_tokens(
            session, router.sessions.affinity(session, "m:latest"), "m:latest"
        )

    turn("s", 3000)
    assert turn("s", 3500) == 3500  # what its next turn finds cached: this one's prompt
    turn("t", 100)  # one other conversation: the second slot
    assert router.sessions.cached_tokens("s", "n", "m:latest") == 3500
    turn("u", 100)  # a third: the oldest slot, s's, is given to it
    assert router.sessions.cached_tokens("s", "n", "m:latest") == 0
    assert router.sessions.cached_tokens("t", "n", "m:latest") == 100


def test_a_new_conversation_goes_where_it_takes_no_other_ones_cache() -> None:
    """Two alike warm hosts, one cache slot each: a second conversation would take over the
    first one's cached prompt on its host, so it goes to the other while that has a slot free
    (ties once went to the lower id, so with few requests at once every conversation piled onto
    one host and they took each other's caches turn after turn). Once every slot holds one, a
    new conversation takes over the one with the least cached."""
    fleet = builders.fleet()
    for node_id in ("a", "b"):
        builders.add_node(fleet, node_id, models=["m:latest"], loaded=["m:latest"])
    router = builders.router(fleet, "memory_aware")

    def turn(session: str, tokens: int) -> str:
        asked = RouteRequest(model="m", edge_id="e", session_key=session, prompt_tokens=tokens)
        outcome = router.pick(asked)
        router.fleet.leases.close(outcome.lease_id)
        return outcome.ranked[0].candidate.node_id

    first = turn("s", 3000)
    second = turn("t", 200)
    assert second != first
    assert turn("s", 3200) == first and turn("t", 300) == second  # each back to its cache
    assert turn("u", 100) == second  # t's 300 cached tokens cost less to lose than s's 3,200


def test_a_queue_waits_for_the_prompts_ahead_of_it_too() -> None:
    ahead = replace(BASE, loaded=True, in_flight_model=2, decode_tps=100.0, expected_tokens=100)
    assert queue_wait(ahead, service_time(ahead)) == pytest.approx(2.0)  # two replies of 1 s
    long_ahead = replace(ahead, prompt_ahead=60.0)  # one of them carries a 60 s prompt
    assert queue_wait(long_ahead, service_time(long_ahead)) == pytest.approx(62.0)
    assert queue_wait(replace(long_ahead, in_flight_model=0), 1.0) == 0.0
