"""OutageLog: a loop's database outage in a few lines, not a traceback per retry."""

from __future__ import annotations

import logging

import pytest

from ingestlayer.store.outage_log import OutageLog


def test_one_line_as_it_begins_then_one_every_few_seconds_with_a_count_then_one_as_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "t")
    now = [100.0]
    outage = OutageLog(logging.getLogger("t"), "leasing deliveries", every=5.0, monotonic=lambda: now[0])
    outage.succeeded()  # nothing to say while it works
    for _ in range(12):  # a failure a second for 12 s
        outage.failed(ConnectionRefusedError(111, "Connection refused"))
        now[0] += 1.0
    outage.succeeded()
    outage.succeeded()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "leasing deliveries failed: database unavailable: ConnectionRefusedError: [Errno 111] "
        "Connection refused; retrying",
        "leasing deliveries still failing: 5 failures in the last 5s, 5s since the first; latest: "
        "ConnectionRefusedError: [Errno 111] Connection refused",
        "leasing deliveries still failing: 5 failures in the last 5s, 10s since the first; latest: "
        "ConnectionRefusedError: [Errno 111] Connection refused",
        "leasing deliveries works again, after 12 failures over 12.0s",
    ]
    assert all(r.exc_info is None for r in caplog.records)
    # A new outage starts afresh (once the last line is `every` seconds old).
    now[0] += 5.0
    outage.failed(TimeoutError())
    assert (
        caplog.records[-1].getMessage()
        == "leasing deliveries failed: database unavailable: TimeoutError; retrying"
    )


def test_a_database_that_fails_on_and_off_is_a_line_every_few_seconds_not_two_per_flap(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A nearly full disk lets a write through after each checkpoint, twice a second: each flap
    was a "failed" line and a "works again" line, four lines a second for as long as it lasted."""
    caplog.set_level(logging.INFO, "t")
    now = [100.0]
    outage = OutageLog(logging.getLogger("t"), "storing ingested events", every=5.0, monotonic=lambda: now[0])
    for _ in range(40):  # 20 s: failing for 0.4 s, then one write through, twice a second
        for _ in range(4):
            outage.failed(OSError(28, "No space left on device"))
            now[0] += 0.1
        outage.succeeded()
        now[0] += 0.1
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) <= 10, messages  # was 80
    assert messages[0].startswith("storing ingested events failed: database unavailable: OSError")
    assert messages[1] == "storing ingested events works again, after 4 failures over 0.4s"
    # The failures not told line by line are counted in the next line.
    assert messages[2].endswith("retrying (and 40 more failures, on and off, since the last line)")
    assert messages[-1].startswith("storing ingested events works again")
