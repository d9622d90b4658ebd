"""How few slow first tokens could any routing give the routing bench's workload? Offline bounds.

Method: the request sequence of bench/routing.py (same seed, count and rate: which model each
request asks for, and when) is replayed against the same four simulated hosts, with every
figure taken from the simulator itself: which models each host has, the memory a model takes
there (weights plus KV cache at the host's automatic context, two slots), the memory and
OLLAMA_MAX_LOADED_MODELS limits, each host's load time and decode speed. A search over the ways
to serve the sequence that load a model only when a request asks for it (no preloading) finds
for each number of loads the fewest requests whose first token comes after the line (by
default 4.7 s: half of random's p95 at the middle level, 9.40 s, so the issue's 2x target). It
knows the future, so no routing policy of that kind does better.

It runs twice:
- relaxed, exact, and a lower bound: a load of L seconds makes its request L + --margin late
  (the prompt and the hop) and nothing else waits; a load may evict any models (a router can
  choose them by unloading them first), and may add a second copy of a model while the warm
  copy serves the request (as a preload would);
- with what a real host adds, what is reachable by choosing hosts alone: a request goes where
  its model is or is loaded (a second copy serves the request that asked for it, after its
  load); one load at a time per host; a load evicts what Ollama would (the idle models used
  longest ago, until it fits, waiting for busy ones when none is idle); a request waits for
  its model's load and for a free slot, each reply the mean length at the host's decode
  speed. This search keeps only the best clock per placement, so it finds a schedule, not
  surely the best: its counts are an upper bound on the best. With --busy-last it also keeps
  the issue's last tier last: a load evicts a busy model only when the request has nowhere
  else to go.

Usage: python bench/routing_bound.py [--against bench/results/routing_seeds.json]
                                     [--seeds 7,8,9] [--level middle] [--line 4.7]
                                     [--loads 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.routing import HOSTS, LEVELS, LOADS_TARGET, P95_TARGET, SIM_ARGS, Workload
from ollamasim.catalogue import lookup
from ollamasim.host import Host
from ollamasim.settings import load_settings

DEFAULT_LINE_S = 4.7
DEFAULT_MARGIN_S = 0.15  # a cold request's first token after its load: 4.80 s load -> 4.92 s
DEFAULT_LOADS = 20  # 3x fewer than random's 60 at seed 7, the middle level
MAX_LOADS = 40  # the search keeps no schedule with more loads than this
V = TypeVar("V", bound=tuple[Any, ...])


@dataclass(frozen=True)
class Machine:
    """What the search needs of one simulated host: each installed model's memory and load time
    there, and how much and how many models fit at once."""

    name: str
    memory: int
    max_loaded: int
    needs: dict[str, int]  # model -> bytes of memory when loaded
    load_s: dict[str, float]  # model -> seconds to load
    reply_s: dict[str, float] = field(default_factory=dict)  # model -> seconds for a mean reply
    slots: int = 1  # OLLAMA_NUM_PARALLEL

    def fits(self, models: frozenset[str]) -> bool:
        return len(models) <= self.max_loaded and sum(self.needs[m] for m in models) <= self.memory


def bench_machines(models: Sequence[str]) -> list[Machine]:
    """The routing bench's hosts, as its simulators would run them."""
    machines = []
    for name, profile in HOSTS.items():
        host = Host(load_settings([*profile, *SIM_ARGS]))
        sched = host.scheduler
        needs, load_s, reply_s = {}, {}, {}
        tokens = sum(host.settings.response_tokens) / 2
        for model in models:
            spec = lookup(model)
            if spec is None or host.find(model) is None:
                continue
            need = sched.memory_needed(spec, sched.context_for(spec, None))
            if need > sched.memory_bytes:  # split between GPU and CPU: not what is searched
                continue
            needs[model] = need
            load_s[model] = sched.load_seconds(spec.size_bytes)
            reply_s[model] = tokens / host.decode_tps(spec, 1.0 if sched.on_gpu else 0.0)
        machines.append(
            Machine(
                name,
                sched.memory_bytes,
                sched.max_loaded,
                needs,
                load_s,
                reply_s,
                sched.num_parallel,
            )
        )
    return machines


