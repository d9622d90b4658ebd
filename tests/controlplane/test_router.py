from dataclasses import replace

import pytest
from hops.v1 import router_pb2

from controlplane import convert
from controlplane.breaker import BreakerState
from controlplane.errors import InvalidRequest
from controlplane.fleet import Fleet
from controlplane.learning import Learned
from controlplane.model import ApiKind, GenerationStats, Outcome, Report, RouteRequest
from controlplane.router import PickStatus, Router
from hopscommon.fleet import Details, Gpu, InstalledModel, LoadedModel
from hopscommon.runner_options import runner_options
from tests.controlplane import builders


def _req(model: str = "llama3.2", **kw: object) -> RouteRequest:
    return RouteRequest(model=model, edge_id="edge-1", **kw)  # type: ignore[arg-type]


def test_unknown_model_and_names_are_normalised() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a", models=["llama3.2:latest"])
    router = builders.router(fleet)
    assert router.pick(_req("ghost")).status is PickStatus.MODEL_NOT_FOUND
    outcome = router.pick(_req("LLAMA3.2"))
    assert outcome.status is PickStatus.OK and outcome.lease_id
    assert fleet.leases.in_flight("a", "llama3.2:latest") == 1


def test_filters_unhealthy_cordoned_excluded_and_labels() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "sick", healthy=False)
    builders.add_node(fleet, "cordoned").cordoned = True
    builders.add_node(fleet, "us", labels={"zone": "us"})
    builders.add_node(fleet, "eu", labels={"zone": "eu-west"})
    router = builders.router(fleet)
    picked = router.pick(_req(exclude=frozenset({"us"})))
    assert [r.candidate.node_id for r in picked.ranked] == ["eu"]
    # exact label matching: "eu" is not a prefix match for "eu-west"
    none = router.pick(_req(label_selector=(("zone", "eu"),)))
    assert none.status is PickStatus.MODEL_NOT_FOUND
    only = router.pick(_req(label_selector=(("zone", "eu-west"),)))
    assert [r.candidate.node_id for r in only.ranked] == ["eu"]


def test_labels_no_host_carries_are_not_found_not_a_wait() -> None:
    """A selector no host with the model carries is an answer for good (404), not a 503 that
    tells the client to try again; a carrier that is down for now is the usual 503."""
    fleet = builders.fleet()
    builders.add_node(fleet, "eu", labels={"zone": "eu"}, healthy=False)
    builders.add_node(fleet, "us", labels={"zone": "us", "tier": "big"})
    builders.add_node(fleet, "other", models=["qwen2.5:7b"], labels={"zone": "asia"})
    router = builders.router(fleet)
    gone = router.pick(_req(label_selector=(("zone", "asia"),)))
    assert gone.status is PickStatus.MODEL_NOT_FOUND
    assert gone.message == "model 'llama3.2' is on no host with the labels zone=asia"
    both = router.pick(_req(label_selector=(("tier", "big"), ("zone", "eu"))))
    assert both.status is PickStatus.MODEL_NOT_FOUND  # every label must match, on one host
    down = router.pick(_req(label_selector=(("zone", "eu"),)))
    assert down.status is PickStatus.NO_HEALTHY_NODE and down.retry_after_s > 0
    named = router.pick(_req(node_id="us", label_selector=(("zone", "eu"),)))
    assert named.status is PickStatus.NODE_NOT_FOUND
    assert named.message == "node 'us' does not carry the labels zone=eu"
    pull = router.pick(_req("qwen2.5:7b", api=ApiKind.PULL, label_selector=(("zone", "us"),)))
    assert [r.candidate.node_id for r in pull.ranked] == ["us"]  # a pull goes to any carrier
    assert router.pick(_req("ghost", label_selector=(("zone", "us"),))).message == (
        "model 'ghost' is not on any host"
    )
    assert fleet.leases.in_flight("us") == 1  # only the pull took a lease


def test_a_pick_with_too_many_labels_is_refused() -> None:
    msg = router_pb2.PickRequest(model="m", api=router_pb2.API_KIND_CHAT)
    msg.label_selector.update({f"k{i}": "v" for i in range(65)})
    with pytest.raises(InvalidRequest, match="at most 64 labels"):
        convert.route_request(msg)
    del msg.label_selector["k0"]
    assert len(convert.route_request(msg).label_selector) == 64


def test_saturated_when_every_holder_is_at_its_cap() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a", max_in_flight=1)
    router = builders.router(fleet)
    assert router.pick(_req()).status is PickStatus.OK
    assert router.pick(_req()).status is PickStatus.SATURATED
    # A show takes none of Ollama's slots: it is routed at the cap, and says it loads nothing.
    shown = router.pick(_req(api=ApiKind.SHOW))
    assert shown.status is PickStatus.OK and shown.ranked[0].reason == "no-load"


def test_report_closes_or_moves_the_lease() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a")
    builders.add_node(fleet, "b")
    router = builders.router(fleet)
    outcome = router.pick(_req())
    first = outcome.ranked[0].candidate.node_id
    second = outcome.ranked[1].candidate.node_id
    assert router.report(
        Report(outcome.lease_id, first, Outcome.CONNECT_ERROR, retry_node_id=second)
    )
    assert (fleet.leases.in_flight(first), fleet.leases.in_flight(second)) == (0, 1)
    stats = GenerationStats(
        eval_count=100, eval_duration_ns=2_000_000_000, load_duration_ns=3_000_000_000
    )
    assert router.report(Report(outcome.lease_id, second, Outcome.OK, stats=stats))
    assert len(fleet.leases) == 0
    learned = router.learning.learned[(second, "llama3.2:latest")]
    # The fallback was not routed as a load of its own: its load_duration may hold a wait.
    assert (learned.decode_tps, learned.load_seconds) == (50.0, 0.0)
    assert not router.report(Report(outcome.lease_id, second, Outcome.OK))  # already closed


BAD_OPTION = 'option "temperature" must be of type float32'


def _first_fails(router: Router, error: str = BAD_OPTION) -> tuple[str, str, str]:
    """A pick whose first host answers 500 with ``error``, the edge trying the second next;
    returns (lease, first host, second host)."""
    picked = router.pick(_req())
    first, second = (r.candidate.node_id for r in picked.ranked[:2])
    failed = Report(
        picked.lease_id,
        first,
        Outcome.UPSTREAM_ERROR,
        http_status=500,
        retry_node_id=second,
        error=error,
    )
    router.report(failed)
    return picked.lease_id, first, second


def _failed_then(router: Router, then: Outcome, error: str) -> tuple[str, str]:
    """_first_fails with BAD_OPTION, and the retry ends ``then`` with ``error``; returns (first
    host, second host)."""
    lease, first, second = _first_fails(router)
    status = 500 if then is Outcome.UPSTREAM_ERROR else 200
    router.report(Report(lease, second, then, http_status=status, error=error))
    return first, second


def test_the_same_500_from_two_hosts_is_the_requests_fault_and_fails_neither() -> None:
    fleet = builders.fleet()
    for node_id in "abc":
        builders.add_node(fleet, node_id)
    router = builders.router(fleet)
    for _ in range(5):  # past the breaker's threshold (3) on every host
        _failed_then(router, Outcome.UPSTREAM_ERROR, BAD_OPTION)
    assert [n.breaker.consecutive_failures for n in fleet.nodes.values()] == [0, 0, 0]
    assert all(n.breaker.state is BreakerState.CLOSED for n in fleet.nodes.values())
    assert len(fleet.leases) == 0
    assert router.pick(_req()).status is PickStatus.OK


def test_a_500_the_next_host_does_not_repeat_is_the_first_hosts() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a")
    builders.add_node(fleet, "b")
    router = builders.router(fleet)
    lease, first, second = _first_fails(
        router, "llama runner process has terminated: exit status 2"
    )
    assert fleet.nodes[first].breaker.consecutive_failures == 0  # held for the next attempt
    router.report(Report(lease, second, Outcome.OK, http_status=200))
    breaker = fleet.nodes[first].breaker
    assert breaker.consecutive_failures == 1
    assert breaker.last_failure == "http 500: llama runner process has terminated: exit status 2"
    assert fleet.nodes[second].breaker.consecutive_failures == 0

    # Another text from the next host: each host failed on its own.
    first, second = _failed_then(router, Outcome.UPSTREAM_ERROR, "out of memory")
    assert fleet.nodes[first].breaker.last_failure == f"http 500: {BAD_OPTION}"
    assert fleet.nodes[second].breaker.last_failure == "http 500: out of memory"


def test_a_held_500_counts_when_its_lease_ends_without_another_attempt() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a")
    builders.add_node(fleet, "b")
    router = builders.router(fleet)
    _, first, second = _first_fails(router)
    assert router.release_edge("edge-1") == 1  # the edge went before the retry answered
    assert fleet.nodes[first].breaker.consecutive_failures == 1
    assert fleet.nodes[second].breaker.consecutive_failures == 0


RUNNER_DIED = "llama runner process has terminated: exit status 2"


def test_a_request_failing_alike_on_another_host_later_is_its_own_fault() -> None:
    """A prompt that crashes the runner mid-reply, sent again by its client: no retry is
    possible once the reply began, but the second host it fails on alike (the same digest,
    status and text) is not failed; the first pays for it, and a host failing the same request
    again counts, as a host failing everything would."""
    fleet = builders.fleet()
    builders.add_node(fleet, "a")
    builders.add_node(fleet, "b")
    router = builders.router(fleet)

    def crash(node_id: str, digest: str = "d1") -> None:
        picked = router.pick(_req(node_id=node_id))
        router.report(
            Report(
                picked.lease_id,
                node_id,
                Outcome.UPSTREAM_ERROR,
                http_status=200,
                error=RUNNER_DIED,
                request_digest=digest,
            )
        )

    def failures() -> tuple[int, int]:
        a, b = fleet.nodes["a"].breaker, fleet.nodes["b"].breaker
        return a.consecutive_failures, b.consecutive_failures

    crash("a")
    assert failures() == (1, 0)
    crash("b")  # the same request, failing alike elsewhere
    assert failures() == (1, 0)
    crash("a")  # again on the first: it counts there
    assert failures() == (2, 0)
    crash("b", digest="d2")  # another request: b's own failure
    assert failures() == (2, 1)
    assert fleet.nodes["b"].breaker.last_failure == f"failed mid-stream (http 200): {RUNNER_DIED}"


def test_a_reports_error_text_and_request_error_outcome_come_off_the_wire() -> None:
    wire = router_pb2.ReportRequest(
        lease_id="l-1",
        node_id="a",
        outcome=router_pb2.OUTCOME_REQUEST_ERROR,
        http_status=500,
        error="x" * 10_000,  # an edge (or a rogue peer) sending more than the bound
        request_digest="d" * 10_000,
    )
    report = convert.report(wire)
    assert report.outcome is Outcome.REQUEST_ERROR and not report.outcome.is_host_failure
    assert report.error == "x" * convert.MAX_ERROR_TEXT
    assert report.request_digest == "d" * convert.MAX_DIGEST


def test_an_outcome_from_a_newer_edge_ends_the_lease_and_blames_no_host() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a", max_in_flight=1)
    router = builders.router(fleet)
    picked = router.pick(_req())
    newer = router_pb2.ReportRequest(lease_id=picked.lease_id, node_id="a", outcome=42)  # type: ignore[arg-type]
    report = convert.report(newer)
    assert report.outcome is Outcome.UNSPECIFIED
    assert router.report(report)
    # The host's one slot is free at once, not after the lease's TTL; its breaker saw nothing.
    assert fleet.leases.get(picked.lease_id) is None
    assert router.pick(_req()).status is PickStatus.OK
    assert fleet.nodes["a"].breaker.consecutive_failures == 0


def test_a_500_with_no_other_host_to_try_counts_at_once() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a")
    router = builders.router(fleet)
    picked = router.pick(_req())
    router.report(
        Report(picked.lease_id, "a", Outcome.UPSTREAM_ERROR, http_status=500, error=BAD_OPTION)
    )
    assert fleet.nodes["a"].breaker.consecutive_failures == 1
    # What the edge knows for the request's own fault fails no host, retried or not.
    picked = router.pick(_req())
    router.report(
        Report(picked.lease_id, "a", Outcome.REQUEST_ERROR, http_status=500, error=BAD_OPTION)
    )
    assert fleet.nodes["a"].breaker.consecutive_failures == 1


