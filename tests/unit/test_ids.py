"""Identifiers: ULID text, produced by our own encoder, must match the ULID specification."""

from __future__ import annotations

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
