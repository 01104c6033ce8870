"""What an attempt keeps of an answer: at most EXCERPT_BYTES, cut between characters."""

from __future__ import annotations

import pytest

from ingestlayer.destinations.base import EXCERPT_BYTES, excerpt


@pytest.mark.parametrize("tail", ["é", "€", "😀"], ids=["2-byte", "3-byte", "4-byte"])
def test_a_character_the_cut_would_split_is_left_out_whole(tail: str) -> None:
    for lead in range(EXCERPT_BYTES - 4, EXCERPT_BYTES):
        got = excerpt(("a" * lead + tail * 300).encode())
        assert got is not None
        assert len(got.encode()) <= EXCERPT_BYTES, lead
        assert "\ufffd" not in got, lead
        assert got.rstrip(tail) == "a" * lead


def test_bytes_that_are_not_utf8_are_still_shown_replaced() -> None:
    assert excerpt(b"ok \xff\xfe done") == "ok \ufffd\ufffd done"
    assert excerpt(b"cut \xe2\x82") == "cut \ufffd"  # the whole answer, ending mid-character