def test_only_a_load_that_started_at_once_teaches_the_load_time() -> None:
    # Ollama's load_duration runs from the request's arrival until its model is ready: a
    # request that came while the model was loading, or behind another load, reports a wait.
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["a:latest", "b:latest"])
    router = builders.router(fleet, "memory_aware")

    def report(lease_id: str, load_s: float) -> None:
        stats = GenerationStats(load_duration_ns=int(load_s * 1e9), eval_count=1)
        assert router.report(Report(lease_id, "n", Outcome.OK, stats=stats))

    loads_a = router.pick(_req("a"))
    joins_a = router.pick(_req("a"))  # while a loads: gets the rest of its load
    behind_a = router.pick(_req("b"))  # Ollama loads b after a
    assert [o.ranked[0].reason for o in (loads_a, joins_a, behind_a)] == [
        "cold-fit",
        "loading",
        "cold-fit",
    ]
    report(joins_a.lease_id, 0.5)
    report(behind_a.lease_id, 5.0)
    assert router.learning.learned[("n", "a:latest")].load_seconds == 0.0
    assert router.learning.learned[("n", "b:latest")].load_seconds == 0.0
    report(loads_a.lease_id, 2.0)
    assert router.learning.learned[("n", "a:latest")].load_seconds == 2.0


def test_a_reply_timed_by_the_edge_teaches_speeds_but_no_context_length() -> None:
    """OpenAI-compatible streams carry none of Ollama's durations: the edge's time to the first
    token stands for the load (when the pick started one at once), its time from there to the
    last for decoding. It cannot tell a load from a slow prompt, so no automatic length."""
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["a:latest"])
    router = builders.router(fleet, "memory_aware")
    loads = router.pick(_req("a"))
    joins = router.pick(_req("a"))  # came while a loads: its first token waited for the rest
    timed = GenerationStats(eval_count=80, eval_duration_ns=2 * 10**9, first_token_ns=3 * 10**9)
    assert router.report(Report(joins.lease_id, "n", Outcome.OK, http_status=200, stats=timed))
    assert router.learning.learned[("n", "a:latest")].load_seconds == 0.0
    assert router.report(Report(loads.lease_id, "n", Outcome.OK, http_status=200, stats=timed))
    learned = router.learning.learned[("n", "a:latest")]
    assert (learned.load_seconds, learned.decode_tps) == (3.0, 40.0)

    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 4096)
    router = builders.router(fleet, "memory_aware")
    warm = router.pick(_req(node_id="a"))
    quick = GenerationStats(eval_count=5, eval_duration_ns=10**8, first_token_ns=4 * 10**7)
    router.report(Report(warm.lease_id, "a", Outcome.OK, http_status=200, stats=quick))
    assert fleet.nodes["a"].auto_context == {}  # Ollama's own durations would have taught 4096


def test_a_reply_timed_whole_by_the_edge_teaches_what_its_route_lets_it() -> None:
    """A non-streamed OpenAI-compatible reply: its first byte is its last, so the edge has only
    its whole time. From an instance ready with a free slot that time is decoding; from a load
    started at once, the load once the decode speed there is known; queued, only its length."""
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["a:latest"], loaded=["a:latest"])
    router = builders.router(fleet, "memory_aware")
    whole = GenerationStats(eval_count=80, reply_ns=2 * 10**9)

    def report(lease_id: str, stats: GenerationStats = whole) -> None:
        assert router.report(Report(lease_id, "n", Outcome.OK, http_status=200, stats=stats))

    ready, queued = router.pick(_req("a")), router.pick(_req("a"))  # one slot: the second waits
    assert ready.ranked[0].reason == "warm"
    assert queued.ranked[0].reason.startswith("queued")
    report(queued.lease_id, replace(whole, reply_ns=9 * 10**9))
    assert router.learning.learned[("n", "a:latest")].decode_tps == 0.0  # its time holds the wait
    assert router.learning.tokens["a:latest"][1] == 80  # its length still counts
    report(ready.lease_id)
    assert router.learning.learned[("n", "a:latest")].decode_tps == 40.0

    # 5 s in all: with 80 tokens at 40 tokens/s decoding, 3 s to the first token.
    for decode_tps, load_s in ((0.0, 0.0), (40.0, 3.0)):
        fleet = builders.fleet()
        builders.add_node(fleet, "n", models=["a:latest"])
        router = builders.router(fleet, "memory_aware")
        if decode_tps:
            router.learning.learned[("n", "a:latest")] = Learned(decode_tps=decode_tps)
        cold = router.pick(_req("a"))
        assert cold.ranked[0].reason == "cold-fit"
        report(cold.lease_id, replace(whole, reply_ns=5 * 10**9))
        assert router.learning.learned[("n", "a:latest")].load_seconds == load_s


def test_an_edge_timed_reply_sets_its_prompts_evaluation_apart() -> None:
    """A whole reply's time (and a stream's time to its first token) holds its prompt's
    evaluation: a document-sized prompt took most of it, and taken as decoding (or as the load)
    it made the host look several times slower than it is. Less the prompt at the prompt speed
    measured there, the rest is learned; at the cautious prior speed, a reply whose prompt may
    have taken much of it teaches only its length."""
    whole = GenerationStats(eval_count=80, reply_ns=5 * 10**9)

    def warm(prompt_tps: float, prompt_tokens: int) -> Learned:
        fleet = builders.fleet()
        builders.add_node(fleet, "n", models=["a:latest"], loaded=["a:latest"])
        router = builders.router(fleet, "memory_aware")
        router.learning.learned[("n", "a:latest")] = Learned(prompt_tps=prompt_tps)
        ready = router.pick(_req("a", prompt_tokens=prompt_tokens))
        assert ready.ranked[0].reason == "warm"
        router.report(Report(ready.lease_id, "n", Outcome.OK, http_status=200, stats=whole))
        return router.learning.learned[("n", "a:latest")]

    # 3,000 tokens at 1,000/s measured: 3 s of the 5 were the prompt, 80 tokens in 2 s.
    assert warm(1000.0, 3000).decode_tps == 40.0
    assert warm(1000.0, 4000).decode_tps == 0.0  # 4 s of 5: what is left is too unsure
    # Unmeasured: at the prior (10x the default 60 tokens/s), 3,000 tokens take 5 s: no telling.
    unmeasured = warm(0.0, 3000)
    assert unmeasured.decode_tps == 0.0
    assert unmeasured.samples == 1  # its length still counts
    assert warm(0.0, 100).decode_tps == 16.0  # 0.17 s of 5 at the prior: taken whole, as before

    # A stream's time to its first token after a load started at once: the load and the prompt.
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["a:latest"])
    router = builders.router(fleet, "memory_aware")
    router.learning.learned[("n", "a:latest")] = Learned(prompt_tps=1000.0)
    cold = router.pick(_req("a", prompt_tokens=3000))
    assert cold.ranked[0].reason == "cold-fit"
    timed = GenerationStats(eval_count=80, eval_duration_ns=2 * 10**9, first_token_ns=5 * 10**9)
    router.report(Report(cold.lease_id, "n", Outcome.OK, http_status=200, stats=timed))
    learned = router.learning.learned[("n", "a:latest")]
    assert (learned.load_seconds, learned.decode_tps) == (2.0, 40.0)


def test_an_edge_timed_reply_mostly_prompt_teaches_the_prompt_speed() -> None:
    """OpenAI-compatible replies carry no prompt_eval_duration, so a fleet of such clients
    never measured a prompt speed. A whole reply from a ready instance whose prompt (its length
    from the usage object) took most of it beside its decoding at the known speed teaches it;
    so does a stream's time to its first token, less one token decoded."""
    for stats in (
        GenerationStats(prompt_eval_count=3000, eval_count=80, reply_ns=5 * 10**9),
        GenerationStats(
            prompt_eval_count=3000,
            eval_count=80,
            eval_duration_ns=2 * 10**9,
            first_token_ns=3 * 10**9 + 25_000_000,
        ),
    ):
        fleet = builders.fleet()
        builders.add_node(fleet, "n", models=["a:latest"], loaded=["a:latest"])
        router = builders.router(fleet, "memory_aware")
        router.learning.learned[("n", "a:latest")] = Learned(decode_tps=40.0)
        ready = router.pick(_req("a", prompt_tokens=3000))
        assert ready.ranked[0].reason == "warm"
        router.report(Report(ready.lease_id, "n", Outcome.OK, http_status=200, stats=stats))
        learned = router.learning.learned[("n", "a:latest")]
        # 80 tokens at 40/s: 2 s of decoding (or 25 ms for the first token); the rest, 3 s,
        # was the prompt. The decode speed is not taught by a reply that was mostly prompt.
        assert learned.prompt_tps == pytest.approx(1000.0)
        assert learned.decode_tps == 40.0


def test_a_reply_that_tells_its_cached_prompt_teaches_the_prompt_speed_from_the_rest() -> None:
    """Ollama times only the prompt tokens its cache did not hold, but counts them all. Where
    the reply says how many were cached (newer Ollama), the others over that time are the
    prompt speed: for a turn sent back to its session's host too (unknown before, so not
    taught), and not inflated by a prefix another conversation left (a shared system prompt)."""
    # 3,000 prompt tokens, 2,000 of them cached: 1,000 evaluated in 1 s.
    told = GenerationStats(
        prompt_eval_count=3000,
        prompt_eval_cached_count=2000,
        prompt_eval_duration_ns=10**9,
        eval_count=10,
        eval_duration_ns=10**8,
    )
    untold = replace(told, prompt_eval_cached_count=None)

    def learned(stats: GenerationStats, session: bool) -> float:
        fleet = builders.fleet()
        builders.add_node(fleet, "n", models=["a:latest"], loaded=["a:latest"])
        router = builders.router(fleet, "memory_aware")
        key = "s" if session else ""
        if session:  # the conversation's first turn, here
            first = router.pick(_req("a", session_key=key, prompt_tokens=2000))
            assert router.report(Report(first.lease_id, "n", Outcome.OK, http_status=200))
        turn = router.pick(_req("a", session_key=key, prompt_tokens=3000))
        assert turn.ranked[0].reason == ("affinity warm" if session else "warm")
        assert router.report(Report(turn.lease_id, "n", Outcome.OK, http_status=200, stats=stats))
        return router.learning.learned[("n", "a:latest")].prompt_tps

    assert learned(told, session=True) == pytest.approx(1000.0)
    assert learned(untold, session=True) == 0.0  # older Ollama: no telling how much was new
    assert learned(told, session=False) == pytest.approx(1000.0)
    assert learned(untold, session=False) == pytest.approx(3000.0)  # all taken as evaluated


def test_an_edge_timed_reply_sets_apart_the_prompt_its_usage_counts() -> None:
    """The prompt set apart from an edge-timed reply is the one the host evaluated, as its usage
    counts it (less what its cache held, where said), not the edge's guess from the request's
    characters: a guess a third short made the rest look twice as slow."""
    whole = GenerationStats(eval_count=80, reply_ns=5 * 10**9)
    for stats in (
        replace(whole, prompt_eval_count=3000),
        replace(whole, prompt_eval_count=5000, prompt_eval_cached_count=2000),
    ):
        fleet = builders.fleet()
        builders.add_node(fleet, "n", models=["a:latest"], loaded=["a:latest"])
        router = builders.router(fleet, "memory_aware")
        router.learning.learned[("n", "a:latest")] = Learned(prompt_tps=1000.0)
        ready = router.pick(_req("a", prompt_tokens=2000))  # the edge guessed 2,000 tokens
        assert ready.ranked[0].reason == "warm"
        router.report(Report(ready.lease_id, "n", Outcome.OK, http_status=200, stats=stats))
        # 3,000 tokens evaluated at 1,000/s: 3 s of the 5; 80 tokens in the other 2.
        assert router.learning.learned[("n", "a:latest")].decode_tps == pytest.approx(40.0)


def test_only_ollamas_own_durations_teach_the_automatic_context_length() -> None:
    """A reply with no durations of Ollama's (the edge's whole time, or a usage object alone)
    cannot tell a reply that loaded from one that found the model ready: it teaches no length."""
    for stats in (
        GenerationStats(eval_count=5, reply_ns=10**8),
        GenerationStats(prompt_eval_count=3, eval_count=5),
    ):
        fleet = builders.fleet()
        _loaded_with_context(fleet, "a", 4096)
        router = builders.router(fleet, "memory_aware")
        warm = router.pick(_req(node_id="a"))
        router.report(Report(warm.lease_id, "a", Outcome.OK, http_status=200, stats=stats))
        assert fleet.nodes["a"].auto_context == {}
    ollamas = GenerationStats(eval_count=5, eval_duration_ns=10**8, load_duration_ns=4 * 10**7)
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 4096)
    router = builders.router(fleet, "memory_aware")
    warm = router.pick(_req(node_id="a"))
    router.report(Report(warm.lease_id, "a", Outcome.OK, http_status=200, stats=ollamas))
    assert fleet.nodes["a"].auto_context == {"llama3.2:latest": 4096}


