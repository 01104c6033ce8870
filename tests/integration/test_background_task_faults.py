"""Background tasks outside the supervised worker loops outlive an error nobody expected.

A bug (here: an error injected at the one point each task does not guard) used to end the
task with nothing in the log while the HTTP side went on: ingest requests waited for an
answer forever, or deliveries were sent and never recorded. The rest is the real server,
database and receiver.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from ingestlayer.records import IngestResult
from tests.support.server import RunningServer


async def test_ingest_answers_after_the_group_commit_meets_an_unexpected_error(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    committer = server.runtime.committer
    real = committer._on_commit
    calls: list[int] = []

    def failing_once(results: list[IngestResult]) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("injected: a bug after the commit")
        assert real is not None
        real(results)

    committer._on_commit = failing_once
    caplog.set_level(logging.ERROR, logger="ingestlayer")

    # Committed before the error: answered 202, not left waiting (the writer task died).
    status, first = await asyncio.wait_for(server.ingest("order.placed", {"n": 1}), 10)
    assert status == 202, first
    assert calls == [1]
    assert any(r.exc_info and "injected" in str(r.exc_info[1]) for r in caplog.records)
    # The writer is still there: the next request is stored and answered too.
    status, second = await asyncio.wait_for(server.ingest("order.placed", {"n": 2}), 10)
    assert status == 202, second
    for sent in (first, second):
        status, _ = await server.request("GET", f"/v1/events/{sent['id']}")
        assert status == 200