State = tuple[frozenset[str], ...]  # the models loaded on each machine
Step = tuple[int, str, str, tuple[str, ...], bool]  # request, model, machine, evicted, slow
Path_ = tuple[Any, Step] | None  # steps as a linked list, last first
# What a schedule has come to: slow requests, seconds waited (0 relaxed), how, and its clock
# (None relaxed). The first two rank it: fewer slow, then less waiting.
Entry = tuple[int, float, Path_, "Clock | None"]
Table = dict[State, dict[int, Entry]]  # per placement, per load count: the best entry


def frontier(
    machines: Sequence[Machine], sequence: Sequence[str], slow_load_s: float
) -> dict[int, tuple[int, list[Step]]]:
    """For each number of loads, the fewest requests that wait on a load longer than
    ``slow_load_s`` (only counts on the frontier: more loads, fewer slow requests), and the
    loads of one schedule that does it."""
    start: State = tuple(frozenset() for _ in machines)
    states: Table = {start: {0: (0, 0.0, None, None)}}
    for index, model in enumerate(sequence):
        following: Table = {}
        for state, by_loads in states.items():
            warm = any(model in loaded for loaded in state)
            for loads, (slow, _, path, _) in by_loads.items():
                if warm:
                    _keep(following, state, loads, (slow, 0.0, path, None))
                for i, machine in enumerate(machines):
                    if model not in machine.needs or model in state[i]:
                        continue
                    # A second copy while one is warm: the request is served by the warm one.
                    late = not warm and machine.load_s[model] > slow_load_s
                    for after in _room_for(machine, state[i], model):
                        step = (index, model, machine.name, tuple(sorted(state[i] - after)), late)
                        changed = (*state[:i], after, *state[i + 1 :])
                        value = (slow + late, 0.0, (path, step), None)
                        _keep(following, changed, loads + 1, value)
        states = {state: _pareto(by_loads) for state, by_loads in following.items()}
    return _best(states)


def _ranks_better(kept: dict[int, Entry], loads: int, entry: Entry) -> bool:
    """Whether ``entry`` beats the one kept at ``loads``: fewer slow, then less waiting."""
    return loads not in kept or kept[loads][:2] > entry[:2]


def _keep(table: Table, state: State, loads: int, entry: Entry) -> None:
    """Keep ``entry`` for ``state`` at ``loads`` if it ranks better than the one kept."""
    best = table.setdefault(state, {})
    if loads <= MAX_LOADS and _ranks_better(best, loads, entry):
        best[loads] = entry


def _best(states: Table) -> dict[int, tuple[int, list[Step]]]:
    """Over every final placement, the best entry per load count, on the frontier: slow
    requests and the schedule."""
    best: dict[int, Entry] = {}
    for by_loads in states.values():
        for loads, entry in by_loads.items():
            if _ranks_better(best, loads, entry):
                best[loads] = entry
    return {loads: (entry[0], _steps(entry[2])) for loads, entry in _pareto(best).items()}


def _room_for(machine: Machine, loaded: frozenset[str], model: str) -> list[frozenset[str]]:
    """Every set of models ``machine`` can hold after loading ``model``: some of those loaded,
    the others evicted."""
    kept = sorted(loaded)
    options = []
    for k in range(len(kept) + 1):
        for stay in itertools.combinations(kept, k):
            after = frozenset(stay) | {model}
            if machine.fits(after):
                options.append(after)
    return options


def _pareto(by_loads: dict[int, V]) -> dict[int, V]:
    """Only the load counts that buy fewer slow requests than every smaller count."""
    kept, least = {}, None
    for loads in sorted(by_loads):
        slow = by_loads[loads][0]
        if least is None or slow < least:
            kept[loads], least = by_loads[loads], slow
    return kept