def test_failures_from_traffic_open_the_breaker() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a")
    router = builders.router(fleet)
    for _ in range(3):
        lease = router.pick(_req()).lease_id
        router.report(Report(lease, "a", Outcome.BUSY, http_status=503))
    assert router.pick(_req()).status is PickStatus.NO_HEALTHY_NODE
    assert fleet.nodes["a"].breaker.last_failure == "http 503"


def test_a_show_answered_neither_heals_nor_probes_the_breaker() -> None:
    """Ollama answers /api/show from disk, so a host whose runners fail still answers it:
    such an answer must not reset the failures counted, nor close a half-open breaker."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "a")
    router = builders.router(fleet)

    def answer(api: ApiKind, outcome: Outcome, status: int) -> None:
        lease = router.pick(_req(api=api)).lease_id
        router.report(Report(lease, "a", outcome, http_status=status))

    answer(ApiKind.CHAT, Outcome.UPSTREAM_ERROR, 500)
    answer(ApiKind.CHAT, Outcome.UPSTREAM_ERROR, 500)
    answer(ApiKind.SHOW, Outcome.OK, 200)
    answer(ApiKind.CHAT, Outcome.UPSTREAM_ERROR, 500)
    assert router.pick(_req()).status is PickStatus.NO_HEALTHY_NODE  # three failures in a row

    node.breaker.open_until = 0.0  # the cooldown is over: half-open
    answer(ApiKind.SHOW, Outcome.OK, 200)
    assert node.breaker.state is BreakerState.HALF_OPEN and node.breaker.probe_lease is None
    answer(ApiKind.CHAT, Outcome.OK, 200)  # the chat is the probe, and closes it
    assert node.breaker.state is BreakerState.CLOSED
    answer(ApiKind.SHOW, Outcome.CONNECT_ERROR, 0)  # a show that fails still counts
    assert node.breaker.consecutive_failures == 1


def test_edge_release_and_ttl_sweep_free_leases() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a")
    router = builders.router(fleet)
    router.pick(_req())
    router.pick(RouteRequest(model="llama3.2", edge_id="edge-2"))
    assert router.release_edge("edge-1") == 1
    assert fleet.leases.in_flight("a") == 1
    for lease in list(fleet.leases._leases.values()):
        lease.opened_at -= 10
    assert router.sweep(lease_ttl=5) == 1 and fleet.leases.in_flight("a") == 0


def test_pull_goes_to_any_node_and_node_id_targets_one() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a", models=[])
    builders.add_node(fleet, "b", models=[])
    router = builders.router(fleet)
    assert router.pick(_req("new-model", api=ApiKind.PULL)).status is PickStatus.OK
    targeted = router.pick(_req("new-model", api=ApiKind.PULL, node_id="b"))
    assert [r.candidate.node_id for r in targeted.ranked] == ["b"]
    missing = router.pick(_req("new-model", api=ApiKind.PULL, node_id="zzz"))
    assert missing.status is PickStatus.NODE_NOT_FOUND


def test_cold_pick_is_marked_loading_and_candidates_know_what_is_loaded() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "warm", loaded=["llama3.2:latest"])
    builders.add_node(fleet, "cold")
    router = builders.router(fleet, "round_robin")
    outcome = router.pick(_req())
    loaded = {r.candidate.node_id: r.candidate.loaded for r in outcome.ranked}
    assert loaded == {"warm": True, "cold": False}
    assert outcome.ranked[0].candidate.node_id == "cold"  # round robin starts at "cold"
    assert "llama3.2:latest" in fleet.nodes["cold"].loading
    warm_first = router.pick(_req())
    assert warm_first.ranked[0].candidate.node_id == "warm"
    assert "llama3.2:latest" not in fleet.nodes["warm"].loading


def test_a_cloud_model_is_always_ready_and_evicts_nothing() -> None:
    """A -cloud model runs on ollama.com: routing it marks no load and does not count the
    host's resident models as about to be evicted (with memory_aware they would have been: the
    host holds its three-model limit)."""
    fleet = builders.fleet()
    residents = ["a:latest", "b:latest", "c:latest"]
    node = builders.add_node(
        fleet, "h", models=[*residents, "gpt-oss:120b-cloud"], loaded=residents
    )
    router = builders.router(fleet, "memory_aware")
    outcome = router.pick(_req("gpt-oss:120b-cloud"))
    assert outcome.status is PickStatus.OK
    chosen = outcome.ranked[0]
    assert chosen.candidate.loaded and chosen.reason == "warm"
    assert not node.loading and not node.evicting
    assert router.pick(_req("gpt-oss:20b:cloud")).status is PickStatus.MODEL_NOT_FOUND
    local = router.pick(_req("a:local"))  # the local model of that name
    assert local.status is PickStatus.OK and local.ranked[0].reason == "warm"
    local_cloud = router.pick(_req("gpt-oss:120b:cloud"))  # the same model as gpt-oss:120b-cloud
    assert local_cloud.status is PickStatus.OK and local_cloud.ranked[0].candidate.loaded


def _loaded_with_context(
    fleet: Fleet, node_id: str, context: int, *, trained: int = 0, others: int = 0
) -> None:
    """``node_id`` with llama3.2 loaded at ``context`` and ``others`` 2 GB models idle beside
    it, its 6.5 GiB of GPU memory too full for a second copy of llama3.2 with two others."""
    names_ = ["llama3.2:latest", *(f"other{i}:latest" for i in range(others))]
    node = builders.add_node(fleet, node_id, models=names_, vram_gb=6.5)
    details = Details(context_length=trained)
    total = int(6.5 * 1024**3)
    snap = replace(
        node.snapshot,
        sequence=2,
        gpus=(Gpu(0, "GPU", "", total, total - len(names_) * 2 * builders.GB),),
        installed=tuple(
            InstalledModel(name=n, size_bytes=2 * builders.GB, details=details) for n in names_
        ),
        loaded=(
            LoadedModel(name=names_[0], size_vram_bytes=2 * builders.GB, context_length=context),
            *(LoadedModel(name=n, size_vram_bytes=2 * builders.GB) for n in names_[1:]),
        ),
    )
    fleet.update(node_id, node.session, snap)


def test_a_model_loaded_with_another_context_length_is_not_warm() -> None:
    """Ollama reloads a model for a request whose num_ctx differs from the loaded instance's,
    so the host with the asked-for length loaded is the warm one."""
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 8192)
    _loaded_with_context(fleet, "b", 4096, others=2)
    router = builders.router(fleet, "memory_aware")

    def first(num_ctx: int) -> tuple[str, str]:
        ranked = router.pick(_req(num_ctx=num_ctx)).ranked
        by_node = {r.candidate.node_id: r.reason for r in ranked}
        return ranked[0].candidate.node_id, by_node[
            "a" if ranked[0].candidate.node_id == "b" else "b"
        ]

    # The instance on b is replaced, so its memory is reused: no eviction of b's other models.
    assert first(8192) == ("a", "reload-fit")
    assert first(4096) == ("b", "reload-fit")
    assert not fleet.nodes["a"].loading and not fleet.nodes["b"].loading
    plain = router.pick(_req())  # no num_ctx asked: whatever is loaded serves
    assert all(r.candidate.loaded for r in plain.ranked)


def test_a_context_beyond_the_trained_length_matches_the_capped_instance() -> None:
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 131072, trained=131072)
    router = builders.router(fleet, "memory_aware")
    assert router.pick(_req(num_ctx=262144)).ranked[0].reason == "warm"
    assert router.pick(_req(num_ctx=8192)).ranked[0].reason == "reload-fit"


def test_a_reload_counts_as_loading_until_the_new_length_shows() -> None:
    """The old instance stays listed while Ollama waits for its requests and reloads: the next
    request asking for the new length joins the reload instead of starting another."""
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 4096)
    node = fleet.nodes["a"]
    router = builders.router(fleet, "memory_aware")
    held = node.loading_bytes
    assert router.pick(_req(num_ctx=8192)).ranked[0].reason == "reload-fit"
    assert (node.reloading, node.loading_bytes) == ({"llama3.2:latest": 8192}, held)

    def listed_at(context: int, sequence: int) -> None:
        (model,) = node.snapshot.loaded
        snap = replace(
            node.snapshot, sequence=sequence, loaded=(replace(model, context_length=context),)
        )
        fleet.update("a", node.session, snap)

    listed_at(4096, 3)  # still the old instance
    joined = router.pick(_req(num_ctx=8192))
    assert joined.ranked[0].reason == "loading"
    listed_at(8192, 4)  # Ollama lists the new instance as its load starts
    assert not node.loading and not node.reloading
    listed = router.pick(_req(num_ctx=8192)).ranked[0]
    assert listed.candidate.loaded and listed.reason == "loading"
    router.report(Report(joined.lease_id, "a", Outcome.OK, http_status=200))  # load done
    ready = router.pick(_req(num_ctx=8192)).ranked[0]  # behind the requests sent before
    assert ready.candidate.loaded and ready.reason.startswith("queued")


def test_an_instance_loaded_with_other_runner_options_is_not_warm() -> None:
    """Ollama reloads for other num_gpu, num_thread, ... values too. No API shows them, so the
    router remembers what the loads it routed asked; an instance it did not load has defaults."""
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 4096)
    _loaded_with_context(fleet, "b", 4096)
    router = builders.router(fleet, "memory_aware")
    node = fleet.nodes["a"]
    threads = (("num_thread", 4),)

    def reasons(**kw: object) -> dict[str, str]:
        outcome = router.pick(_req(**kw))
        node_id = outcome.ranked[0].candidate.node_id
        router.report(Report(outcome.lease_id, node_id, Outcome.OK, http_status=200))
        return {r.candidate.node_id: r.reason for r in outcome.ranked}

    assert reasons(runner_options=threads) == {"a": "reload-fit", "b": "reload-fit"}
    assert (node.load_options, node.runner_options) == ({"llama3.2:latest": threads}, {})
    fleet.update("a", node.session, replace(node.snapshot, sequence=3))  # the load shows
    assert not node.loading and node.runner_options == {"llama3.2:latest": threads}
    assert reasons(runner_options=threads) == {"a": "warm", "b": "reload-fit"}
    plain = router.pick(_req())  # a default num_thread does not match 4
    by_node = {r.candidate.node_id: r for r in plain.ranked}
    assert plain.ranked[0].candidate.node_id == "b" and by_node["a"].reason == "reload-fit"
    replaced = by_node["a"].candidate.replaced  # priced with the whole model's demand
    assert replaced is not None
    assert replaced.demand == pytest.approx(router.demand.of("llama3.2:latest"), rel=0.01)
    both = (("num_gpu", 20), *threads)
    assert reasons(runner_options=both) == {"a": "reload-fit", "b": "reload-fit"}
    fleet.update("a", node.session, replace(node.snapshot, sequence=4))
    assert node.runner_options == {"llama3.2:latest": both}
    # num_gpu left to Ollama matches an instance loaded with any.
    assert reasons(runner_options=threads) == {"a": "warm", "b": "reload-fit"}
    # Once the instance is gone, so are its options.
    fleet.update("a", node.session, replace(node.snapshot, sequence=5, loaded=()))
    assert node.runner_options == {}


def test_a_reload_for_other_options_that_never_happens_leaves_the_instance_as_it_was() -> None:
    """Ollama loads for the requests that wait: when the one routed to reload an instance with
    other runner options leaves before the load, the instance keeps its own, and a request
    asking none is warm there."""
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 4096)
    router = builders.router(fleet, "memory_aware")
    node = fleet.nodes["a"]
    gone = router.pick(_req(runner_options=(("num_thread", 4),)))
    assert gone.ranked[0].reason == "reload-fit" and node.load_options
    router.report(Report(gone.lease_id, "a", Outcome.CLIENT_CANCELLED))
    assert not node.loading and not node.load_options and not node.runner_options
    assert router.pick(_req()).ranked[0].reason == "warm"


def test_a_load_still_under_way_with_other_runner_options_is_not_joined() -> None:
    """Before any snapshot lists the model, a request asking other options than the load
    routed there would wait for that load and then reload it: it goes to the other host."""
    fleet = builders.fleet()
    builders.add_node(fleet, "a", vram_gb=6.5)
    builders.add_node(fleet, "b", vram_gb=6.5)
    router = builders.router(fleet, "memory_aware")
    first = router.pick(_req(runner_options=(("num_thread", 8),)))
    assert first.ranked[0].candidate.node_id == "a"
    router.report(Report(first.lease_id, "a", Outcome.OK, http_status=200))
    assert "llama3.2:latest" in fleet.nodes["a"].loading  # answered, not yet listed
    same = {
        r.candidate.node_id: r.reason
        for r in router.pick(_req(runner_options=(("num_thread", 8),))).ranked
    }
    assert same["a"] == "loading"
    plain = router.pick(_req())
    by_node = {r.candidate.node_id: r.reason for r in plain.ranked}
    assert by_node == {"a": "reload-fit", "b": "cold-fit"}
    assert plain.ranked[0].candidate.node_id == "b"


KV_PER_TOKEN = 131072  # llama3.1:8b's KV cache in f16: 32 layers x 8 KV heads x 128 x 2 x 2


def _eight_gb_laptop(fleet: Fleet, sequence: int, *loaded: tuple[str, int]) -> None:
    """Node "a", 8 GiB of VRAM, with llama3.2 (2 GB) and llama3.1:8b (4.9 GB) on disk; /api/ps
    lists ``loaded`` as (name, context length), each taking its file and its KV cache."""
    node = fleet.nodes["a"]
    sizes = {"llama3.2:latest": 2 * builders.GB, "llama3.1:8b": int(4.9 * builders.GB)}
    installed = tuple(InstalledModel(name=m, size_bytes=b) for m, b in sizes.items())
    listed = tuple(
        LoadedModel(
            name=m,
            size_bytes=sizes[m] + KV_PER_TOKEN * context,
            size_vram_bytes=sizes[m] + KV_PER_TOKEN * context,
            context_length=context,
        )
        for m, context in loaded
    )
    used = sum(m.size_vram_bytes for m in listed)
    total = 8 * 1024**3
    gpu = Gpu(0, "GPU", "", total, total - used)
    snapshot = replace(
        node.snapshot, sequence=sequence, installed=installed, loaded=listed, gpus=(gpu,)
    )
    fleet.update("a", node.session, snapshot)


def test_a_load_at_a_long_context_is_known_to_need_room_its_file_alone_would_not() -> None:
    """Ollama gives an instance its KV cache for the whole context length: llama3.1:8b at 16384
    tokens takes 7 GB, not the 5.6 GB its file and a fixed headroom make. Learned from /api/ps
    (an instance listed at 4096), a load at 16384 is known to evict llama3.2, idle beside it,
    so llama3.2 no longer counts as warm there; at 4096 it fits beside it."""
    fleet = builders.fleet()
    builders.add_node(fleet, "a", models=())
    _eight_gb_laptop(fleet, 2, ("llama3.1:8b", 4096))
    assert fleet.nodes["a"].kv_bytes == {"llama3.1:8b": KV_PER_TOKEN}
    _eight_gb_laptop(fleet, 3, ("llama3.2:latest", 4096))
    router = builders.router(fleet, "memory_aware")
    short = router.pick(_req("llama3.1:8b", num_ctx=4096))
    assert short.ranked[0].reason == "cold-fit"
    router.report(Report(short.lease_id, "a", Outcome.CLIENT_CANCELLED))
    long = router.pick(_req("llama3.1:8b", num_ctx=16384))
    assert long.ranked[0].reason == "cold-evict-idle"
    assert fleet.nodes["a"].evicting == {"llama3.2:latest": "llama3.1:8b"}
    assert fleet.warm.get("llama3.2:latest", 0) == 0


def test_a_reload_at_a_longer_context_takes_the_difference_and_evicts_for_it() -> None:
    fleet = builders.fleet()
    builders.add_node(fleet, "a", models=())
    _eight_gb_laptop(fleet, 2, ("llama3.1:8b", 4096), ("llama3.2:latest", 4096))
    router = builders.router(fleet, "memory_aware")
    longer = router.pick(_req("llama3.1:8b", num_ctx=16384))
    assert longer.ranked[0].reason == "reload-evict-idle"
    node = fleet.nodes["a"]
    assert node.evicting == {"llama3.2:latest": "llama3.1:8b"}
    # Reserved for other picks until a snapshot lists it: what it takes beyond the instance.
    assert node.loading["llama3.1:8b"][1] == KV_PER_TOKEN * (16384 - 4096)


def test_a_pick_reads_known_runner_options_only() -> None:
    wire = router_pb2.PickRequest(
        model="llama3.2", runner_options={"num_thread": 8, "use_mmap": 5, "num_batch": 512}
    )
    wire.runner_options["bogus"] = 1  # a rogue or newer edge: ignored
    assert convert.route_request(wire).runner_options == (
        ("num_batch", 512),  # Ollama's default, named: it stands over a modelfile's value
        ("num_thread", 8),
        ("use_mmap", 1),
    )
    assert convert.route_request(router_pb2.PickRequest(model="x")).runner_options == ()


def _with_a_copy(fleet: Fleet, node_id: str, sequence: int, *loaded: str) -> None:
    """``node_id`` has llama3.2 and mycopy, made by `ollama cp llama3.2 mycopy` (the very same
    manifest, so the same digest), and other; /api/ps lists ``loaded``."""
    node = fleet.nodes[node_id]
    digests = {"llama3.2:latest": "d1", "mycopy:latest": "d1", "other:latest": "d2"}
    installed = tuple(
        InstalledModel(name=m, size_bytes=2 * builders.GB, digest=d) for m, d in digests.items()
    )
    listed = tuple(
        LoadedModel(name=m, size_vram_bytes=2 * builders.GB, digest=digests[m]) for m in loaded
    )
    snapshot = replace(node.snapshot, sequence=sequence, installed=installed, loaded=listed)
    fleet.update(node_id, node.session, snapshot)


def test_a_copy_of_a_loaded_model_runs_warm_on_its_instance() -> None:
    """Ollama keys its runners by the model's files and /api/ps lists each once, under the name
    that loaded it: a copy is served by the runner of the model it copies, with no load. A
    request for the copy goes there warm, marks no load, and its lease counts on that instance;
    the ranking's floors follow (they were built while nothing was loaded)."""
    fleet = builders.fleet()
    for node_id in ("a", "b"):
        builders.add_node(fleet, node_id)
        _with_a_copy(fleet, node_id, 2)
    router = builders.router(fleet, "memory_aware")
    cold = router.pick(_req("mycopy"))
    assert cold.ranked[0].reason == "cold-fit"
    router.report(Report(cold.lease_id, cold.ranked[0].candidate.node_id, Outcome.CLIENT_CANCELLED))
    b = fleet.nodes["b"]
    _with_a_copy(fleet, "b", 3, "llama3.2:latest")
    assert (
        fleet.warm.get("mycopy:latest") == 1 and b.runner_key("mycopy:latest") == "llama3.2:latest"
    )
    warm = router.pick(_req("mycopy", session_key="s", max_candidates=1))
    assert [(r.candidate.node_id, r.reason) for r in warm.ranked] == [("b", "warm")]
    assert not b.loading and fleet.leases.in_flight("b", "llama3.2:latest") == 1
    assert router.floors.of_node["b"]["mycopy:latest"] == router.policy.floor(  # type: ignore[attr-defined]
        router.candidates.build(b, "mycopy:latest", "")
    )
    # Its session comes back to it, queued behind the request on the instance's one slot.
    again = router.pick(_req("mycopy", session_key="s")).ranked[0]
    assert (again.candidate.node_id, again.reason.split()[:2]) == ("b", ["affinity", "queued"])
    _with_a_copy(fleet, "b", 4)  # unloaded: the copy is cold again
    assert "mycopy:latest" not in fleet.warm
    assert router.pick(_req("mycopy")).ranked[0].reason.startswith("cold")


