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
    # A new outage starts afresh.
    outage.failed(TimeoutError())
    assert (
        caplog.records[-1].getMessage()
        == "leasing deliveries failed: database unavailable: TimeoutError; retrying"
    )
