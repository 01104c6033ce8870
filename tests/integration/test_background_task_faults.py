"""Background tasks outside the supervised worker loops outlive an error nobody expected.

A bug (here: an error injected at the one point each task does not guard) used to end the
task with nothing in the log while the HTTP side went on: ingest requests waited for an
answer forever, or deliveries were sent and never recorded. The rest is the real server,
database and receiver.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import uvicorn

from ingestlayer.listen import listening_socket
from ingestlayer.records import IngestResult
from ingestlayer.runtime import Runtime
from ingestlayer.worker_probes import _ProbeServer, serve_probes
from tests.integration.test_routing_in_background import API_KEY, configure, recipe, send
from tests.support.chat_server import ChatServer
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, start_server, wait_for
from tests.support.server import test_settings as settings_for


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


async def delivered(server: RunningServer, event_id: str) -> bool:
    _, ev = await server.request("GET", f"/v1/events/{event_id}")
    return bool(ev["deliveries"]) and ev["deliveries"][0]["status"] == "delivered"


async def test_attempts_are_recorded_after_the_attempt_writer_meets_an_unexpected_error(
    db_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(db_url, delivery_lease_seconds=2)
    try:
        dispatcher = server.runtime.dispatcher
        real = dispatcher._record
        calls: list[int] = []

        async def failing_once(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected: a bug in recording attempts")
            return await real(*args, **kwargs)

        dispatcher._record = failing_once  # type: ignore[method-assign]
        caplog.set_level(logging.ERROR, logger="ingestlayer")
        status, _ = await server.request(
            "POST", "/v1/endpoints", json={"url": receiver.url + "/hook", "events": ["order.*"]}
        )
        assert status == 201

        _, first = await server.ingest("order.placed", {"n": 1})
        await wait_for(lambda: asyncio.sleep(0, bool(calls)), timeout=10)
        assert any(r.exc_info and "injected" in str(r.exc_info[1]) for r in caplog.records)
        # The writer is still there: a later event's attempt is recorded, and the one whose
        # outcome was lost is sent again once its lease expires, and recorded then.
        _, second = await server.ingest("order.placed", {"n": 2})
        await wait_for(lambda: delivered(server, second["id"]), timeout=10)
        await wait_for(lambda: delivered(server, first["id"]), timeout=15)
    finally:
        await asyncio.wait_for(server.stop(), 20)


@pytest.fixture
async def model() -> AsyncIterator[ChatServer]:
    server = await ChatServer(api_key=API_KEY, answer=lambda _body: "critical").start()
    yield server
    await server.stop()


async def test_an_event_routed_in_the_background_is_routed_after_an_unexpected_error(
    db_url: str, receiver: Receiver, model: ChatServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Its pipeline waits on a model, so it is routed in a task of its own (held_routes)."""
    server = await start_server(db_url, route_lease_seconds=1.0)
    try:
        router = server.runtime.router
        real = router._route
        calls: list[int] = []

        async def failing_once(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            if len(calls) == 1:
                raise RuntimeError("injected: a bug past routing's own error handling")
            return await real(*args, **kwargs)

        router._route = failing_once  # type: ignore[method-assign]
        caplog.set_level(logging.ERROR, logger="ingestlayer")
        await configure(server, server.admin_key, recipe(model.url, receiver.url + "/hook"))

        event_id = await send(server, server.ingest_key, "Checkout is down")
        # Not held (and its lease renewed) forever: routed again once the lease runs out.
        hooked = lambda: asyncio.sleep(0, any(r.path == "/hook" for r in receiver.requests))  # noqa: E731
        await wait_for(hooked, timeout=15)
        assert [r.json()["id"] for r in receiver.requests] == [event_id]
        assert len(calls) == 2
        assert any(r.exc_info and "injected" in str(r.exc_info[1]) for r in caplog.records)
    finally:
        await asyncio.wait_for(server.stop(), 20)


async def test_a_worker_whose_probe_server_fails_says_so_at_once_and_still_stops_cleanly(
    sqlite_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.ERROR, logger="ingestlayer")
    rt = Runtime(settings_for(sqlite_url), api=False, worker=True)
    sock = listening_socket("127.0.0.1", 0)
    readyz = f"http://127.0.0.1:{sock.getsockname()[1]}/readyz"

    async def failing_tick(self: uvicorn.Server, counter: int) -> bool:
        raise RuntimeError("injected: a bug in the probe server's loop")

    async def said() -> int:
        return sum(bool(r.exc_info and "injected" in str(r.exc_info[1])) for r in caplog.records)

    # Leaving the block is the worker's exit: it raised that error again, after the drain.
    async with serve_probes(rt, sock), aiohttp.ClientSession() as http:
        await rt.start()
        monkeypatch.setattr(_ProbeServer, "on_tick", failing_tick)  # its task ends at the next tick
        await wait_for(said, timeout=5)  # in the log while the worker runs, not at its exit
        async with http.get(readyz) as resp:  # and the probes still answer
            assert resp.status == 200
        await rt.shutdown()
    assert await said() == 1


async def test_an_attempt_that_fails_unexpectedly_is_said_at_once_and_made_again(
    db_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """An error past send_one's own handling ended the attempt's task, said only as "Task
    exception was never retrieved" whenever the task was collected, with no delivery named; then
    the delivery was kept leased, with nothing in its attempt log, and made again each time its
    lease ran out. It is a failed attempt now, made again on the destination's schedule."""
    server = await start_server(db_url)
    try:
        dispatcher = server.runtime.dispatcher
        real = dispatcher.send_one
        calls: list[str] = []

        async def failing_once(d: Any, dest: Any) -> Any:
            calls.append(d.id)
            if len(calls) == 1:
                raise RuntimeError("injected: a bug outside the destination")
            return await real(d, dest)

        dispatcher.send_one = failing_once  # type: ignore[method-assign]
        caplog.set_level(logging.ERROR, logger="ingestlayer")
        status, _ = await server.request(
            "POST",
            "/v1/endpoints",
            json={
                "url": receiver.url + "/hook",
                "events": ["order.*"],
                "retry": {"schedule": [0, 0.05], "jitter": 0},
            },
        )
        assert status == 201
        _, sent = await server.ingest("order.placed", {"n": 1})
        await wait_for(lambda: asyncio.sleep(0, bool(calls)), timeout=10)
        await wait_for(
            lambda: asyncio.sleep(0, any(r.exc_info and calls[0] in r.getMessage() for r in caplog.records)),
            timeout=5,
        )
        await wait_for(lambda: delivered(server, sent["id"]), timeout=10)
        status, d = await server.request("GET", f"/v1/deliveries/{calls[0]}")
        assert status == 200, d
        assert [a["error"] for a in d["attempts"]] == ["internal error: RuntimeError", None], d
    finally:
        await asyncio.wait_for(server.stop(), 20)


async def test_an_error_after_attempts_are_recorded_does_not_say_they_were_not(
    db_url: str, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start_server(db_url)
    try:
        dispatcher = server.runtime.dispatcher
        finished: list[str] = []

        def failing(result: Any) -> None:
            finished.append(result.delivery_id)
            raise RuntimeError("injected: a bug after recording")

        dispatcher._on_finished = failing
        caplog.set_level(logging.ERROR, logger="ingestlayer")
        status, _ = await server.request(
            "POST", "/v1/endpoints", json={"url": receiver.url + "/hook", "events": ["order.*"]}
        )
        assert status == 201
        _, sent = await server.ingest("order.placed", {"n": 1})
        await wait_for(lambda: delivered(server, sent["id"]), timeout=10)
        await wait_for(lambda: asyncio.sleep(0, bool(finished)), timeout=5)
        lines = [r.getMessage() for r in caplog.records]
        assert any(line == f"after recording delivery {finished[0]}" for line in lines), lines
        assert not any("failed unexpectedly" in line for line in lines), lines
    finally:
        await asyncio.wait_for(server.stop(), 20)
