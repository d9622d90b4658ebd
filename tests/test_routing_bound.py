"""bench/routing_bound.py: the exact search behind the routing bench's offline bound."""

import json
from pathlib import Path

from bench.routing_bound import (
    Clock,
    Machine,
    Step,
    bench_machines,
    frontier,
    frontier_with_waits,
    random_targets,
    verdict,
)

GIB = 1024**3


def replay(
    machines: list[Machine], plan: list[tuple[float, str]], schedule: list[Step], margin: float
) -> list[float]:
    """Each request's first-token time when ``schedule`` is run on the Clock."""
    by_name = {m.name: m for m in machines}
    loads = {index: (machine, evicted) for index, _, machine, evicted, _ in schedule}
    clock, firsts = Clock(), []
    for index, (at, model) in enumerate(plan):
        wait, clock = clock.serve(by_name, at, model, loads.get(index))
        firsts.append(wait + margin)
    return firsts


def _machines() -> list[Machine]:
    # C fits only the big card, and not beside A; A loads fast there and slowly on the small one.
    big = Machine("big", 10, 3, {"A": 4, "C": 9}, {"A": 1.0, "C": 6.0})
    small = Machine("small", 5, 3, {"A": 4}, {"A": 5.0})
    return [big, small]


def test_the_bound_finds_the_placement_that_stops_a_big_model_thrashing() -> None:
    found = frontier(_machines(), ["C", "A", "C", "A", "C"], slow_load_s=4.5)
    # A on the small card costs one slow load once; A beside C is impossible, so A on the big
    # card makes every later C a slow reload (5 loads, 3 slow). Two loads, two slow, is best.
    assert list(found) == [2]
    slow, steps = found[2]
    assert slow == 2
    assert [(model, machine, late) for _, model, machine, _, late in steps] == [
        ("C", "big", True),
        ("A", "small", True),
    ]


def test_more_loads_are_on_the_frontier_only_when_they_save_a_slow_request() -> None:
    # A, C, A: A on the small card at once is 2 loads, 2 slow (A there, then C); A on the big
    # card, evicted by C and loaded there again, is 3 loads, 1 slow (C).
    found = frontier(_machines(), ["A", "C", "A"], slow_load_s=4.5)
    assert {loads: slow for loads, (slow, _) in found.items()} == {2: 2, 3: 1}
    _, steps = found[3]
    assert [(model, machine, evicted) for _, model, machine, evicted, _ in steps] == [
        ("A", "big", ()),
        ("C", "big", ("A",)),
        ("A", "big", ("C",)),
    ]


def test_the_clock_adds_the_waits_the_relaxed_search_leaves_out() -> None:
    big = Machine("big", 10, 3, {"A": 4, "C": 9}, {"A": 1.0, "C": 6.0}, {"A": 2.0, "C": 3.0})
    plan = [(0.0, "A"), (1.5, "A"), (2.0, "C")]
    schedule = [(0, "A", "big", (), False), (2, "C", "big", ("A",), True)]
    firsts = replay([big], plan, schedule, margin=0.0)
    # A loads for 1 s; its second request waits for the one slot (free at 3 s); C's load waits
    # for both of A's replies (done at 5 s), then takes 6 s.
    assert firsts == [1.0, 1.5, 9.0]


def test_with_the_waits_a_load_behind_a_busy_model_is_late() -> None:
    big = Machine("big", 10, 3, {"A": 4, "C": 9}, {"A": 1.0, "C": 3.0}, {"A": 2.0, "C": 3.0})
    small = Machine("small", 5, 3, {"A": 4}, {"A": 5.0}, {"A": 4.0})
    plan = [(0.0, "A"), (0.5, "C")]
    # Relaxed, C's 3 s load is under the line wherever A went.
    assert {n: slow for n, (slow, _) in frontier([big, small], ["A", "C"], 4.0).items()} == {2: 0}
    # With the waits, C's load waits for A's reply on the big card (until 3 s): 5.5 s late;
    # A on the small card is late itself (5 s). Either way one request is.
    timed = frontier_with_waits([big, small], plan, line=4.0, margin=0.0)
    assert {n: slow for n, (slow, _) in timed.items()} == {2: 1}
    _, steps = timed[2]
    assert sum(first > 4.0 for first in replay([big, small], plan, steps, 0.0)) == 1


