from controlplane.model import RouteRequest
from controlplane.policies import REGISTRY, Candidate

REQ = RouteRequest(model="m:latest")


def _c(node: str, in_flight: int = 0, weight: float = 1.0) -> Candidate:
    return Candidate(node, f"http://{node}", False, in_flight, in_flight, 1, weight)


def test_every_policy_returns_every_candidate_once() -> None:
    candidates = [_c("a"), _c("b"), _c("c")]
    for name, factory in REGISTRY.items():
        ranked = factory(1).pick(REQ, candidates, 10)
        assert sorted(r.candidate.node_id for r in ranked) == ["a", "b", "c"], name
        assert all(r.reason for r in ranked)


def test_round_robin_rotates_per_model() -> None:
    picker = REGISTRY["round_robin"](None)
    firsts = [
        picker.pick(REQ, [_c("a"), _c("b"), _c("c")], 3)[0].candidate.node_id for _ in range(6)
    ]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


def test_random_spreads_over_hosts() -> None:
    picker = REGISTRY["random"](7)
    firsts = {
        picker.pick(REQ, [_c("a"), _c("b"), _c("c")], 3)[0].candidate.node_id for _ in range(60)
    }
    assert firsts == {"a", "b", "c"}


def test_least_busy_prefers_fewer_in_flight_weighted() -> None:
    picker = REGISTRY["least_busy"](1)
    assert picker.pick(REQ, [_c("a", 3), _c("b", 1), _c("c", 2)], 3)[0].candidate.node_id == "b"
    # twice the weight halves the effective load: 3/2 < 2
    weighted = picker.pick(REQ, [_c("a", 3, weight=2.0), _c("c", 2)], 2)
    assert weighted[0].candidate.node_id == "a"


def test_policies_return_at_most_limit() -> None:
    candidates = [_c(n) for n in "abcdef"]
    for name, factory in REGISTRY.items():
        assert len(factory(1).pick(REQ, candidates, 2)) == 2, name
