from controlplane.breaker import Breaker, BreakerState
from controlplane.model import Outcome
from tests.controlplane.builders import FakeClock


def _breaker() -> tuple[Breaker, FakeClock]:
    clock = FakeClock()
    return Breaker(threshold=3, cooldown=10.0, clock=clock), clock


def test_consecutive_host_failures_open_it() -> None:
    breaker, _ = _breaker()
    for outcome in (Outcome.CONNECT_ERROR, Outcome.BUSY):
        breaker.record(outcome, "l")
    assert breaker.allows()
    breaker.record(Outcome.UPSTREAM_ERROR, "l", "http 500")
    assert breaker.state is BreakerState.OPEN and not breaker.allows()
    assert breaker.last_failure == "http 500"


def test_a_success_in_between_resets_the_count() -> None:
    breaker, _ = _breaker()
    for outcome in (Outcome.BUSY, Outcome.BUSY, Outcome.OK, Outcome.BUSY, Outcome.BUSY):
        breaker.record(outcome, "l")
    assert breaker.state is BreakerState.CLOSED


def test_client_errors_and_cancellations_do_not_count_against_the_host() -> None:
    breaker, _ = _breaker()
    for _ in range(5):
        breaker.record(Outcome.CLIENT_ERROR, "l")
        breaker.record(Outcome.CLIENT_CANCELLED, "l")
        breaker.record(Outcome.REQUEST_ERROR, "l")
    assert breaker.state is BreakerState.CLOSED


def test_client_errors_in_between_do_not_vouch_for_a_failing_host() -> None:
    """Ollama answers a bad request 400 (or an unknown model 404) before any runner is
    involved: a host whose every generation fails still answers those."""
    breaker, clock = _breaker()
    for outcome in (Outcome.UPSTREAM_ERROR, Outcome.CLIENT_ERROR) * 3:
        breaker.record(outcome, "l", "http 500")
    assert breaker.state is BreakerState.OPEN
    clock.now += 10.0
    breaker.on_dispatch("probe")
    breaker.record(Outcome.CLIENT_ERROR, "probe")  # proves nothing: the next one probes
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()


def test_half_open_lets_exactly_one_probe_through() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        breaker.record(Outcome.CONNECT_ERROR, "l")
    clock.now += 10.0
    assert breaker.state is BreakerState.HALF_OPEN and breaker.allows()
    breaker.on_dispatch("probe")
    assert not breaker.allows()  # one probe at a time
    breaker.record(Outcome.OK, "probe")
    assert breaker.state is BreakerState.CLOSED and breaker.allows()


def test_failed_probe_reopens_and_abandoned_probe_frees_the_slot() -> None:
    breaker, clock = _breaker()
    for _ in range(3):
        breaker.record(Outcome.TIMEOUT, "l")
    clock.now += 10.0
    breaker.on_dispatch("probe")
    breaker.abandon("probe")
    assert breaker.allows()
    breaker.on_dispatch("probe2")
    breaker.record(Outcome.CONNECT_ERROR, "probe2")
    assert breaker.state is BreakerState.OPEN