def test_the_bench_fleet_is_read_from_the_simulator() -> None:
    machines = {m.name: m for m in bench_machines(["qwen2.5:32b", "qwen2.5:14b"])}
    # The 32b is installed only on the 24 GB card, and takes most of it with its KV cache.
    assert [name for name, m in machines.items() if "qwen2.5:32b" in m.needs] == ["gpu-24g"]
    big = machines["gpu-24g"]
    assert 20 * GIB < big.needs["qwen2.5:32b"] < big.memory == 24 * GIB
    assert not big.fits(frozenset({"qwen2.5:32b", "qwen2.5:14b"}))
    assert big.slots == 2  # the bench's --num-parallel
    # A host loads faster the faster its disk: the 14b takes longer on the 12 GB card.
    assert machines["gpu-12g"].load_s["qwen2.5:14b"] > big.load_s["qwen2.5:14b"] + 1.5


def test_the_verdict_reads_the_two_searches_against_the_budget() -> None:
    relaxed = {10: (6, []), 14: (4, []), 30: (1, [])}
    found = {10: (8, []), 14: (6, []), 18: (5, [])}
    assert verdict(relaxed, found, budget=20, allowed=5) == "reachable"  # found: 18 loads, 5 slow
    assert verdict(relaxed, found, budget=15, allowed=5) == "open"  # 4 to 6 slow within 15 loads
    assert verdict(relaxed, found, budget=12, allowed=5) == "impossible"  # at least 6
    assert verdict(relaxed, found, budget=9, allowed=5) == "impossible"  # no schedule at all


def test_the_targets_are_those_of_the_issue_against_each_seeds_random_run(tmp_path: Path) -> None:
    runs = [
        {"policy": "random", "level": "middle", "seed": 7, "ttft_s": {"p95": 9.4}, "loads": 61},
        {"policy": "random", "level": "low", "seed": 7, "ttft_s": {"p95": 8.0}, "loads": 50},
        {"policy": "memory_aware", "level": "middle", "seed": 7, "ttft_s": {"p95": 5}, "loads": 9},
        {"policy": "random", "level": "middle", "seed": 8, "ttft_s": {"p95": 10.0}, "loads": 57},
    ]
    path = tmp_path / "routing.json"
    path.write_text(json.dumps({"results": runs}))
    # Half random's p95; at most a third of its loads (3x fewer: 61 / 3 -> 20).
    assert random_targets(path, "middle") == {7: (4.7, 20), 8: (5.0, 19)}


def test_ollama_evicts_the_least_recently_used_idle_model_and_waits_for_a_busy_one() -> None:
    needs, load_s = {"A": 4, "B": 4, "C": 4}, {"A": 1.0, "B": 1.0, "C": 1.0}
    m = Machine("m", 9, 3, needs, load_s, {"A": 2.0, "B": 2.0}, 1)  # two fit, not three
    by_name = {"m": m}
    clock = Clock()
    _, clock = clock.serve(by_name, 0.0, "A", ("m", ()))  # ready at 1, its reply ends at 3
    _, clock = clock.serve(by_name, 0.5, "B", ("m", ()))  # loads after A: ready 2, ends at 4
    loaded = frozenset({"A", "B"})
    assert clock.ollama_victims(m, loaded, "C", at=10.0) == ("A",)  # used longest ago
    assert clock.ollama_victims(m, loaded, "C", at=3.5) == ("A",)  # B is still busy
    _, clock = clock.serve(by_name, 5.0, "A", None)  # A used again: its reply ends at 7
    assert clock.ollama_victims(m, loaded, "C", at=10.0) == ("B",)
    assert clock.ollama_victims(m, loaded, "C", at=6.0) == ("B",)  # A is busy, B idle
    # Nothing idle at 2.5: Ollama waits for the first to finish (A at 3) and evicts it.
    early = Clock().serve(by_name, 0.0, "A", ("m", ()))[1].serve(by_name, 0.5, "B", ("m", ()))[1]
    assert early.ollama_victims(m, loaded, "C", at=2.5) == ("A",)


