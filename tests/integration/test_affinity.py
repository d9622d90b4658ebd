"""A quick version of bench/affinity.py: with two alike warm hosts, a conversation's follow-up
turns go back to the host that has it cached, which no policy blind to sessions does."""

from __future__ import annotations

import argparse

import pytest

from bench.affinity import run_one

pytestmark = pytest.mark.slow


def test_follow_ups_go_back_to_the_host_that_has_the_conversation_cached() -> None:
    args = argparse.Namespace(
        seed=7, conversations=4, turns=3, system_tokens=1000, think=5.0, multiuser_cache=False
    )
    results = {policy: run_one(policy, args) for policy in ("least_busy", "memory_aware")}
    ours, theirs = results["memory_aware"], results["least_busy"]
    assert ours["turns"] == theirs["turns"] == 12
    assert ours["follow_ups_to_the_same_host"] == 1.0
    assert [t["route"].startswith("affinity") for t in ours["turns_detail"]].count(True) == 8
    assert ours["prompt_cached_share"] > theirs["prompt_cached_share"] + 0.2, results
    assert ours["follow_up_ttft_s"]["p50"] < theirs["follow_up_ttft_s"]["p50"] / 2, results


def test_conversations_arriving_one_at_a_time_spread_over_the_hosts_caches() -> None:
    """With few turns at once, nothing spreads the first turns over the hosts by itself: a new
    conversation must not take over another's cached prompt while a host has a slot free.
    (Before, ties went to the lower id: conversations piled onto one host of two slots and took
    each other's caches, and follow-ups evaluated their whole conversations again, up to 1,303
    tokens.) With the multi-user cache, a slot holds its conversation until taken."""
    args = argparse.Namespace(
        seed=7, conversations=4, turns=3, system_tokens=1000, think=30.0, multiuser_cache=True
    )
    result = run_one("memory_aware", args)
    assert {t["node"] for t in result["turns_detail"]} == {"a", "b"}
    assert result["follow_ups_to_the_same_host"] == 1.0
    fresh = [t["prompt_tokens"] - t["cached_tokens"] for t in result["turns_detail"] if t["turn"]]
    assert max(fresh) < 200, result  # every follow-up evaluates only its question and reply
