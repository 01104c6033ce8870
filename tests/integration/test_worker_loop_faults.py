"""The worker's loops outlive a database error at any point.

When PostgreSQL restarted under load, a read of the destinations right after a lease raised
outside the dispatcher's error handling: the loop ended with nothing logged, deliveries stopped
until the process was restarted, and SIGTERM then hung (the attempt writer waited for a stop
that the dead loop would never see). The faults are injected at those exact points; the rest is
the real server, database and receiver.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from ingestlayer.delivery.router import Router
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, start_server, wait_for

FAST = {"schedule": [0, 0.05, 0.05, 0.05], "jitter": 0}


def failing_once(real: Any, calls: list[int]) -> Any:
    async def read(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("connection reset by peer (injected)")
        return await real(*args, **kwargs)

    return read


async def delivered(server: RunningServer, event_id: str) -> bool:
    _, ev = await server.request("GET", f"/v1/events/{event_id}")
    return bool(ev["deliveries"]) and ev["deliveries"][0]["status"] == "delivered"


async def test_a_database_error_after_a_lease_neither_stops_deliveries_nor_shutdown(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    status, _ = await server.request(
        "POST", "/v1/endpoints", json={"url": receiver.url + "/hook", "events": ["order.*"], "retry": FAST}
    )
    assert status == 201
    receiver.fail_times(1)  # the retry is leased from the table: the path that failed
    calls: list[int] = []
    store = server.runtime.store
    store.get_destinations = failing_once(store.get_destinations, calls)  # type: ignore[method-assign]

    _, first = await server.ingest("order.placed", {"n": 1})
    await wait_for(lambda: delivered(server, first["id"]), timeout=15)
    assert calls, "the fault was never hit"
    assert any("leased deliveries failed" in r.getMessage() for r in caplog.records) or any(
        "handed-over deliveries failed" in r.getMessage() for r in caplog.records
    )
    # The loop is still there: later events are delivered too.
    _, second = await server.ingest("order.placed", {"n": 2})
    await wait_for(lambda: delivered(server, second["id"]), timeout=15)
    await asyncio.wait_for(server.stop(), 20)  # the fixture's stop is then a no-op
    server.stop = _done  # type: ignore[method-assign]


async def _done() -> None:
    return None


async def test_a_loop_that_fails_is_started_again(
    db_url: str, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_run = Router.run
    runs: list[int] = []

    async def run_failing_first(self: Router, stop: asyncio.Event) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("injected: an error the loop did not expect")
        await real_run(self, stop)

    monkeypatch.setattr(Router, "run", run_failing_first)
    caplog.set_level(logging.ERROR, logger="ingestlayer")
    server = await start_server(db_url)
    try:
        status, _ = await server.request(
            "POST", "/v1/endpoints", json={"url": receiver.url + "/hook", "events": ["order.*"]}
        )
        assert status == 201
        _, sent = await server.ingest("order.placed", {"n": 1})
        await wait_for(lambda: delivered(server, sent["id"]), timeout=15)
        assert len(runs) == 2
        assert any("the router loop failed; starting it again" in r.getMessage() for r in caplog.records)
    finally:
        await asyncio.wait_for(server.stop(), 20)


async def test_a_stored_configuration_that_no_longer_passes_fails_only_its_own_deliveries(
    server: RunningServer, receiver: Receiver
) -> None:
    """A configuration stored before a check existed (here: a header name HTTP cannot carry)
    fails its own attempts, and only those: it used to fail the whole lease it came in."""
    for path in ("/good", "/bad"):
        status, _ = await server.request(
            "POST", "/v1/endpoints", json={"url": receiver.url + path, "events": ["order.*"], "retry": FAST}
        )
        assert status == 201
    store = server.runtime.store
    cfg = await store.load_project_config(server.project_id)
    (bad,) = [d for d in cfg.destinations.values() if d.config["settings"]["url"].endswith("/bad")]
    settings = {**bad.config["settings"], "headers": {"X Bad": "v"}}
    row = {"id": bad.id, "name": bad.name, "kind": bad.kind, "config": {**bad.config, "settings": settings}}
    await store.apply_config(server.project_id, [{**row, "enabled": True}], [])

    _, sent = await server.ingest("order.placed", {"n": 1})

    async def settled() -> dict[str, Any] | None:
        _, ev = await server.request("GET", f"/v1/events/{sent['id']}")
        by_status = {d["status"] for d in ev["deliveries"]}
        return ev if len(ev["deliveries"]) == 2 and "delivered" in by_status and "dead" in by_status else None

    ev = await wait_for(settled, timeout=15)
    assert [r.path for r in receiver.requests] == ["/good"]
    (failed,) = [d for d in ev["deliveries"] if d["status"] == "dead"]
    assert "invalid configuration" in failed["last_error"] and "headers" in failed["last_error"]


async def test_a_loop_that_ends_by_itself_is_not_started_again(
    server: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """On SQLite the listener has nothing to listen to and returns at once: that is not a
    failure to report, nor a loop to start again every second."""
    await asyncio.sleep(2.5)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [t.get_name() for t in server.runtime._tasks if t.done() and t.exception() is not None] == []