def test_a_model_made_from_a_loaded_one_runs_warm_on_its_runner() -> None:
    """A model made FROM llama3.2 with a SYSTEM of its own has another digest, and the same
    runner_id (the agent reads it from the modelfile): Ollama serves it from llama3.2's
    runner. One whose runner_id is not known yet loads apart."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "a")
    models = {  # name: (digest, runner_id)
        "llama3.2:latest": ("d1", "r1"),
        "bot:latest": ("d2", "r1"),
        "unread:latest": ("d4", ""),
    }
    installed = tuple(
        InstalledModel(name=m, size_bytes=2 * builders.GB, digest=d, runner_id=r)
        for m, (d, r) in models.items()
    )

    def listing(sequence: int, name: str) -> None:
        loaded = (LoadedModel(name=name, size_vram_bytes=2 * builders.GB, digest=models[name][0]),)
        snapshot = replace(node.snapshot, sequence=sequence, installed=installed, loaded=loaded)
        fleet.update("a", node.session, snapshot)

    listing(2, "llama3.2:latest")
    assert node.aliases == {"bot:latest": "llama3.2:latest"}
    router = builders.router(fleet, "memory_aware")
    warm = router.pick(_req("bot")).ranked[0]
    assert (warm.reason, fleet.leases.in_flight("a", "llama3.2:latest")) == ("warm", 1)
    assert router.pick(_req("unread")).ranked[0].reason.startswith("cold")
    listing(3, "bot:latest")  # the derived model loaded first: its runner serves the base
    assert node.aliases == {"llama3.2:latest": "bot:latest"}


def test_a_model_on_a_loaded_runner_counts_warm_only_where_it_runs_without_a_reload() -> None:
    """Models made FROM llama3.2 are warm on its instance (for pricing evictions of a model
    warm elsewhere too) only where Ollama would not reload it for them: bot (a SYSTEM) is,
    long (num_ctx 8192) and tuned (an ADAPTER) are not, until the instance is theirs."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "a")
    installed = tuple(
        InstalledModel(
            name=n, size_bytes=2 * builders.GB, digest=n, runner_id="r1", num_ctx=c, adapters_id=a
        )
        for n, c, a in (
            ("llama3.2:latest", 0, ""),
            ("bot:latest", 0, ""),
            ("long:latest", 8192, ""),
            ("tuned:latest", 0, "ad" * 32),
        )
    )

    def listing(name: str, context: int) -> None:
        loaded = (LoadedModel(name=name, size_vram_bytes=2 * builders.GB, context_length=context),)
        sequence = node.snapshot.sequence + 1
        snapshot = replace(node.snapshot, sequence=sequence, installed=installed, loaded=loaded)
        fleet.update("a", node.session, snapshot)

    listing("llama3.2:latest", 4096)
    assert set(fleet.warm) == {"llama3.2:latest", "bot:latest"}
    listing("long:latest", 8192)  # the others' automatic length unknown: taken to match
    assert set(fleet.warm) == {"llama3.2:latest", "bot:latest", "long:latest"}
    node.auto_context["r1"] = 4096  # learned: the host gives these weights 4096
    listing("long:latest", 8192)
    assert set(fleet.warm) == {"long:latest"}
    listing("tuned:latest", 4096)
    assert set(fleet.warm) == {"tuned:latest"}


def test_evicting_an_instance_costs_the_demand_of_every_model_on_its_weights() -> None:
    """llama3.2 loaded and idle on "a", never asked for itself; bot, made FROM it, asked on
    "b". A load on "a" that must evict llama3.2's instance prices the requests for bot there
    too: they would run warm on it, and reload it once evicted."""
    fleet = builders.fleet()
    a = builders.add_node(fleet, "a", vram_gb=3.0)
    builders.add_node(fleet, "b", models=["bot:latest"])
    size = 2 * builders.GB
    installed = (
        InstalledModel(name="llama3.2:latest", size_bytes=size, digest="d1", runner_id="r1"),
        InstalledModel(name="bot:latest", size_bytes=size, digest="d2", runner_id="r1"),
        InstalledModel(name="other:latest", size_bytes=size, digest="d3", runner_id="r2"),
    )
    loaded = (LoadedModel(name="llama3.2:latest", size_vram_bytes=size, digest="d1"),)
    full = (Gpu(0, "GPU", "", 3 * 1024**3, 3 * 1024**3 - size),)
    snapshot = replace(a.snapshot, sequence=2, installed=installed, loaded=loaded, gpus=full)
    fleet.update("a", a.session, snapshot)
    assert a.siblings == {
        "llama3.2:latest": ("llama3.2:latest", "bot:latest"),
        "bot:latest": ("llama3.2:latest", "bot:latest"),
    }
    router = builders.router(fleet, "memory_aware")
    for _ in range(3):
        asked = router.pick(_req("bot", node_id="b"))
        router.report(Report(asked.lease_id, "b", Outcome.CLIENT_CANCELLED))
    (resident,) = router.candidates.build(a, "other:latest", "", 0).idle_loaded
    assert resident.key == "llama3.2:latest"
    assert resident.demand == router.demand.of("bot:latest") > 0


