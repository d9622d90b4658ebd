"""The router's bounded ranking (hosts visited in floor order, stopping early) must give exactly
the answer of ranking every host. Random fleets and random histories of picks (some routing
loads that evict), reports with learned speeds and reply lengths, new snapshots, reconnects,
forgotten hosts, forgotten loads and policy changes; after each step both rankings are compared
for many requests, some asking for short replies or embeddings (which floors, taken for
requests with no limit, bound only in part; a model that only embeds has its floors taken so).
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane import router as router_module
from controlplane.candidates import Candidates
from controlplane.fleet import Node, model_key
from controlplane.learning import Learned
from controlplane.model import ApiKind, GenerationStats, Outcome, Report, RouteRequest
from controlplane.policies import REGISTRY, Candidate
from controlplane.router import PickOutcome, Router
from hopscommon.fleet import Capacity, Gpu, Hello, InstalledModel, LoadedModel, Snapshot
from tests.controlplane import builders

GIB = 1024**3
# copy:3b is `ollama cp small:3b copy:3b`: the same digest, so served by small:3b's instance;
# bot:3b and long:3b are made FROM small:3b (the same weights, so runner), long:3b with a
# PARAMETER num_ctx of its own
# embed:1b only embeds where its host lists capabilities (Ollama 0.30 on); an older one's
# lists none, and there it is taken for a generation model
MODELS = [
    *["tiny:1b", "small:3b", "copy:3b", "bot:3b", "long:3b", "mid:8b", "big:32b", "huge:70b"],
    "embed:1b",
]
SIZES = {
    **{"tiny:1b": 1, "small:3b": 2, "copy:3b": 2, "bot:3b": 2, "long:3b": 2},
    **{"mid:8b": 5, "big:32b": 19, "huge:70b": 40, "embed:1b": 1},
}
DIGESTS = {m: "small:3b" if m == "copy:3b" else m for m in MODELS}
RUNNERS = {"small:3b": "r3", "copy:3b": "r3", "bot:3b": "r3", "long:3b": "r3"}


def _hello(rng: random.Random, node_id: str) -> Hello:
    return Hello(
        node_id=node_id,
        ollama_url=f"http://{node_id}.test:11434",
        labels=(("zone", rng.choice(["eu", "us"])),),
        capacity=Capacity(
            num_parallel=rng.choice([1, 2, 4]),
            max_in_flight=rng.choice([0, 0, 2, 5]),
            max_loaded_models=rng.choice([0, 1, 3]),
        ),
        instance_id=node_id,
        hostname=node_id,
        weight=rng.choice([0.5, 1.0, 1.0, 2.0]),
    )


def _snapshot(rng: random.Random, sequence: int) -> Snapshot:
    installed = rng.sample(MODELS, rng.randint(1, len(MODELS)))
    listed = rng.random() < 0.7  # this host's Ollama lists capabilities
    loaded = rng.sample(installed, rng.randint(0, min(2, len(installed))))
    vram = rng.choice([0, 8, 12, 24, 48]) * GIB
    used = sum(SIZES[m] for m in loaded) * GIB
    return Snapshot(
        sequence=sequence,
        ollama_healthy=rng.random() < 0.9,
        installed=tuple(
            InstalledModel(
                name=m,
                size_bytes=SIZES[m] * GIB,
                digest=DIGESTS[m],
                runner_id=RUNNERS.get(m, ""),
                num_ctx=8192 if m == "long:3b" else 0,
                capabilities=(("embedding",) if m == "embed:1b" else ("completion",))
                if listed
                else (),
            )
            for m in installed
        ),
        loaded=tuple(
            LoadedModel(
                name=m,
                size_bytes=SIZES[m] * GIB,
                size_vram_bytes=SIZES[m] * GIB if vram else 0,
                digest=DIGESTS[m],
            )
            for m in loaded
        ),
        gpus=(Gpu(0, "GPU", "", vram, max(vram - used, 0)),) if vram else (),
        system_memory_total_bytes=64 * GIB,
        system_memory_free_bytes=rng.choice([8, 32, 60]) * GIB,
    )


def _reloaded(rng: random.Random, old: Snapshot, sequence: int) -> Snapshot:
    """``old`` with other models loaded and other free memory: installed (the same tuple, as
    the control plane reuses it) and memory sizes unchanged."""
    names = [m.name for m in old.installed]
    loaded = rng.sample(names, rng.randint(0, min(2, len(names))))
    gpus = tuple(replace(g, free_bytes=rng.randint(0, g.total_bytes)) for g in old.gpus)
    return replace(
        old,
        sequence=sequence,
        loaded=tuple(
            LoadedModel(
                name=m,
                size_bytes=SIZES[m] * GIB,
                size_vram_bytes=SIZES[m] * GIB,
                digest=DIGESTS[m],
            )
            for m in loaded
        ),
        gpus=gpus,
        system_memory_free_bytes=rng.choice([8, 32, 60]) * GIB,
    )


def _request(rng: random.Random) -> RouteRequest:
    return RouteRequest(
        model=rng.choice([*MODELS, "absent:1b"]),
        # an embedding, of any model, decodes one step (a reply limit of its own)
        api=rng.choice([ApiKind.CHAT, ApiKind.CHAT, ApiKind.GENERATE, ApiKind.EMBED]),
        edge_id="edge",
        session_key=rng.choice(["", "", "s1", "s2"]),
        exclude=frozenset(rng.sample([f"n{i}" for i in range(12)], rng.randint(0, 2))),
        label_selector=rng.choice([(), (), (("zone", "eu"),)]),
        max_candidates=rng.choice([0, 1, 2, 5]),
        num_ctx=rng.choice([0, 0, 0, 2048, 8192]),
        max_reply=rng.choice([0, 0, 1, 40, 150, 400, 4096]),  # a short one costs less
    )


def _same(router: Router, request: RouteRequest, later: float) -> None:
    """Both rankings at one instant, ``later`` seconds from now: a load under way costs what is
    left of it, so the clock must not move between them (and moving it on tries the countdown)."""
    key = model_key(request.model)
    limit = request.max_candidates or router.max_candidates
    policy = router.policy
    with mock.patch.object(router_module.time, "monotonic", return_value=time.monotonic() + later):
        full = router._rank_all(request, key, limit, request.context)
        bounded = router._rank_bounded(request, key, limit, policy, request.context)  # type: ignore[arg-type]
    if isinstance(full, PickOutcome):
        assert isinstance(bounded, PickOutcome), (full, bounded)
        assert (bounded.status, bounded.message) == (full.status, full.message)
    else:
        assert bounded == full, request


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_bounded_ranking_equals_ranking_every_host(seed: int) -> None:
    rng = random.Random(seed)
    fleet = builders.fleet()
    router = builders.router(fleet, "memory_aware")
    sequence = 0
    nodes = [f"n{i}" for i in range(rng.randint(1, 12))]
    for node_id in nodes:
        node, _ = fleet.attach(_hello(rng, node_id), object())
        sequence += 1
        fleet.update(node_id, node.session, _snapshot(rng, sequence))
    leases: list[tuple[str, str]] = []
    for _ in range(40):
        for _ in range(4):
            _same(router, _request(rng), rng.choice([0.0, 1.0, 4.0, 30.0]))
        step = rng.random()
        if step < 0.45:  # a real pick: opens a lease, may mark a load, remembers the session
            outcome = router.pick(_request(rng))
            if outcome.lease_id:
                leases.append((outcome.lease_id, outcome.ranked[0].candidate.node_id))
        elif step < 0.7 and leases:  # a report, often teaching a speed
            lease_id, node_id = leases.pop(rng.randrange(len(leases)))
            stats = GenerationStats(
                eval_count=rng.randint(1, 500),
                eval_duration_ns=rng.randint(10**8, 10**10),
                load_duration_ns=rng.choice([0, rng.randint(10**8, 10**10)]),
            )
            outcome_kind = rng.choice([Outcome.OK, Outcome.OK, Outcome.UPSTREAM_ERROR])
            router.report(Report(lease_id, node_id, outcome_kind, stats=stats))
        elif step < 0.78:  # a host's state changed
            node = fleet.nodes.get(rng.choice(nodes))
            if node is not None and node.session is not None:
                sequence += 1
                fleet.update(node.node_id, node.session, _snapshot(rng, sequence))
        elif step < 0.85:  # the usual snapshot: the same models installed, others loaded
            node = fleet.nodes.get(rng.choice(nodes))
            if node is not None and node.session is not None:
                sequence += 1
                fleet.update(node.node_id, node.session, _reloaded(rng, node.snapshot, sequence))
        elif step < 0.92:  # an agent reconnects with another hello, or leaves
            node_id = rng.choice(nodes)
            node = fleet.nodes.get(node_id)
            if node is not None and node.session is not None and rng.random() < 0.5:
                fleet.detach(node_id, node.session)
            else:
                node, _ = fleet.attach(_hello(rng, node_id), object())
                sequence += 1
                fleet.update(node_id, node.session, _snapshot(rng, sequence))
        elif step < 0.94:  # offline hosts forgotten
            fleet.forget_after = 0.0
            fleet.forget_offline()
            fleet.forget_after = 300.0
        elif step < 0.96:  # routed loads time out unseen: their marked evictions are undone
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(router_module, "LOADING_TTL_S", -1.0)
                router.sweep(lease_ttl=3600.0)
        else:  # the admin switches policy and back: the index is rebuilt
            router.policy = REGISTRY["least_busy"](1)
            router.pick(_request(rng))
            router.policy = REGISTRY["memory_aware"](1)


def test_a_load_whose_eviction_mark_a_snapshot_settles_gets_its_lower_floor() -> None:
    """x is loaded and idle where y does not fit beside it. A load of y marks x for eviction;
    a request for x then loads it again there (y, still loading, must go). While x is marked,
    its floor is a whole load. Once a snapshot lists y and not x, y's load is done, x's mark
    goes and x is a load under way: its floor falls to that tier, and the index must follow
    (a floor above the cost hides the host from the bounded ranking)."""
    fleet = builders.fleet()
    builders.add_node(fleet, "a", models=["x:latest", "y:latest"], loaded=["x:latest"], vram_gb=3)
    node = fleet.nodes["a"]
    little_free = (Gpu(0, "GPU", "", 3 * GIB, 1 * GIB),)
    fleet.update("a", node.session, replace(node.snapshot, sequence=2, gpus=little_free))
    router = builders.router(fleet, "memory_aware")
    assert router.pick(RouteRequest(model="y", edge_id="e")).ranked[0].reason == "cold-evict-idle"
    assert router.pick(RouteRequest(model="x", edge_id="e")).ranked[0].reason == "cold-evict-busy"
    assert node.evicting == {"x:latest": "y:latest", "y:latest": "x:latest"}
    router.floors.refresh_all(router.policy)
    listed = (LoadedModel(name="y:latest", size_vram_bytes=2 * GIB),)
    fleet.update("a", node.session, replace(node.snapshot, sequence=3, loaded=listed))
    assert list(node.loading) == ["x:latest"] and "x:latest" not in node.evicting
    router.floors.refresh_all(router.policy)
    fresh = router.policy.floor(router.candidates.plain(node, "x:latest"))  # type: ignore[attr-defined]
    assert router.floors.by_key["x:latest"] == [(fresh, "a")]
    _same(router, RouteRequest(model="x", edge_id="e"), 0.0)


def _counting_builds(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The node ids of the candidate records built from now on, in order."""
    built: list[str] = []
    build = Candidates.build

    def counting(self: Candidates, node: Node, key: str, affinity: str, *rest: Any) -> Candidate:
        built.append(node.node_id)
        return build(self, node, key, affinity, *rest)

    monkeypatch.setattr(Candidates, "build", counting)
    return built


