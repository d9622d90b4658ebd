from dataclasses import replace

from controlplane.model import RouteRequest
from controlplane.policies import Candidate
from controlplane.policies.memory_aware import MemoryAwarePicker, expected_cost
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


def test_smallest_host_that_fits_keeps_big_gpus_free() -> None:
    big = replace(BASE, node_id="big", memory_total=24 * GIB, memory_free=24 * GIB)
    small = replace(BASE, node_id="small", memory_total=8 * GIB, memory_free=8 * GIB)
    assert _order(big, small) == ["small", "big"]


def test_slow_cpu_host_costs_what_it_costs() -> None:
    gpu = replace(BASE, node_id="gpu", decode_tps=80.0)
    cpu = replace(BASE, node_id="cpu", on_gpu=False, decode_tps=0.0, load_seconds=0.0)
    assert _order(cpu, gpu) == ["gpu", "cpu"]


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
    assert router._affinity("s1", "m:latest") == ""  # the host unloaded it: forgotten
    assert "s1" not in router.sessions


def test_max_loaded_models_makes_a_load_evict_even_with_free_memory() -> None:
    full_busy = replace(BASE, node_id="full", loaded_count=3, max_loaded=3)
    assert expected_cost(full_busy)[1] == "cold-evict-busy"
    full_idle = replace(full_busy, idle_loaded_count=1, idle_loaded_bytes=2 * GIB)
    assert expected_cost(full_idle)[1] == "cold-evict-idle"
    assert expected_cost(replace(full_busy, loaded_count=2))[1] == "cold-fit"
