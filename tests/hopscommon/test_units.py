import re

import pytest

from hopscommon.units import parse_bytes, parse_go_duration, parse_seconds


@pytest.mark.parametrize(
    ("text", "value"),
    [("24GiB", 24 * 1024**3), ("4.1GB", 4_100_000_000), ("512", 512), ("8 gib", 8 * 1024**3)],
)
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes(text) == value


def test_parse_bytes_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("-1m", -60.0),
        ("250ms", 0.25),
        ("0", 0.0),
        ("1.5s", 1.5),
        ("1.m", 60.0),
        ("1µs", 1e-6),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_unitless_duration_string_is_rejected_like_go() -> None:
    with pytest.raises(ValueError, match='time: missing unit in duration "300"'):
        parse_go_duration("300")
    with pytest.raises(ValueError, match='time: invalid duration "soon"'):
        parse_go_duration("soon")
    for empty in ("", "-", "+"):  # "" used to raise IndexError
        with pytest.raises(ValueError, match=re.escape(f'time: invalid duration "{empty}"')):
            parse_go_duration(empty)
    with pytest.raises(ValueError, match='time: unknown unit "x" in duration "5x"'):
        parse_go_duration("5x")
    with pytest.raises(ValueError, match='time: unknown unit "min" in duration "1h5min"'):
        parse_go_duration("1h5min")
    with pytest.raises(ValueError, match='time: missing unit in duration "1h5"'):
        parse_go_duration("1h5")
    with pytest.raises(ValueError, match='time: invalid duration "-"'):
        parse_go_duration("-")


def test_parse_seconds_accepts_numbers_and_durations() -> None:
    assert parse_seconds("300") == 300.0
    assert parse_seconds("2m") == 120.0