def _steps(path: Path_) -> list[Step]:
    steps = []
    while path is not None:
        path, step = path
        steps.append(step)
    return steps[::-1]


@dataclass(frozen=True)
class Clock:
    """When each loaded copy is ready and its slots free, and each host's loader: what a real
    run adds to the search's relaxed model. A host loads one model at a time, a load waits for
    the requests on the models it evicts, and a request waits for its model's load and for a
    free slot (each reply of the mean length at the host's decode speed)."""

    ready: dict[tuple[str, str], float] = field(default_factory=dict)  # (host, model) -> when
    busy: dict[tuple[str, str], tuple[float, ...]] = field(default_factory=dict)  # slots free at
    loader_free: dict[str, float] = field(default_factory=dict)

    def serve(
        self,
        by_name: dict[str, Machine],
        at: float,
        model: str,
        load: tuple[str, tuple[str, ...]] | None,
    ) -> tuple[float, Clock]:
        """Seconds from ``at`` until the request starts, and the clock after it: with ``load``
        (host, evicted models) the request is routed there and its model loaded first, even
        when a copy is warm elsewhere; else it goes to the copy that starts it first."""
        ready, busy, loader_free = dict(self.ready), dict(self.busy), dict(self.loader_free)
        if load is not None:
            name, evicted = load
            begins = max(
                at,
                loader_free.get(name, 0.0),
                *(max(busy.pop((name, v), (0.0,))) for v in evicted),
            )
            for victim in evicted:
                ready.pop((name, victim), None)
            loader_free[name] = ready[name, model] = begins + by_name[name].load_s[model]
            busy[name, model] = (0.0,) * by_name[name].slots
            copies = [(name, model)]  # routed there: it waits for its load, even beside a warm copy
        else:  # to the copy that starts it first
            copies = [key for key in ready if key[1] == model]
        start, key = min((max(at, ready[k], min(busy[k])), k) for k in copies)
        slots = list(busy[key])
        slots[slots.index(min(slots))] = start + by_name[key[0]].reply_s[model]
        busy[key] = tuple(slots)
        return start - at, Clock(ready, busy, loader_free)

    def waits_for_busy(
        self, machine: Machine, loaded: frozenset[str], model: str, at: float
    ) -> bool:
        """Whether loading ``model`` on ``machine`` at ``at`` must evict a model busy then (a
        request in flight or its own load under way): the idle ones evicted do not make room."""
        idle = {
            m
            for m in loaded
            if max(self.busy[machine.name, m]) <= at and self.ready[machine.name, m] <= at
        }
        return not machine.fits(frozenset(loaded - idle) | {model})

    def ollama_victims(
        self, machine: Machine, loaded: frozenset[str], model: str, at: float
    ) -> tuple[str, ...]:
        """The models Ollama evicts on ``machine`` to load ``model`` there at ``at``: once the
        host's loader is free, the idle ones least recently used first (the keep-alive is the
        same for all) until it fits; when none is idle, the first to become so."""
        now = max(at, self.loader_free.get(machine.name, 0.0))
        left, evicted = set(loaded), []
        while not machine.fits(frozenset(left | {model})):
            free_at = {m: max(self.busy[machine.name, m]) for m in left}
            # A model never used since its load was last used then.
            used = {m: max(free_at[m], self.ready[machine.name, m]) for m in left}
            idle = [m for m in left if free_at[m] <= now]
            if not idle:
                now = min(free_at.values())
                continue
            victim = min(idle, key=lambda m: (used[m], m))
            left.discard(victim)
            evicted.append(victim)
        return tuple(sorted(evicted))