def test_a_model_on_the_weights_of_a_load_under_way_joins_it() -> None:
    """A load of llama3.2 routed and not listed yet: a request for bot (made FROM it with a
    SYSTEM) or for a copy joins that load, as Ollama serves them from the runner it is
    loading, rather than load the same weights again; one for tuned (with an ADAPTER) reloads
    it once loaded. A load no request waits for any more serves nobody."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "a")
    installed = tuple(
        InstalledModel(name=n, size_bytes=2 * builders.GB, digest=d, runner_id="r1", adapters_id=a)
        for n, d, a in (
            ("llama3.2:latest", "d1", ""),
            ("mycopy:latest", "d1", ""),
            ("bot:latest", "d2", ""),
            ("tuned:latest", "d3", "ad" * 32),
        )
    )
    fleet.update("a", node.session, replace(node.snapshot, sequence=2, installed=installed))
    router = builders.router(fleet, "memory_aware")
    first = router.pick(_req())
    assert first.ranked[0].reason == "cold-fit" and set(node.loading) == {"llama3.2:latest"}
    assert node.aliases == {
        m: "llama3.2:latest" for m in ("mycopy:latest", "bot:latest", "tuned:latest")
    }
    joined = [router.pick(_req(m)) for m in ("bot", "mycopy")]
    assert [o.ranked[0].reason for o in joined] == ["loading", "loading"]
    assert fleet.leases.in_flight("a", "llama3.2:latest") == 3
    assert router.pick(_req("tuned")).ranked[0].reason == "reload-fit"
    for outcome in [first, *joined]:
        router.report(Report(outcome.lease_id, "a", Outcome.CLIENT_CANCELLED))
    assert set(node.loading) == {"llama3.2:latest"}  # tuned's reload still waits for it
    assert node.load_options == {"llama3.2:latest": (("adapters", int("ad" * 7 + "a", 16)),)}


def test_a_models_own_load_parameters_are_its_requests_defaults() -> None:
    """Ollama runs a request naming no num_ctx (or num_thread, ...) with its modelfile's
    PARAMETER, and keeps one runner per weights file: a model made FROM llama3.2 with a
    num_ctx of its own reloads llama3.2's runner, and is warm on an instance loaded with it.
    An instance loaded outside HOPS is taken to run with its model's own parameters."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "a")
    threads = (("num_thread", 4),)
    installed = (
        InstalledModel(name="llama3.2:latest", size_bytes=2 * builders.GB, runner_id="r1"),
        InstalledModel(
            name="long:latest", size_bytes=2 * builders.GB, runner_id="r1", num_ctx=8192
        ),
        InstalledModel(
            name="threads:latest",
            size_bytes=2 * builders.GB,
            runner_id="r1",
            runner_options=threads,
        ),
    )

    def listing(sequence: int, name: str, context: int) -> None:
        loaded = (LoadedModel(name=name, size_vram_bytes=2 * builders.GB, context_length=context),)
        snapshot = replace(node.snapshot, sequence=sequence, installed=installed, loaded=loaded)
        fleet.update("a", node.session, snapshot)

    router = builders.router(fleet, "memory_aware")

    def pick(model: str, **kw: object) -> str:
        """The reason; the pick's request leaves at once, so nothing stays marked loading."""
        outcome = router.pick(_req(model, **kw))
        router.report(Report(outcome.lease_id, "a", Outcome.CLIENT_CANCELLED))
        assert not node.loading and not node.reloading
        return outcome.ranked[0].reason

    listing(2, "llama3.2:latest", 4096)
    assert set(node.aliases) == {"long:latest", "threads:latest"}
    reload = router.pick(_req("long"))
    lease = fleet.leases.get(reload.lease_id)
    assert reload.ranked[0].reason == "reload-fit" and lease is not None and lease.context == 8192
    assert node.reloading == {"llama3.2:latest": 8192}
    router.report(Report(reload.lease_id, "a", Outcome.CLIENT_CANCELLED))
    assert pick("long", num_ctx=4096) == "warm"  # the request's own length comes first
    assert pick("threads") == "reload-fit"
    # Ollama lists the new instance under long's name as its load starts: the reload marked on
    # llama3.2's is under way there until its reply comes.
    done = router.pick(_req("long"))
    listing(3, "long:latest", 8192)
    assert not node.loading and not node.reloading and set(node.warming) == {"long:latest"}
    assert node.runner_options == {"long:latest": ()}
    assert pick("long") == "loading"
    router.report(Report(done.lease_id, "a", Outcome.OK, http_status=200))
    assert not node.warming
    assert pick("long") == "warm"
    assert (pick("llama3.2", num_ctx=8192), pick("llama3.2", num_ctx=2048)) == (
        "warm",
        "reload-fit",
    )
    listing(4, "threads:latest", 4096)  # loaded outside HOPS, with its num_thread
    assert node.runner_options == {}
    assert (pick("threads"), pick("llama3.2")) == ("warm", "reload-fit")
    # Ollama's default named (as the edge reads it) stands over the modelfile's value.
    assert pick("threads", runner_options=runner_options({"num_thread": 0})) == "reload-fit"
    assert pick("llama3.2", runner_options=runner_options({"num_thread": 4})) == "warm"


def test_a_model_with_adapters_of_its_own_reloads_the_runner_of_its_weights() -> None:
    """Ollama keeps one runner per weights file and reloads it for a model with other adapters
    (sched.go needsReload): a model made FROM llama3.2 with an ADAPTER is a reload where
    llama3.2 is loaded, not a model that loads beside it, and the other way round."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "a")
    size = 2 * builders.GB
    installed = (
        InstalledModel(name="llama3.2:latest", size_bytes=size, digest="d1", runner_id="r1"),
        InstalledModel(
            name="tuned:latest", size_bytes=size, digest="d2", runner_id="r1", adapters_id="ad" * 32
        ),
    )

    def listing(sequence: int, name: str) -> None:
        loaded = (LoadedModel(name=name, size_vram_bytes=size, context_length=4096),)
        snapshot = replace(node.snapshot, sequence=sequence, installed=installed, loaded=loaded)
        fleet.update("a", node.session, snapshot)

    router = builders.router(fleet, "memory_aware")

    def pick(model: str) -> str:
        outcome = router.pick(_req(model))
        router.report(Report(outcome.lease_id, "a", Outcome.CLIENT_CANCELLED))
        return outcome.ranked[0].reason

    listing(2, "llama3.2:latest")
    assert node.aliases == {"tuned:latest": "llama3.2:latest"}
    assert (pick("tuned"), pick("llama3.2")) == ("reload-fit", "warm")
    routed = router.pick(_req("tuned"))
    assert node.load_options == {"llama3.2:latest": (("adapters", int("ad" * 7 + "a", 16)),)}
    listing(3, "tuned:latest")  # the reload shows under tuned's name
    router.report(Report(routed.lease_id, "a", Outcome.OK, http_status=200))
    assert not node.loading and not node.load_options
    assert (pick("tuned"), pick("llama3.2")) == ("warm", "reload-fit")


def _no_room_beside_an_idle_model() -> tuple[Fleet, Router]:
    """Node "a" with ``other`` loaded and idle and no room for llama3.2 beside it."""
    fleet = builders.fleet()
    node = builders.add_node(
        fleet, "a", models=["llama3.2:latest", "other:latest"], loaded=["other:latest"]
    )
    total = 3 * 1024**3
    full = (Gpu(0, "GPU", "", total, total - 2 * builders.GB),)
    fleet.update("a", node.session, replace(node.snapshot, sequence=2, gpus=full))
    return fleet, builders.router(fleet, "memory_aware")


def _cold_load_evicting_an_idle_model() -> tuple[Fleet, Router, str]:
    """As _no_room_beside_an_idle_model: routing llama3.2 to "a" marks a load that evicts
    ``other``. Returns the fleet, its router and that pick's lease."""
    fleet, router = _no_room_beside_an_idle_model()
    node = fleet.nodes["a"]
    outcome = router.pick(_req())
    assert outcome.ranked[0].reason == "cold-evict-idle"
    assert (set(node.loading), node.evicting) == (
        {"llama3.2:latest"},
        {"other:latest": "llama3.2:latest"},
    )
    return fleet, router, outcome.lease_id


def _still_loading(fleet: Fleet) -> bool:
    node = fleet.nodes["a"]
    loading = "llama3.2:latest" in node.loading
    assert loading == ("other:latest" in node.evicting)
    assert fleet.warm.get("other:latest", 0) == (0 if loading else 1)
    return loading


def test_a_load_whose_requests_all_left_unanswered_is_no_longer_counted() -> None:
    """Ollama stops a load when the request it loads for goes away. Once no request routed
    there still waits, the load is forgotten at once, not after LOADING_TTL_S: the memory it
    held is free again for routing and the model it was to evict is warm."""
    fleet, router, first = _cold_load_evicting_an_idle_model()
    second = router.pick(_req())  # joins the load
    assert second.ranked[0].reason == "loading"
    router.report(Report(first, "a", Outcome.CLIENT_CANCELLED))
    assert _still_loading(fleet)  # the second request still waits: Ollama loads for it
    router.report(Report(second.lease_id, "a", Outcome.TIMEOUT))
    assert not _still_loading(fleet)
    assert router.pick(_req()).ranked[0].reason == "cold-evict-idle"


def test_a_show_loads_nothing_counts_no_demand_and_keeps_no_model_busy() -> None:
    """Ollama answers /api/show from disk (`ollama run` asks one before a chat):
    routing one marks no load and no victim, counts no demand and takes none of the model's
    slots, so the chat after it starts the load itself and learns its time."""
    fleet, router = _no_room_beside_an_idle_model()
    node = fleet.nodes["a"]
    shown = router.pick(_req(api=ApiKind.SHOW))
    assert shown.status is PickStatus.OK
    assert (set(node.loading), node.evicting) == (set(), {})
    assert router.demand.of("llama3.2:latest") == 0
    assert (fleet.leases.in_flight("a", "llama3.2:latest"), fleet.leases.in_flight("a")) == (0, 1)
    other = router.pick(_req("other", api=ApiKind.SHOW))  # the loaded model stays idle
    assert fleet.leases.in_flight("a", "other:latest") == 0
    for lease in (shown.lease_id, other.lease_id):
        router.report(Report(lease, "a", Outcome.OK, http_status=200))
    chat = router.pick(_req())
    assert chat.ranked[0].reason == "cold-evict-idle"
    lease = fleet.leases.get(chat.lease_id)
    assert lease is not None and lease.clean_load


def test_a_shows_answer_is_no_reply_from_a_load_under_way() -> None:
    fleet, router, lease = _cold_load_evicting_an_idle_model()
    shown = router.pick(_req(api=ApiKind.SHOW))
    router.report(Report(shown.lease_id, "a", Outcome.OK, http_status=200))
    assert _still_loading(fleet)
    router.report(Report(lease, "a", Outcome.CLIENT_CANCELLED))
    assert not _still_loading(fleet)  # no reply came from the load: it stops with its request


def test_a_load_is_kept_once_its_reply_began_or_while_a_host_error_is_retried_elsewhere() -> None:
    fleet, router, lease = _cold_load_evicting_an_idle_model()
    router.report(Report(lease, "a", Outcome.CLIENT_CANCELLED, http_status=200))
    assert _still_loading(fleet)  # loaded: the reply had begun; the next snapshot shows it

    fleet, router, lease = _cold_load_evicting_an_idle_model()
    builders.add_node(fleet, "b", models=["llama3.2:latest"])
    router.report(Report(lease, "a", Outcome.UPSTREAM_ERROR, http_status=500, retry_node_id="b"))
    assert not _still_loading(fleet)  # the load failed on "a"; the lease moved on to "b"


