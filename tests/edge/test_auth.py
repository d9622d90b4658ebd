import pytest

from edge.auth import Forbidden, KeyCheck, Unauthorized, read_keys

CHECK = KeyCheck.build(("user-key",), ("admin-key",))


def test_open_when_no_keys_are_configured() -> None:
    KeyCheck.build((), ()).check("/api/pull", "")


@pytest.mark.parametrize("header", ["", "Bearer wrong", "Basic user-key", "Bearer ", "user-key"])
def test_missing_or_wrong_keys_are_refused(header: str) -> None:
    with pytest.raises(Unauthorized):
        CHECK.check("/api/chat", header)


def test_user_keys_cannot_manage_models_admin_keys_can() -> None:
    CHECK.check("/api/chat", "Bearer user-key")
    CHECK.check("/v1/chat/completions", "bearer user-key")
    for path in ("/api/pull", "/api/delete", "/api/copy", "/api/create", "/api/blobs/sha256-x"):
        with pytest.raises(Forbidden):
            CHECK.check(path, "Bearer user-key")
        CHECK.check(path, "Bearer admin-key")


def test_health_and_metrics_stay_open() -> None:
    CHECK.check("/", "")
    CHECK.check("/metrics", "")


def test_key_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "keys"
    path.write_text("# team keys\nk1\n\n  k2  \n")
    assert read_keys(str(path)) == ("k1", "k2")
    with pytest.raises(ValueError, match="cannot read keys"):
        read_keys(str(tmp_path / "missing"))