def frontier_with_waits(
    machines: Sequence[Machine],
    plan: Sequence[tuple[float, str]],
    line: float,
    margin: float,
    busy_last: bool = False,
) -> dict[int, tuple[int, list[Step]]]:
    """The same search on the Clock, where a load evicts what Ollama would (Clock.ollama_victims):
    the schedules of a router that only chooses hosts. For each number of loads, the fewest
    requests whose first token comes after ``line``, and a schedule that does it. A state
    keeps, per load count, only its best clock (fewest slow, then least waiting), so this
    finds a schedule, not always the best one: its counts bound the best from above, as the
    relaxed search's bound it from below. ``busy_last``: a load that must evict a busy model is
    tried only when the request has nowhere else to go (no warm copy, no other host where the
    idle models make room), as the issue's tiers rank such a load last."""
    by_name = {m.name: m for m in machines}
    start: State = tuple(frozenset() for _ in machines)
    states: Table = {start: {0: (0, 0.0, None, Clock())}}
    for index, (at, model) in enumerate(plan):
        following: Table = {}
        for state, by_loads in states.items():
            warm = any(model in loaded for loaded in state)
            for loads, (slow, waited, path, clock) in by_loads.items():
                assert clock is not None  # this search's entries all carry their clock
                if warm:
                    wait, after_clock = clock.serve(by_name, at, model, None)
                    late = wait + margin > line
                    value = (slow + late, waited + wait, path, after_clock)
                    _keep(following, state, loads, value)
                hosts = [
                    i
                    for i, machine in enumerate(machines)
                    if model in machine.needs and model not in state[i]
                ]
                if busy_last:
                    free = [
                        i
                        for i in hosts
                        if not clock.waits_for_busy(machines[i], state[i], model, at)
                    ]
                    hosts = free if free or warm else hosts
                for i in hosts:
                    machine = machines[i]
                    evicted = clock.ollama_victims(machine, state[i], model, at)
                    wait, after_clock = clock.serve(by_name, at, model, (machine.name, evicted))
                    late = wait + margin > line
                    step = (index, model, machine.name, evicted, late)
                    after = (state[i] - set(evicted)) | {model}
                    changed = (*state[:i], after, *state[i + 1 :])
                    value = (slow + late, waited + wait, (path, step), after_clock)
                    _keep(following, changed, loads + 1, value)
        states = {state: _pareto(by_loads) for state, by_loads in following.items()}
    return _best(states)


def bound(
    seed: int,
    level: str,
    requests: int,
    line: float,
    margin: float,
    budget: int,
    busy_last: bool = False,
) -> dict[str, Any]:
    plan = Workload(seed, requests, LEVELS[level]).plan()
    arrivals = [(at, model) for at, model, _ in plan]
    machines = bench_machines(sorted({model for _, model in arrivals}))
    relaxed = frontier(machines, [model for _, model in arrivals], line - margin)
    timed = frontier_with_waits(machines, arrivals, line, margin, busy_last)
    # The p95 of bench/routing.py is the sorted list's [int(0.95 n)]: this many may be slow.
    allowed = len(arrivals) - 1 - int(len(arrivals) * 0.95)
    return {
        "seed": seed,
        "level": level,
        "requests": len(arrivals),
        "line_s": round(line, 3),
        "loads_budget": budget,
        "slow_allowed": allowed,
        "busy_last": busy_last,
        "verdict": verdict(relaxed, timed, budget, allowed),
        "at_least": [{"loads": n, "slow": slow} for n, (slow, _) in relaxed.items()],
        "found": [
            {"loads": n, "slow": slow, "schedule": steps} for n, (slow, steps) in timed.items()
        ],
        "arrivals": [round(at, 2) for at, _ in arrivals],
    }