def test_a_load_is_forgotten_when_its_pick_was_abandoned_or_its_edge_left() -> None:
    fleet, router, _ = _cold_load_evicting_an_idle_model()
    router.release_edge("edge-2")  # another edge's leaving changes nothing here
    assert _still_loading(fleet)
    router.release_edge("edge-1")  # its connections to the hosts closed with it
    assert not _still_loading(fleet)

    fleet, router, first = _cold_load_evicting_an_idle_model()
    assert router.pick(_req(request_id=7)).ranked[0].reason == "loading"
    assert router.abandon("edge-1", 7) is True  # the edge never got this pick's answer
    assert _still_loading(fleet)  # the first request still waits
    router.report(Report(first, "a", Outcome.CONNECT_ERROR))
    assert not _still_loading(fleet)

    fleet, router, first = _cold_load_evicting_an_idle_model()
    second = router.pick(_req()).lease_id
    router.report(Report(first, "a", Outcome.OK, http_status=200))
    router.report(Report(second, "a", Outcome.CLIENT_CANCELLED))
    assert _still_loading(fleet)  # a reply showed it loaded: kept until a snapshot lists it


def _served(router: Router, node_id: str, *, load_s: float, **kw: object) -> str:
    """Pick for ``node_id`` and report its reply, whose load_duration is ``load_s``."""
    outcome = router.pick(_req(node_id=node_id, **kw))
    stats = GenerationStats(
        load_duration_ns=int(load_s * 1e9), eval_count=5, eval_duration_ns=10**8
    )
    router.report(Report(outcome.lease_id, node_id, Outcome.OK, http_status=200, stats=stats))
    return outcome.ranked[0].reason


def _relisted(fleet: Fleet, node_id: str, context: int) -> None:
    node = fleet.nodes[node_id]
    first, *others = node.snapshot.loaded
    snap = replace(
        node.snapshot,
        sequence=node.snapshot.sequence + 1,
        loaded=(replace(first, context_length=context), *others),
    )
    fleet.update(node_id, node.session, snap)


def test_a_request_naming_no_context_is_not_sent_warm_to_an_instance_loaded_with_another() -> None:
    """Ollama gives a request naming no num_ctx the host's automatic length, and reloads an
    instance an explicit num_ctx loaded at another one. Once a reply shows a host's automatic
    length, such requests go where the model is loaded with it, so Open WebUI's num_ctx and
    plain API calls stop reloading one host in turn."""
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 4096)
    _loaded_with_context(fleet, "b", 4096, others=2)
    router = builders.router(fleet, "memory_aware")
    assert _served(router, "a", load_s=0.04) == "warm"  # ran at 4096 with no load
    assert fleet.nodes["a"].auto_context == {"llama3.2:latest": 4096}
    _relisted(fleet, "a", 8192)  # a client asking 8192 reloaded it
    ranked = {r.candidate.node_id: r for r in router.pick(_req()).ranked}
    assert ranked["a"].candidate.reload and not ranked["a"].candidate.loaded
    assert ranked["b"].candidate.loaded  # b's automatic length is unknown: taken to match
    assert router.pick(_req()).ranked[0].candidate.node_id == "b"
    show = router.pick(_req(api=ApiKind.SHOW, node_id="a")).ranked[0]  # runs no model
    assert show.candidate.loaded and not show.candidate.reload


def test_an_automatic_length_holds_for_every_model_on_the_same_weights() -> None:
    """Ollama gives every model on the same weights the same automatic length, and relists
    their runner under the model that last (re)loaded it. Learned while llama3.2 was listed, it
    still tells that llama3.2 naming no length reloads the instance long (FROM llama3.2 with
    PARAMETER num_ctx 8192) loaded, and that bot (a SYSTEM of its own) runs warm on it once a
    request naming none has reloaded it."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "a")
    installed = tuple(
        InstalledModel(name=name, size_bytes=2 * builders.GB, runner_id="r1", num_ctx=num_ctx)
        for name, num_ctx in (("llama3.2:latest", 0), ("long:latest", 8192), ("bot:latest", 0))
    )

    def listing(name: str, context: int) -> None:
        loaded = (LoadedModel(name=name, size_vram_bytes=2 * builders.GB, context_length=context),)
        sequence = node.snapshot.sequence + 1
        snapshot = replace(node.snapshot, sequence=sequence, installed=installed, loaded=loaded)
        fleet.update("a", node.session, snapshot)

    router = builders.router(fleet, "memory_aware")
    listing("llama3.2:latest", 4096)
    assert _served(router, "a", load_s=0.04) == "warm"  # ran at 4096 with no load
    assert {node.automatic_context(m.name) for m in installed} == {4096}
    listing("long:latest", 8192)  # a request for long reloaded it
    assert node.aliases == {"llama3.2:latest": "long:latest", "bot:latest": "long:latest"}
    assert _served(router, "a", load_s=2.0) == "reload-fit"  # was "warm": no length known
    listing("llama3.2:latest", 4096)
    assert [_served(router, "a", load_s=0.04, model=m) for m in ("bot", "long")] == [
        "warm",
        "reload-fit",
    ]
    shown = convert.node_pb(node, fleet).automatic_context_length
    assert dict(shown) == {"llama3.2:latest": 4096, "long:latest": 4096, "bot:latest": 4096}
    # Learned before the agent had read the runner_id: kept under the name, and still found.
    unread = builders.add_node(fleet, "b")
    unread.auto_context = {"llama3.2:latest": 2048}
    fleet.update("b", unread.session, replace(unread.snapshot, sequence=9, installed=installed))
    assert unread.auto_key("llama3.2:latest") == "r1"
    assert unread.automatic_context("llama3.2:latest") == 2048


def test_a_request_at_another_length_does_not_join_a_load_under_way() -> None:
    """A load routed at num_ctx 8192 and not done yet: a request asking 8192 joins it, one
    asking 2048 makes Ollama reload the instance once it is loaded, so it ranks as a reload,
    not as a load about to be warm; nor does one naming none once the host's automatic length
    (4096) is known. The same for a reload under way."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "a")
    router = builders.router(fleet, "memory_aware")

    def reason(**kw: object) -> str:
        return router.pick(_req(**kw)).ranked[0].reason

    assert reason(num_ctx=8192) == "cold-fit"
    assert node.load_context == {"llama3.2:latest": 8192}
    assert reason(num_ctx=8192) == "loading"
    assert reason() == "loading"  # the automatic length unknown: taken to match
    assert reason(num_ctx=2048) == "reload-fit"
    node.auto_context["llama3.2:latest"] = 4096
    assert reason() == "reload-fit"
    _loaded_with_context(fleet, "b", 8192)
    reloaded = router.pick(_req(node_id="b", num_ctx=2048))
    assert fleet.nodes["b"].reloading == {"llama3.2:latest": 2048}
    assert reloaded.ranked[0].reason == "reload-fit"
    assert [reason(node_id="b", num_ctx=n) for n in (2048, 8192)] == ["loading", "reload-fit"]


def test_an_instance_whose_length_may_not_be_automatic_is_warm_below_one_known_to_be() -> None:
    """Once clients ask a model at explicit lengths, an instance on a host whose automatic
    length is not learned may be one of theirs, which Ollama reloads for a request asking none.
    Such a request goes where the automatic length is known to be loaded (on two equal hosts it
    went by node id, and so reloaded the 8192 clients' instance about half the time), but still
    prefers that unsure instance to a cold load."""
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 8192)  # its automatic length unknown
    _loaded_with_context(fleet, "b", 4096)
    builders.add_node(fleet, "c", models=["llama3.2:latest"], vram_gb=6.5)  # nothing loaded
    fleet.nodes["b"].auto_context["llama3.2:latest"] = 4096
    router = builders.router(fleet, "memory_aware")
    outcome = router.pick(_req())  # no explicit length asked yet: all taken to match
    ranked = outcome.ranked
    router.report(Report(outcome.lease_id, "a", Outcome.OK, http_status=200))
    assert [(r.candidate.node_id, r.candidate.context_unsure) for r in ranked[:2]] == [
        ("a", False),
        ("b", False),
    ]
    explicit = router.pick(_req(num_ctx=8192))
    router.report(Report(explicit.lease_id, "a", Outcome.OK, http_status=200))
    ranked = router.pick(_req()).ranked
    assert [(r.candidate.node_id, r.reason) for r in ranked] == [
        ("b", "warm"),
        ("a", "warm"),
        ("c", "cold-fit"),
    ]
    assert ranked[1].candidate.context_unsure and not ranked[0].candidate.context_unsure


def test_the_automatic_length_is_learned_from_a_reload_or_a_cold_load() -> None:
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 8192)  # loaded with an explicit length
    node = fleet.nodes["a"]
    router = builders.router(fleet, "memory_aware")
    assert _served(router, "a", load_s=2.5) == "warm"  # Ollama reloaded it at 4096
    assert node.auto_context == {} and node.context_probe["llama3.2:latest"][0] == (8192,)
    _relisted(fleet, "a", 8192)  # a snapshot taken before the reload ended
    assert node.auto_context == {} and "llama3.2:latest" in node.context_probe
    _relisted(fleet, "a", 4096)  # the listing catches up
    assert (node.auto_context, node.context_probe) == ({"llama3.2:latest": 4096}, {})

    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 8192)
    node = fleet.nodes["a"]
    router = builders.router(fleet, "memory_aware")
    outcome = router.pick(_req())
    _relisted(fleet, "a", 2048)  # listed at the new length before the reply ends
    stats = GenerationStats(load_duration_ns=3 * 10**9)
    router.report(Report(outcome.lease_id, "a", Outcome.OK, http_status=200, stats=stats))
    assert node.auto_context == {"llama3.2:latest": 2048}


