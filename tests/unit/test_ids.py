"""Identifiers: ULID text, produced by our own encoder, must match the ULID specification."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ulid import ULID

from ingestlayer.ids import encode_ulid, new_id


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_encoding_matches_the_reference_ulid_library(value: int) -> None:
    assert encode_ulid(value) == str(ULID.from_int(value))


def test_extremes() -> None:
    assert encode_ulid(0) == "0" * 26
    assert encode_ulid(2**128 - 1) == "7" + "Z" * 25


def test_ids_parse_back_as_ulids_carrying_the_current_time() -> None:
    import time

    before = int(time.time() * 1000)
    ulid = ULID.from_str(new_id("evt")[4:])
    assert before - 1 <= ulid.milliseconds <= int(time.time() * 1000) + 1


def test_batches_of_ids_are_ulids_in_order_and_continue_the_sequence() -> None:
    from ingestlayer.ids import new_ids

    before = new_id("evt")
    batch = new_ids("evt", 3000)  # crosses at least two 1024-value boundaries
    after = new_id("evt")
    ids = [before, *batch, after]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for i in batch:
        assert i.startswith("evt_") and len(i) == 30
        assert str(ULID.from_str(i[4:])) == i[4:]
    values = [int(ULID.from_str(i[4:])) for i in batch]
    assert values == list(range(values[0], values[0] + len(values)))  # consecutive
    assert new_ids("dlv", 0) == [] and len(new_ids("dlv", 1)) == 1


def test_single_ids_across_digit_boundaries_are_the_values_they_count_up_from() -> None:
    """new_id reuses the leading digits of the previous id: across the carries of its last two
    digits (every 1024 values) each id must still be the next value."""
    from ingestlayer import ids

    ids._state["rand"] = (1 << 79) - 1500  # the next ids in this millisecond carry past 1024s
    made = [new_id("evt") for _ in range(5000)]
    assert made == sorted(made) and len(set(made)) == len(made)
    values = [int(ULID.from_str(i[4:])) for i in made]
    same_ms = [b - a for a, b in itertools.pairwise(values) if (a >> 80) == (b >> 80)]
    # Counted up by one within each millisecond: a stale head would jump back at a carry.
    assert len(same_ms) > 4000 and set(same_ms) == {1}


def test_ids_carry_the_database_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process whose machine runs an hour behind the database still makes ids of the
    database's time, as every other stored time (ingestlayer.clock)."""
    import time

    from ingestlayer import clock

    monkeypatch.setattr(clock.CLOCK, "offset", 3600.0)
    ulid = ULID.from_str(new_id("evt")[4:])
    assert abs(ulid.milliseconds - (time.time() + 3600) * 1000) < 2000