def verdict(
    relaxed: dict[int, tuple[int, list[Step]]],
    timed: dict[int, tuple[int, list[Step]]],
    budget: int,
    allowed: int,
) -> str:
    """Whether a p95 under the line with at most ``budget`` loads is "reachable" (a schedule
    with the waits does it), "impossible" (even relaxed, every schedule has more slow
    requests than ``allowed``) or "open" (between the two)."""

    def least(points: dict[int, tuple[int, list[Step]]]) -> float:
        return min((slow for n, (slow, _) in points.items() if n <= budget), default=math.inf)

    if least(timed) <= allowed:
        return "reachable"
    if least(relaxed) > allowed:
        return "impossible"
    return "open"


def report(result: dict[str, Any]) -> None:
    budget = result["loads_budget"]
    print(
        f"seed {result['seed']}, {result['level']} level, {result['requests']} requests: "
        f"p95 under {result['line_s']} s with at most {budget} loads is {result['verdict']} "
        f"({result['slow_allowed']} requests may be slow)"
    )
    print("  relaxed (a lower bound): " + _points(result["at_least"]))
    tiers = ", busy models evicted last" if result["busy_last"] else ""
    print(f"  with the waits{tiers} (found):  " + _points(result["found"]))
    within = [p for p in result["found"] if p["loads"] <= budget]
    if not within:
        print(f"  no schedule found with {budget} loads or fewer")
        return
    best = within[-1]
    print(f"  a schedule with the waits, {best['loads']} loads, {best['slow']} slow:")
    for index, model, machine, evicted, late in best["schedule"]:
        at = result["arrivals"][index]
        away = f", evicting {', '.join(evicted)}" if evicted else ""
        print(f"    {at:7.2f} s  {model} on {machine}{away}{'  (slow)' if late else ''}")


def _points(points: list[dict[str, Any]]) -> str:
    return ", ".join(f"{p['loads']} loads -> {p['slow']} slow" for p in points)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--seeds", default="", help="comma-separated workload seeds (default 7)")
    parser.add_argument(
        "--level", default="middle", choices=list(LEVELS), help="the arrival rate's level"
    )
    parser.add_argument("--requests", type=int, default=120, help="requests per sequence")
    parser.add_argument(
        "--line", type=float, default=DEFAULT_LINE_S, help="first-token seconds counted slow"
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN_S,
        help="seconds from a load's end to the first token",
    )
    parser.add_argument(
        "--loads",
        type=int,
        default=DEFAULT_LOADS,
        help="the most loads a schedule may make (the issue: 3x fewer than random)",
    )
    parser.add_argument(
        "--against",
        type=Path,
        default=None,
        help="a bench/routing.py JSON with random's runs: each seed's line is half random's "
        "p95 and its load budget a third of random's loads there (the issue's targets), "
        "instead of --line and --loads; --seeds defaults to its seeds",
    )
    parser.add_argument(
        "--busy-last",
        action="store_true",
        help="with the waits, a load may evict a busy model only when nothing else can take "
        "the request (no warm copy, no host with room once its idle models go): the issue's "
        "tier order",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=Path("bench/results/routing_bound.json"),
        help="where the bounds and the schedules found go",
    )
    args = parser.parse_args()
    targets = random_targets(args.against, args.level) if args.against else {}
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else sorted(targets) or [7]
    results = []
    for seed in seeds:
        line, budget = targets.get(seed, (args.line, args.loads))
        result = bound(seed, args.level, args.requests, line, args.margin, budget, args.busy_last)
        report(result)
        results.append(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"margin_s": args.margin, "against": str(args.against or ""), "results": results}
        args.json.write_text(json.dumps(payload, indent=1) + "\n")


def random_targets(path: Path, level: str) -> dict[int, tuple[float, int]]:
    """Per seed in a bench/routing.py JSON, the issue's targets against its random run at
    ``level``: (half its p95 time to first token, a third of its loads)."""
    runs = json.loads(path.read_text())["results"]
    return {
        run["seed"]: (run["ttft_s"]["p95"] / P95_TARGET, int(run["loads"] / LOADS_TARGET))
        for run in runs
        if run["policy"] == "random" and run["level"] == level
    }


if __name__ == "__main__":
    main()