def test_a_request_joining_a_load_at_an_explicit_length_learns_past_its_listing() -> None:
    """A request naming no num_ctx that joins a routed load at 8192 waits for it, and Ollama
    then reloads at the automatic length. A snapshot taken between the two lists 8192: that is
    not the automatic length (it was learned as such, and the 8192 clients then joined the
    plain ones' host). A probe that sees no other length ends at its deadline."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "a", models=["llama3.2:latest"], vram_gb=6.5)
    router = builders.router(fleet, "memory_aware")
    explicit = router.pick(_req(num_ctx=8192))
    plain = router.pick(_req())
    assert plain.ranked[0].reason == "loading" and node.load_context == {"llama3.2:latest": 8192}
    router.report(Report(explicit.lease_id, "a", Outcome.OK, http_status=200))
    stats = GenerationStats(load_duration_ns=4 * 10**9)  # the load, then the reload
    router.report(Report(plain.lease_id, "a", Outcome.OK, http_status=200, stats=stats))
    listed = LoadedModel(name="llama3.2:latest", size_vram_bytes=2 * builders.GB)
    snapshot = replace(node.snapshot, sequence=2, loaded=(replace(listed, context_length=8192),))
    fleet.update("a", node.session, snapshot)
    assert node.auto_context == {} and not node.load_context
    _relisted(fleet, "a", 4096)
    assert node.auto_context == {"llama3.2:latest": 4096}

    again = router.pick(_req(num_ctx=8192))  # reloads at 8192
    _served(router, "a", load_s=2.0)  # waits for that reload, found listed at 4096
    router.report(Report(again.lease_id, "a", Outcome.OK, http_status=200))
    _relisted(fleet, "a", 8192)  # and no listing at another length follows
    assert "llama3.2:latest" in node.context_probe
    node.probe_context(node.context_probe["llama3.2:latest"][1] + 1)
    assert not node.context_probe and node.auto_context == {"llama3.2:latest": 4096}


def test_a_reload_by_a_request_asking_a_length_is_not_taken_for_the_automatic_one() -> None:
    """A plain request cold-loads the model; one asking 8192 joins the load, and Ollama reloads
    for it once the plain one is done. A snapshot taken after the plain reply lists 8192, which
    was learned as the automatic length (the bench's two kinds of client then shared a host,
    5 loads where 2 do). Lengths asked by requests in flight, or routed there while the probe
    waits, are not learned."""
    for asked_after_reply in (False, True):
        fleet = builders.fleet()
        node = builders.add_node(fleet, "a", models=["llama3.2:latest"], vram_gb=6.5)
        router = builders.router(fleet, "memory_aware")
        plain = router.pick(_req())
        explicit = None if asked_after_reply else router.pick(_req(num_ctx=8192))
        stats = GenerationStats(load_duration_ns=2 * 10**9)
        router.report(Report(plain.lease_id, "a", Outcome.OK, http_status=200, stats=stats))
        if explicit is None:  # the reply's probe waits for a listing when this one comes
            explicit = router.pick(_req(num_ctx=8192))
        assert explicit.ranked[0].candidate.node_id == "a"
        loaded = LoadedModel(name="llama3.2:latest", size_vram_bytes=2 * builders.GB)
        snapshot = replace(
            node.snapshot, sequence=2, loaded=(replace(loaded, context_length=8192),)
        )
        fleet.update("a", node.session, snapshot)
        assert node.auto_context == {}, asked_after_reply


def test_a_changed_automatic_length_is_relearned_and_its_reload_mark_dropped() -> None:
    """Ollama restarted with another OLLAMA_CONTEXT_LENGTH: the reload routed at the old one
    does not happen (both automatic), and the mark must not wait for it until its TTL."""
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 4096)
    node = fleet.nodes["a"]
    node.auto_context["llama3.2:latest"] = 2048  # learned before the restart
    router = builders.router(fleet, "memory_aware")
    assert _served(router, "a", load_s=0.05) == "reload-fit"
    assert node.auto_context == {"llama3.2:latest": 4096}
    assert not node.loading and not node.reloading
    assert router.pick(_req()).ranked[0].reason == "warm"


def test_an_embedding_model_has_one_slot_so_a_second_request_goes_to_another_copy() -> None:
    """Ollama runs embedding-only models with one parallel slot whatever OLLAMA_NUM_PARALLEL
    says: the second of two concurrent embeds would wait behind the first on its host, so it
    goes to the other host that has the model loaded (a RAG burst spreads over the fleet)."""
    fleet = builders.fleet()
    names_ = ["nomic-embed-text:latest", "llama3.2:latest"]
    for node_id in ("a", "b"):
        node = builders.add_node(fleet, node_id, models=names_, loaded=names_, num_parallel=4)
        capabilities = (("embedding",), ("completion", "tools"))
        installed = tuple(
            replace(m, capabilities=c)
            for m, c in zip(node.snapshot.installed, capabilities, strict=True)
        )
        fleet.update(node_id, node.session, replace(node.snapshot, sequence=2, installed=installed))
    router = builders.router(fleet, "memory_aware")
    embeds = [router.pick(_req("nomic-embed-text", api=ApiKind.EMBED)) for _ in range(2)]
    assert [o.ranked[0].candidate.node_id for o in embeds] == ["a", "b"]
    assert embeds[0].ranked[0].candidate.num_parallel == 1
    # The same inputs again (the edge keys them alike): no session pins them to one host.
    for outcome in embeds:
        router.fleet.leases.close(outcome.lease_id)
    same = _req("nomic-embed-text", api=ApiKind.EMBED, session_key="p:same", prompt_tokens=40)
    again = [router.pick(same) for _ in range(2)]
    assert [o.ranked[0].candidate.node_id for o in again] == ["a", "b"]
    assert all(not r.candidate.affinity for o in again for r in o.ranked)
    chats = [router.pick(_req(api=ApiKind.CHAT)) for _ in range(2)]
    assert {o.ranked[0].candidate.num_parallel for o in chats} == {4}
    assert fleet.nodes["a"].one_slot == {"nomic-embed-text:latest"}


def test_a_reload_pays_for_the_reload_it_causes_the_instances_own_clients() -> None:
    """Replacing an instance other clients use (asking another length) costs them a reload
    when they come back, so a plain request goes to a free host rather than reload theirs; two
    kinds of client alternating on one host was measured as 36 loads in 80 requests."""
    fleet = builders.fleet()
    _loaded_with_context(fleet, "a", 8192)
    builders.add_node(fleet, "b", models=["llama3.2:latest"], vram_gb=6.5)  # room, nothing loaded
    fleet.nodes["a"].auto_context["llama3.2:latest"] = 4096
    router = builders.router(fleet, "memory_aware")
    for _ in range(5):  # clients asking 8192 use a's instance
        outcome = router.pick(_req(num_ctx=8192))
        assert outcome.ranked[0].candidate.node_id == "a"
        router.report(Report(outcome.lease_id, "a", Outcome.OK, http_status=200))
    plain = router.pick(_req())
    by_node = {r.candidate.node_id: r for r in plain.ranked}
    assert by_node["a"].reason == "reload-fit"
    replaced = by_node["a"].candidate.replaced
    assert replaced is not None and replaced.demand > 3  # the 8192 picks, not this one's
    assert plain.ranked[0].candidate.node_id == "b"

    def plain_picks_on_c(asked_8192_first: bool) -> float:
        """a holds an 8192 instance, c one at the automatic length; after plain requests
        on c, the demand of a's instance's clients as a share of the model's."""
        fleet = builders.fleet()
        _loaded_with_context(fleet, "a", 8192)
        _loaded_with_context(fleet, "c", 4096)
        for node_id in ("a", "c"):
            fleet.nodes[node_id].auto_context["llama3.2:latest"] = 4096
        router = builders.router(fleet, "memory_aware")
        if asked_8192_first:
            router.report(
                Report(router.pick(_req(num_ctx=8192)).lease_id, "a", Outcome.OK, http_status=200)
            )
        for _ in range(5):
            outcome = router.pick(_req())
            assert outcome.ranked[0].candidate.node_id == "c"
            router.report(Report(outcome.lease_id, "c", Outcome.OK, http_status=200))
        by_node = {r.candidate.node_id: r.candidate for r in router.pick(_req()).ranked}
        assert by_node["a"].reload and by_node["a"].replaced is not None
        return by_node["a"].replaced.demand / router.demand.of("llama3.2:latest")

    # Its clients asked once in six picks: their share of the model's demand is about that.
    assert 0.1 < plain_picks_on_c(True) < 0.2
    # Loaded outside HOPS (no request ever asked a length here): its clients are not seen, so
    # it is taken to be in use as much as the model is, and kept rather than reloaded.
    assert plain_picks_on_c(False) == pytest.approx(1.0)


def _big_busy_small_free() -> Router:
    """llama3.2 loaded at 32768 on "big", with a request in flight there, and at 4096 on the
    idle "small"."""
    fleet = builders.fleet()
    _loaded_with_context(fleet, "big", 32768)
    _loaded_with_context(fleet, "small", 4096)
    router = builders.router(fleet, "memory_aware")
    assert router.pick(_req(node_id="big", prompt_tokens=100)).lease_id
    return router


def test_a_prompt_goes_where_the_context_length_holds_it_whole() -> None:
    """Ollama cuts a prompt longer than the context length it runs at, with no error. A 6,000
    token prompt goes to the host whose instance runs at 32768, though it is busy and the
    other host, at 4096, is free; a short one still goes to the free host."""
    router = _big_busy_small_free()
    assert router.pick(_req(prompt_tokens=100)).ranked[0].candidate.node_id == "small"
    document = router.pick(_req(prompt_tokens=6000))
    by_node = {r.candidate.node_id: r for r in document.ranked}
    assert document.ranked[0].candidate.node_id == "big"
    assert by_node["small"].candidate.over_context == 6000 - 4096
    assert by_node["small"].reason.endswith("over-context")
    assert by_node["big"].candidate.over_context == 0
    counted = router.metrics.registry.get_sample_value
    assert counted("hops_controlplane_over_context_picks_total", {"node": "big"}) is None


def test_a_prompt_no_host_holds_whole_goes_where_the_least_is_cut() -> None:
    """Over every host's context length, the prompt is cut wherever it goes: the host that
    cuts the least takes it, busy or not, and X-Hops-Route says it did not fit. Embeddings
    (each input cut apart) and requests asking a length of their own are weighed at their own
    lengths; an embedding by its longest input."""
    router = _big_busy_small_free()
    huge = router.pick(_req(prompt_tokens=50_000))
    assert [(r.candidate.node_id, r.candidate.over_context) for r in huge.ranked] == [
        ("big", 50_000 - 32768),
        ("small", 50_000 - 4096),
    ]
    assert all(r.reason.endswith("over-context") for r in huge.ranked)
    counted = router.metrics.registry.get_sample_value
    assert counted("hops_controlplane_over_context_picks_total", {"node": "big"}) == 1.0
    embed = router.pick(_req(api=ApiKind.EMBED, prompt_tokens=60_000, longest_input=3000))
    assert all(r.candidate.over_context == 0 for r in embed.ranked)  # each input fits
    long_input = router.pick(_req(api=ApiKind.EMBED, prompt_tokens=6000, longest_input=6000))
    assert long_input.ranked[0].candidate.node_id == "big"
    asked = router.pick(_req(prompt_tokens=6000, num_ctx=8192))
    assert all(r.candidate.over_context == 0 for r in asked.ranked)  # a reload, at 8192


def test_a_cold_host_is_weighed_at_its_learned_automatic_length() -> None:
    """Not loaded anywhere: a host's automatic length, once a reply taught it, says whether the
    prompt fits a load there; not learned, nothing is assumed."""

    def two_hosts(learned: dict[str, int]) -> Router:
        fleet = builders.fleet()
        for node_id in ("a", "b"):
            node = builders.add_node(fleet, node_id, models=["llama3.2:latest"], vram_gb=24)
            if node_id in learned:
                node.auto_context["llama3.2:latest"] = learned[node_id]
        return builders.router(fleet, "memory_aware")

    unknown = two_hosts({}).pick(_req(prompt_tokens=6000))
    assert all(r.candidate.over_context == 0 for r in unknown.ranked)
    learned = two_hosts({"a": 4096, "b": 32768}).pick(_req(prompt_tokens=6000))
    assert learned.ranked[0].candidate.node_id == "b"
    assert {r.candidate.node_id: r.candidate.over_context for r in learned.ranked} == {
        "a": 6000 - 4096,
        "b": 0,
    }


def _cold_hosts(
    version: str,
    vram_gb: dict[str, float],
    trained: int = 131072,
    declared: dict[str, int] | None = None,
) -> Fleet:
    """Hosts with llama3.2 and qwen2.5 installed (trained for ``trained`` tokens), none loaded,
    reporting Ollama ``version``; ``declared``: node -> the OLLAMA_CONTEXT_LENGTH its agent
    declares."""
    fleet = builders.fleet()
    details = Details(context_length=trained)
    for node_id, gb in vram_gb.items():
        length = (declared or {}).get(node_id, 0)
        node = builders.add_node(fleet, node_id, vram_gb=gb, context_length=length)
        snap = replace(
            node.snapshot,
            sequence=2,
            ollama_version=version,
            installed=tuple(
                InstalledModel(name=n, size_bytes=2 * builders.GB, details=details)
                for n in ("llama3.2:latest", "qwen2.5:latest")
            ),
        )
        fleet.update(node_id, node.session, snap)
    return fleet


def test_before_any_reply_the_automatic_length_is_taken_from_the_version_and_vram() -> None:
    """Ollama 0.15.5+ gives a request naming no num_ctx 4096 under 24 GiB of VRAM, 32768 under
    48: a document goes to the 24 GiB card, not the smaller one that would win the tie. An
    older Ollama's default is fixed (4096 from 0.6.7, 2048 before), whatever the VRAM."""
    ranked = builders.router(_cold_hosts("0.15.5", {"a": 12, "b": 24}), "memory_aware").pick(
        _req(prompt_tokens=6000)
    )
    assert [(r.candidate.node_id, r.candidate.over_context) for r in ranked.ranked] == [
        ("b", 0),
        ("a", 6000 - 4096),
    ]
    older = builders.router(_cold_hosts("0.12.6", {"a": 12, "b": 24}), "memory_aware").pick(
        _req(prompt_tokens=3000)
    )
    assert [r.candidate.over_context for r in older.ranked] == [0, 0]
    assert older.ranked[0].candidate.node_id == "a"  # the smaller host wins the tie
    cut = builders.router(_cold_hosts("0.12.6", {"a": 12, "b": 24}), "memory_aware").pick(
        _req(prompt_tokens=6000)
    )
    assert [r.candidate.over_context for r in cut.ranked] == [6000 - 4096, 6000 - 4096]
    oldest = builders.router(_cold_hosts("0.6.5", {"a": 24}), "memory_aware").pick(
        _req(prompt_tokens=3000)
    )
    assert oldest.ranked[0].candidate.over_context == 3000 - 2048
    shown = convert.node_pb(_cold_hosts("0.12.6", {"a": 12}).nodes["a"], builders.fleet())
    assert (shown.default_context_length, shown.default_context_source) == (4096, "version")


