"""ISO 8601 rendering: the fast path must agree with datetime to the millisecond."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from ingestlayer.timefmt import iso, parse_iso

MIN, MAX = -62135596800.0, 253402300799.0  # years 0001 to 9999, what ingest accepts


def _reference(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@given(st.floats(min_value=MIN, max_value=MAX, allow_nan=False))
def test_iso_matches_datetime(ts: float) -> None:
    assert iso(ts) == _reference(ts)


def test_edges_of_rounding_and_of_the_calendar() -> None:
    for ts in (0.0, -0.0005, -1.9999996, 1.9999996, 0.0004999, 1732550000.9995, MIN, MAX, 1e9 + 0.5):
        assert iso(ts) == _reference(ts), ts
    assert iso(0.0) == "1970-01-01T00:00:00.000Z"
    assert iso(MIN) == "0001-01-01T00:00:00.000Z"
    assert iso(None) is None


def test_round_trip_at_millisecond_precision() -> None:
    ts = 1764098440.123
    assert abs(parse_iso(iso(ts) or "") - ts) < 1e-3


def test_times_beyond_what_iso_8601_writes_show_as_the_nearest_it_can() -> None:
    # A retry due 1e300 s from now was stored before delays were bounded: every page and answer
    # showing it failed with OverflowError.
    assert iso(1e300) == "9999-12-31T23:59:59.000Z"
    assert iso(-1e300) == "0001-01-01T00:00:00.000Z"
    assert iso(253402300799.0) == "9999-12-31T23:59:59.000Z"
