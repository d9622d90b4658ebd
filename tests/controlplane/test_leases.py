from controlplane.leases import LeaseTable


def test_counts_follow_open_move_close() -> None:
    table = LeaseTable()
    a = table.open("edge-1", "n1", "m")
    table.open("edge-1", "n1", "m")
    assert (table.in_flight("n1"), table.in_flight("n1", "m")) == (2, 2)
    table.move(a.lease_id, "n2")
    assert (table.in_flight("n1"), table.in_flight("n2", "m")) == (1, 1)
    assert table.close(a.lease_id) is not None
    assert table.close(a.lease_id) is None  # closing twice changes nothing
    assert table.in_flight("n2") == 0 and len(table) == 1


def test_an_edge_going_away_releases_its_leases_only() -> None:
    table = LeaseTable()
    table.open("edge-1", "n1", "m")
    table.open("edge-1", "n2", "m")
    kept = table.open("edge-2", "n1", "m")
    assert len(table.release_edge("edge-1")) == 2
    assert table.in_flight("n1") == 1 and table.get(kept.lease_id) is not None


def test_ttl_expiry_brings_counts_back_to_zero() -> None:
    table = LeaseTable()
    lease = table.open("edge-1", "n1", "m")
    lease.opened_at -= 100
    assert [x.lease_id for x in table.expire(ttl=50)] == [lease.lease_id]
    assert table.in_flight("n1") == 0 and table.by_model("n1") == {}


def test_a_lease_is_found_by_its_edge_and_request_id_until_it_closes() -> None:
    table = LeaseTable()
    lease = table.open("edge-1", "n1", "m", request_id=7)
    unary = table.open("edge-1", "n1", "m")  # a unary pick has no request id
    assert table.by_request("edge-1", 7) is lease
    assert table.by_request("edge-2", 7) is None  # ids are per edge
    assert table.by_request("edge-1", 0) is None and unary.request_id == 0
    # Two edges misconfigured with one id: the first lease keeps the key.
    assert table.open("edge-1", "n2", "m", request_id=7).lease_id != lease.lease_id
    assert table.by_request("edge-1", 7) is lease
    table.close(lease.lease_id)
    assert table.by_request("edge-1", 7) is None
    table.open("edge-2", "n1", "m", request_id=9)
    table.release_edge("edge-2")
    assert table.by_request("edge-2", 9) is None


def test_the_prompts_in_flight_are_summed_per_host_and_model() -> None:
    table = LeaseTable()
    long = table.open("e", "a", "m", prompt_seconds=30.0)
    short = table.open("e", "a", "m", prompt_seconds=0.5)
    table.open("e", "a", "show", runs_model=False, prompt_seconds=9.0)  # runs no model
    assert table.prompt_per_model == {("a", "m"): 30.5}
    table.move(long.lease_id, "b")  # retried elsewhere: its prompt goes with it
    assert table.prompt_per_model == {("a", "m"): 0.5, ("b", "m"): 30.0}
    table.close(short.lease_id)
    table.close(long.lease_id)
    assert table.prompt_per_model == {}


def test_the_reply_limits_in_flight_are_counted_per_host_and_model() -> None:
    table = LeaseTable()
    short = table.open("e", "a", "m", max_reply=20)
    table.open("e", "a", "m", max_reply=20)
    table.open("e", "a", "m", max_reply=500)
    unlimited = table.open("e", "a", "m")
    table.open("e", "a", "show", runs_model=False, max_reply=20)  # runs no model
    assert table.limits_per_model == {("a", "m"): {20: 2, 500: 1}}
    table.move(short.lease_id, "b")  # retried elsewhere: its limit goes with it
    assert table.limits_per_model == {("a", "m"): {20: 1, 500: 1}, ("b", "m"): {20: 1}}
    table.close(short.lease_id)
    assert ("b", "m") not in table.limits_per_model
    for lease in [x for x in list(table._leases.values()) if x is not unlimited]:
        table.close(lease.lease_id)
    assert table.limits_per_model == {} and table.in_flight("a", "m") == 1