def test_an_automatic_length_learned_for_one_model_holds_for_the_others_on_the_host() -> None:
    """The automatic length is the host's (OLLAMA_CONTEXT_LENGTH, or its VRAM tier), capped at
    each model's trained length: learned for llama3.2 below its trained length, it tells what
    qwen2.5 gets there too, before the version's guess."""
    fleet = _cold_hosts("0.15.5", {"a": 24, "b": 24})
    fleet.nodes["a"].learn_auto_context("llama3.2:latest", 8192)  # OLLAMA_CONTEXT_LENGTH=8192
    assert fleet.nodes["a"].context_guess("qwen2.5:latest", 0) == 8192
    assert fleet.nodes["b"].context_guess("qwen2.5:latest", 0) == 32768
    assert fleet.nodes["a"].context_guess("qwen2.5:latest", 16384) == 16384  # asked: as asked
    ranked = builders.router(fleet, "memory_aware").pick(_req("qwen2.5", prompt_tokens=10_000))
    assert ranked.ranked[0].candidate.node_id == "b"
    shown = {n: convert.node_pb(fleet.nodes[n], fleet) for n in ("a", "b")}
    assert (shown["a"].default_context_length, shown["a"].default_context_source) == (
        8192,
        "learned",
    )
    assert (shown["b"].default_context_length, shown["b"].default_context_source) == (
        32768,
        "vram",
    )
    capped = _cold_hosts("0.15.5", {"a": 24}, trained=2048)
    capped.nodes["a"].learn_auto_context("llama3.2:latest", 2048)  # its trained length: capped
    assert capped.nodes["a"].auto_default == 0
    assert capped.nodes["a"].context_guess("qwen2.5:latest", 0) == 2048  # the guess, capped


def test_a_declared_context_length_is_believed_until_a_reply_shows_the_hosts_own() -> None:
    """A 12 GiB card whose Ollama runs with OLLAMA_CONTEXT_LENGTH=32768, as its agent declares,
    holds a 6,000-token document before any reply: it wins the tie with the 24 GiB card
    (before, it was taken at its VRAM tier, 4096, and the document went to the bigger card).
    On older Ollama a declared length stands over the version's fixed default; a reply's
    length outranks the declaration, and the length is capped at each model's trained one."""
    fleet = _cold_hosts("0.15.5", {"a": 12, "b": 24}, declared={"a": 32768})
    ranked = builders.router(fleet, "memory_aware").pick(_req(prompt_tokens=6000))
    assert [(r.candidate.node_id, r.candidate.over_context) for r in ranked.ranked] == [
        ("a", 0),
        ("b", 0),
    ]
    shown = convert.node_pb(fleet.nodes["a"], fleet)
    assert (shown.default_context_length, shown.default_context_source) == (32768, "declared")
    older = _cold_hosts("0.12.6", {"a": 12, "b": 24}, declared={"b": 8192})
    ranked = builders.router(older, "memory_aware").pick(_req(prompt_tokens=6000))
    assert [(r.candidate.node_id, r.candidate.over_context) for r in ranked.ranked] == [
        ("b", 0),
        ("a", 6000 - 4096),  # Ollama 0.12.6's default
    ]
    fleet.nodes["a"].learn_auto_context("llama3.2:latest", 4096)  # the declaration was stale
    assert fleet.nodes["a"].context_guess("qwen2.5:latest", 0) == 4096
    assert fleet.nodes["a"].default_context == (4096, "learned")
    capped = _cold_hosts("0.15.5", {"a": 24}, trained=2048, declared={"a": 32768})
    assert capped.nodes["a"].context_guess("qwen2.5:latest", 0) == 2048


def test_a_prompt_is_fitted_as_ollama_counts_it_once_replies_showed_how() -> None:
    """The edge estimates a prompt from its bytes; Ollama counts it with the model's tokenizer,
    after its template and default system prompt. Replies teach both, per model: here short
    prompts come back 300 tokens longer (a long SYSTEM in the modelfile) and long ones 1.3x
    as long besides (dense text). Then a 3,000-token estimate (4,200 tokens counted) no longer
    fits the free 4096 host with its reply. A cut prompt teaches nothing; a tokenizer that
    counts fewer than the estimate does not shrink it; embeddings are weighed as they are."""
    router = _big_busy_small_free()

    def cut_on_small(estimate: int) -> int:
        ranked = router.pick(_req(prompt_tokens=estimate)).ranked
        return next(r.candidate.over_context for r in ranked if r.candidate.node_id == "small")

    def replied(estimate: int, counted: int, node: str = "small") -> None:
        outcome = router.pick(_req(node_id=node, prompt_tokens=estimate))
        stats = GenerationStats(prompt_eval_count=counted, eval_count=1, eval_duration_ns=10**7)
        router.report(Report(outcome.lease_id, node, Outcome.OK, http_status=200, stats=stats))

    assert cut_on_small(3000) == 0
    replied(100, 400)
    assert cut_on_small(3000) == 0  # 300 + 3,000 + a one-token reply
    replied(2000, 300 + 2600)
    assert cut_on_small(3000) == 300 + 3900 + 1 - 4096
    assert router.pick(_req(prompt_tokens=3000)).ranked[0].candidate.node_id == "big"
    embed = router.pick(_req(api=ApiKind.EMBED, prompt_tokens=4000, longest_input=4000))
    assert {r.candidate.over_context for r in embed.ranked} == {0}
    replied(6000, 4096)  # cut on the 4096 host: says nothing of the tokenizer
    assert router.learning.prompt_scale["llama3.2:latest"] == (300.0, 1.3)
    router = _big_busy_small_free()
    replied(2000, 1000, node="big")  # counted at half: the estimate stands
    assert router.learning.prompt_scale["llama3.2:latest"] == (0.0, 0.5)
    assert router.learning.counted_prompt("llama3.2:latest", 2000) == 2000


def test_a_generations_reply_must_fit_beside_its_prompt() -> None:
    """A reply that outgrows what its prompt leaves of the context makes Ollama drop half of
    it, the prompt's start. Once the model's replies are known to run to 300 tokens, a 3,900
    token prompt no longer fits 4096; an embedding has no reply."""
    router = _big_busy_small_free()
    assert router.pick(_req(prompt_tokens=3900)).ranked[0].candidate.node_id == "small"
    # No reply seen yet: one asked to run to 250 tokens may (routing assumes 200 at most,
    # as replies cut at a limit teach no usual length), and then would not fit.
    limited = router.pick(_req(prompt_tokens=3900, max_reply=250))
    assert limited.ranked[0].candidate.node_id == "big"
    assert {r.candidate.node_id: r.candidate.over_context for r in limited.ranked} == {
        "big": 0,
        "small": 3900 + 200 - 4096,
    }
    router.fleet.leases.close(limited.lease_id)
    outcome = router.pick(_req(node_id="small"))
    stats = GenerationStats(eval_count=300, eval_duration_ns=10**9)
    router.report(Report(outcome.lease_id, "small", Outcome.OK, http_status=200, stats=stats))
    ranked = {
        r.candidate.node_id: r.candidate for r in router.pick(_req(prompt_tokens=3900)).ranked
    }
    assert ranked["small"].over_context == 3900 + 300 - 4096
    assert router.pick(_req(prompt_tokens=3900)).ranked[0].candidate.node_id == "big"
    # A request that lets its reply run to 50 tokens leaves room enough; one allowing more
    # than the usual reply is expected to reply as usual.
    short = router.pick(_req(prompt_tokens=3900, max_reply=50))
    assert (short.ranked[0].candidate.node_id, short.ranked[0].candidate.over_context) == (
        "small",
        0,
    )
    long = {
        r.candidate.node_id: r.candidate
        for r in router.pick(_req(prompt_tokens=3900, max_reply=8000)).ranked
    }
    assert long["small"].over_context == 3900 + 300 - 4096
    # The short request's reply, stopped at its 50 tokens, says only that the usual one is at
    # least that long: nothing new; a reply of 50 that stopped by itself does. (A cut reply
    # longer than the average so far teaches, as the least the usual reply runs to.)
    cut = GenerationStats(eval_count=50, eval_duration_ns=10**9)
    router.report(Report(short.lease_id, "small", Outcome.OK, http_status=200, stats=cut))
    assert router.pick(_req(prompt_tokens=3900)).ranked[0].candidate.expected_tokens == 300
    ended = router.pick(_req(node_id="small", max_reply=8000))
    router.report(Report(ended.lease_id, "small", Outcome.OK, http_status=200, stats=cut))
    shorter = router.pick(_req(prompt_tokens=3900)).ranked[0].candidate.expected_tokens
    assert shorter < 300
    limited = router.pick(_req(node_id="small", max_reply=1000))
    at_limit = GenerationStats(eval_count=1000, eval_duration_ns=10**9)
    router.report(Report(limited.lease_id, "small", Outcome.OK, http_status=200, stats=at_limit))
    assert router.pick(_req(prompt_tokens=3900)).ranked[0].candidate.expected_tokens > shorter
    embed = router.pick(_req(api=ApiKind.EMBED, prompt_tokens=3900, longest_input=3900))
    assert all(r.candidate.over_context == 0 for r in embed.ranked)


def test_an_embed_reply_teaches_its_inputs_evaluation_and_its_load() -> None:
    """Ollama's /api/embed times no part apart: its whole time, less its load, is its inputs'
    evaluation. A warm embed teaches the prompt speed there, and the host's rate with it; one
    that loaded its model at once teaches the load too; one that waited for a slot teaches no
    speed (its wait is in its time). A model that only embeds teaches no host rate."""
    fleet = builders.fleet()
    node = builders.add_node(fleet, "n", models=["a:latest", "e:latest"])
    node.embedding_only = frozenset({"e:latest"})  # as a snapshot listing it so would set
    router = builders.router(fleet, "memory_aware")
    learned = router.learning.learned

    def listed(*models: str) -> None:  # wholly in the GPU's memory
        size = 2 * builders.GB
        whole = tuple(LoadedModel(name=m, size_bytes=size, size_vram_bytes=size) for m in models)
        snapshot = replace(node.snapshot, sequence=node.snapshot.sequence + 1, loaded=whole)
        fleet.update("n", node.session, snapshot)

    def embed(model: str, total_s: float, load_s: float, tokens: int) -> str:
        outcome = router.pick(_req(model, api=ApiKind.EMBED, prompt_tokens=tokens))
        stats = GenerationStats(
            total_duration_ns=int(total_s * 1e9),
            load_duration_ns=int(load_s * 1e9),
            prompt_eval_count=tokens,
        )
        router.report(Report(outcome.lease_id, "n", Outcome.OK, http_status=200, stats=stats))
        return outcome.ranked[0].reason

    listed("a:latest")
    assert embed("a", 1.501, 0.001, 3000) == "warm"  # 3,000 tokens in 1.5 s
    assert learned[("n", "a:latest")].prompt_tps == pytest.approx(2000.0)
    rate = router.learning.prompt_rates["n"]
    assert embed("e", 2.2, 2.0, 600) == "cold-fit"  # loads in 2 s, 600 tokens in 0.2 s
    assert learned[("n", "e:latest")].load_seconds == 2.0
    assert learned[("n", "e:latest")].prompt_tps == pytest.approx(3000.0)
    listed("a:latest", "e:latest")
    assert embed("e", 0.201, 0.001, 600) == "warm"
    assert router.learning.prompt_rates["n"] == rate  # e only embeds
    ahead = router.pick(_req("a", api=ApiKind.EMBED, prompt_tokens=3000))  # its one slot taken
    assert embed("a", 10.0, 0.001, 3000).startswith("queued")
    assert learned[("n", "a:latest")].prompt_tps == pytest.approx(2000.0)
    fleet.leases.close(ahead.lease_id)


def test_an_edge_timed_embed_teaches_its_inputs_evaluation_when_sent_ready() -> None:
    """OpenAI's /v1/embeddings says only its inputs' tokens; the edge times the reply whole.
    Sent to an instance ready with a free slot, that time is their evaluation; from a load or
    a queue, it cannot be told apart."""
    fleet = builders.fleet()
    builders.add_node(fleet, "n", models=["a:latest", "b:latest"], loaded=["a:latest"])
    router = builders.router(fleet, "memory_aware")
    timed = GenerationStats(prompt_eval_count=3000, reply_ns=1_500_000_000)
    for model, reason in (("a", "warm"), ("b", "cold-fit")):
        outcome = router.pick(_req(model, api=ApiKind.OPENAI_EMBEDDINGS, prompt_tokens=3000))
        assert outcome.ranked[0].reason == reason
        router.report(Report(outcome.lease_id, "n", Outcome.OK, http_status=200, stats=timed))
    learned = router.learning.learned
    assert learned[("n", "a:latest")].prompt_tps == pytest.approx(2000.0)
    assert (learned[("n", "b:latest")].prompt_tps, learned[("n", "b:latest")].load_seconds) == (
        0.0,
        0.0,
    )