def test_a_big_fleet_builds_candidates_only_for_the_hosts_that_could_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fleet = builders.fleet()
    models = [f"model-{m}:latest" for m in range(20)]
    for n in range(100):
        builders.add_node(
            fleet, f"node-{n:03d}", models, loaded=[models[n % 20], models[(n + 1) % 20]]
        )
    router = builders.router(fleet, "memory_aware")
    built = _counting_builds(monkeypatch)
    router.pick(RouteRequest(model="model-5", edge_id="e"))  # builds the floor index
    built.clear()
    outcome = router.pick(RouteRequest(model="model-7", edge_id="e", max_candidates=3))
    # Ten hosts have model-7 loaded and idle; the ninety others would cold-load it.
    assert all(r.reason == "warm" for r in outcome.ranked)
    assert len(outcome.ranked) == 3
    assert len(built) <= 4, built
    router.policy = REGISTRY["least_busy"](1)  # a policy without floors visits every host
    built.clear()
    router.pick(RouteRequest(model="model-7", edge_id="e"))
    assert len(built) == 100


def test_hosts_that_must_load_the_model_are_not_visited_when_warm_hosts_serve_sooner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A host with the model neither loaded nor loading costs at least a whole load: its floor
    says so, so a pick the warm hosts answer sooner visits none of them, even when they decode
    faster than the warm hosts (whose reply takes 4 s here, against 2.5 s plus a load)."""
    fleet = builders.fleet()
    for n in range(100):
        builders.add_node(fleet, f"node-{n:03d}", ["m:latest"], loaded=["m"] if n < 5 else [])
    router = builders.router(fleet, "memory_aware")
    for n in range(100):
        tps = 50.0 if n < 5 else 80.0
        router.learning.learned[(f"node-{n:03d}", "m:latest")] = Learned(
            decode_tps=tps, load_seconds=1.5
        )
    built = _counting_builds(monkeypatch)
    first = router.pick(RouteRequest(model="m", edge_id="e"))  # builds the floor index
    fleet.leases.close(first.lease_id)
    built.clear()
    outcome = router.pick(RouteRequest(model="m", edge_id="e", max_candidates=3))
    assert [r.reason for r in outcome.ranked] == ["warm"] * 3
    assert len(built) <= 5, built  # the five warm hosts at most


def test_embeds_of_a_model_that_only_embeds_visit_no_more_hosts_than_other_picks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An embedding counts one decoding step, as a reply limit of its own; but a model that
    only embeds has its floors taken at that step already, so they bound its embeds whole
    (scaled as a generation model's would be, they would let every cold host through)."""
    fleet = builders.fleet()
    only = (InstalledModel(name="e:latest", size_bytes=2 * GIB, capabilities=("embedding",)),)
    for n in range(100):
        node = builders.add_node(
            fleet, f"node-{n:03d}", ["e:latest"], loaded=["e"] if n < 5 else []
        )
        fleet.update(node.node_id, node.session, replace(node.snapshot, sequence=2, installed=only))
    router = builders.router(fleet, "memory_aware")
    built = _counting_builds(monkeypatch)
    embed = RouteRequest(model="e", edge_id="e", api=ApiKind.EMBED, max_candidates=3)
    first = router.pick(embed)  # builds the floor index
    fleet.leases.close(first.lease_id)
    built.clear()
    outcome = router.pick(embed)
    assert [r.reason for r in outcome.ranked] == ["warm"] * 3
    assert len(built) <= 5, built  # the five warm hosts at most


def test_a_pick_asking_a_short_reply_visits_no_host_whose_load_alone_costs_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply limit (num_predict 1; an embed of a generation model, one decoding step)
    shrinks a floor's decoding, not its wait: a cold host's load still bounds it, so such a
    pick builds candidates for the warm hosts only, as an unlimited one does."""
    fleet = builders.fleet()
    for n in range(100):
        warm = ["g"] if n < 5 else []
        builders.add_node(fleet, f"node-{n:03d}", ["g:latest"], loaded=warm)
    router = builders.router(fleet, "memory_aware")
    built = _counting_builds(monkeypatch)
    fleet.leases.close(router.pick(RouteRequest(model="g", edge_id="e")).lease_id)  # the index
    for short in (
        RouteRequest(model="g", edge_id="e", max_candidates=3, max_reply=1),
        RouteRequest(model="g", edge_id="e", max_candidates=3, api=ApiKind.EMBED),
    ):
        built.clear()
        outcome = router.pick(short)
        fleet.leases.close(outcome.lease_id)
        assert [r.reason for r in outcome.ranked] == ["warm"] * 3
        assert len(built) <= 5, built  # the five warm hosts at most
