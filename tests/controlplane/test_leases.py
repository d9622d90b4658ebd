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