def test_with_the_waits_a_load_evicts_what_ollama_would() -> None:
    # A loads slowly; C fits beside one of A and B. Ollama evicts A, used longest ago.
    needs, load_s = {"A": 4, "B": 4, "C": 5}, {"A": 5.0, "B": 1.0, "C": 1.0}
    card = Machine("card", 10, 3, needs, load_s, {"A": 1.0, "B": 1.0, "C": 1.0}, 1)
    plan = [(0.0, "A"), (8.0, "B"), (20.0, "C"), (21.0, "A")]
    relaxed = frontier([card], [model for _, model in plan], slow_load_s=4.0)
    timed = frontier_with_waits([card], plan, line=4.0, margin=0.0)
    # Choosing, C would evict B and A stay warm: 3 loads, A's first slow. Ollama evicts A,
    # whose next request reloads it: 4 loads, 2 slow.
    assert {n: slow for n, (slow, _) in relaxed.items()} == {3: 1}
    assert {n: slow for n, (slow, _) in timed.items()} == {4: 2}
    assert [(model, evicted) for _, model, _, evicted, _ in timed[4][1]] == [
        ("A", ()),
        ("B", ()),
        ("C", ("A",)),
        ("A", ("B",)),
    ]


def test_a_request_routed_to_a_second_copy_waits_for_its_load() -> None:
    big, small = _machines()
    big = Machine(big.name, big.memory, big.max_loaded, big.needs, big.load_s, {"A": 1.0}, 1)
    small = Machine(small.name, small.memory, 3, small.needs, small.load_s, {"A": 1.0}, 1)
    by_name = {"big": big, "small": small}
    _, clock = Clock().serve(by_name, 0.0, "A", ("big", ()))  # warm on big from 1 s
    wait, clock = clock.serve(by_name, 5.0, "A", ("small", ()))
    assert wait == 5.0  # routed to the small card: its load, though big is free
    wait, _ = clock.serve(by_name, 12.0, "A", None)
    assert wait == 0.0  # with no load of its own, to the copy that starts it first


def test_busy_last_evicts_a_busy_model_only_when_nothing_else_can_take_the_request() -> None:
    # Each card holds one model; the fast one loads in 1 s, the slow one in 5 s.
    needs, replies = {"A": 4, "B": 4}, {"A": 2.0, "B": 2.0}
    fast = Machine("fast", 5, 3, needs, {"A": 1.0, "B": 1.0}, replies, 1)
    slow = Machine("slow", 5, 3, needs, {"A": 5.0, "B": 5.0}, replies, 1)
    plan = [(0.0, "A"), (0.5, "B")]
    # Free to choose: B waits on the fast card for A's reply (done at 3 s), then loads: 3.5 s.
    free = frontier_with_waits([fast, slow], plan, line=4.0, margin=0.0)
    assert {n: slow_ for n, (slow_, _) in free.items()} == {2: 0}
    assert [(m, card, evicted) for _, m, card, evicted, _ in free[2][1]] == [
        ("A", "fast", ()),
        ("B", "fast", ("A",)),
    ]
    # The issue's tiers: the slow card has room, so B may not evict the busy A. One of the two
    # then loads on the slow card, 5 s.
    tiered = frontier_with_waits([fast, slow], plan, line=4.0, margin=0.0, busy_last=True)
    assert {n: slow_ for n, (slow_, _) in tiered.items()} == {2: 1}
    assert all(not evicted for _, _, _, evicted, _ in tiered[2][1])
    # With one card only, the busy model is evicted: nothing else can take the request.
    alone = frontier_with_waits([fast], plan, line=4.0, margin=0.0, busy_last=True)
    assert [(m, evicted) for _, m, _, evicted, _ in alone[2][1]] == [("A", ()), ("B", ("A",))]
