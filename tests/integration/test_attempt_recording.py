"""Recording attempts when the database was out of reach, and attempts cut short at shutdown.

A live worker keeps the outcomes it could not record and records them once the database
answers, instead of leaving each delivery ``delivering`` until its lease expires and sending it
again (the attempt missing from its log). Recording again must be safe: an attempt that an
earlier try did commit (its answer lost with the connection) is not logged twice, and one whose
lease was lost meanwhile is logged without touching the newer state.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any

import asyncpg
import pytest

from ingestlayer.delivery.dispatcher import Dispatcher
from ingestlayer.ids import new_id
from ingestlayer.records import AttemptResult, LeasedDelivery, NewDelivery, NewEvent
from ingestlayer.secretbox import SecretBox
from ingestlayer.store.store import Store
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, wait_for
from tests.support.server import test_settings as settings_for

FAST = {"schedule": [0, 0.05, 0.05], "jitter": 0}


async def one_leased(
    store: Store, lease_seconds: float = 60, url: str = "https://example.com/h"
) -> tuple[str, LeasedDelivery]:
    pid, _, _ = await store.create_project("acme")
    webhook = {"kind": "webhook.out", "config": {"settings": {"url": url}}}
    await store.apply_config(pid, [{"id": "dst_a", "name": "a", **webhook}], [])
    now = time.time()
    event = NewEvent(new_id("evt"), pid, "invoice.paid", "{}", None, "api", now, now)
    await store.insert_events([event])
    lease = await store.lease_route_jobs(10, 60)
    await store.complete_routing(
        lease, [NewDelivery(new_id("dlv"), pid, event.id, event.type, "pip_x", "dst_a", "{}")], {}
    )
    (leased,) = await store.lease_deliveries(10, lease_seconds)
    return pid, leased


def outcome(d: LeasedDelivery, status: str, code: int | None, at: float) -> AttemptResult:
    return AttemptResult(
        d.id,
        d.project_id,
        d.lease_token,
        d.attempts + 1,
        at,
        12.5,
        code,
        None if code == 200 else "HTTP 500",
        None,
        status,
        at if status == "retrying" else None,
    )


async def test_recording_again_logs_an_attempt_once(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        pid, leased = await one_leased(store)
        delivered = outcome(leased, "delivered", 200, time.time())
        await store.record_attempts([delivered])
        # The first try committed, but its answer was lost: the worker records it again.
        await store.record_attempts([delivered], again=True)
        stored = await store.get_delivery(pid, leased.id)
        assert stored is not None and stored["status"] == "delivered", stored
        assert [(a["n"], a["status_code"]) for a in stored["attempt_log"]] == [(1, 200)]
    finally:
        await store.close()


async def test_a_late_record_after_the_lease_was_lost_logs_the_attempt_and_keeps_the_newer_state(
    db_url: str,
) -> None:
    store = Store.from_url(db_url)
    try:
        pid, first = await one_leased(store, lease_seconds=0.01)
        await asyncio.sleep(0.05)
        # The lease expired while this worker could not record: another one took the delivery
        # and failed an attempt of its own.
        (second,) = await store.lease_deliveries(10, 60)
        assert second.id == first.id and second.lease_token != first.lease_token
        later = time.time() + 3600
        await store.record_attempts(
            [dataclasses.replace(outcome(second, "retrying", 500, time.time()), next_retry_at=later)]
        )
        await store.record_attempts([outcome(first, "delivered", 200, time.time())], again=True)
        stored = await store.get_delivery(pid, first.id)
        assert stored is not None
        assert (stored["status"], stored["attempts"], stored["last_status_code"]) == ("retrying", 1, 500), (
            stored
        )
        assert sorted(a["status_code"] for a in stored["attempt_log"]) == [200, 500]
    finally:
        await store.close()


async def test_the_attempt_log_is_in_the_order_the_attempts_began(db_url: str) -> None:
    """A worker paused past its lease records its attempt after the worker that took the
    delivery over has recorded a later one: the log lists them as they happened, the late one
    first, not the delivered delivery with a failure as its newest attempt."""
    store = Store.from_url(db_url)
    try:
        pid, first = await one_leased(store, lease_seconds=0.01)
        began = time.time()
        await asyncio.sleep(0.05)
        (second,) = await store.lease_deliveries(10, 60)
        await store.record_attempts([outcome(second, "delivered", 200, time.time())])
        paused = dataclasses.replace(outcome(first, "retrying", None, began), error="timed out after 3s")
        await store.record_attempts([paused], again=True)
        stored = await store.get_delivery(pid, first.id)
        assert stored is not None and stored["status"] == "delivered", stored
        assert [(a["status_code"], a["error"]) for a in stored["attempt_log"]] == [
            (None, "timed out after 3s"),
            (200, None),
        ]
    finally:
        await store.close()


async def test_an_attempt_cut_short_is_logged_without_counting_toward_the_schedule(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        pid, leased = await one_leased(store)
        cut = dataclasses.replace(outcome(leased, "retrying", None, time.time()), error="cut short")
        await store.release_leases([], [cut])
        (again,) = await store.lease_deliveries(10, 60)  # due at once
        assert (again.id, again.attempts, again.retry_base) == (leased.id, 1, 1)
        stored = await store.get_delivery(pid, leased.id)
        assert stored is not None
        assert [(a["n"], a["error"]) for a in stored["attempt_log"]] == [(1, "cut short")]
    finally:
        await store.close()


def failing(real: Any, faults: list[Exception], calls: list[bool]) -> Any:
    """``real``, raising these first, one per call."""

    async def record(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("again", False))
        if faults:
            raise faults.pop(0)
        return await real(*args, **kwargs)

    return record


@pytest.mark.parametrize(
    "fault",
    [
        ConnectionResetError("connection reset by peer (injected)"),
        # What asyncpg raised after pg_terminate_backend ended the session mid-statement.
        asyncpg.InternalClientError("cannot switch to state 15; another operation (2) is in progress"),
    ],
    ids=["reset", "session-ended"],
)
async def test_an_outcome_the_database_could_not_take_is_recorded_once_it_answers(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture, fault: Exception
) -> None:
    status, _ = await server.request(
        "POST", "/v1/endpoints", json={"url": receiver.url + "/hook", "events": ["order.*"], "retry": FAST}
    )
    assert status == 201
    caplog.set_level(logging.INFO, "ingestlayer.delivery")
    store = server.runtime.store
    calls: list[bool] = []
    store.record_attempts = failing(store.record_attempts, [fault, fault], calls)  # type: ignore[method-assign]

    _, ev = await server.ingest("order.placed", {"n": 1})

    async def delivered() -> bool:
        _, got = await server.request("GET", f"/v1/events/{ev['id']}")
        return bool(got["deliveries"]) and got["deliveries"][0]["status"] == "delivered"

    # Far sooner than the lease (90 s) would have let another attempt happen.
    await wait_for(delivered, timeout=20)
    _, got = await server.request("GET", f"/v1/events/{ev['id']}")
    status, detail = await server.request("GET", f"/v1/deliveries/{got['deliveries'][0]['id']}")
    assert status == 200, detail
    assert [(a["n"], a["status_code"]) for a in detail["attempts"]] == [(1, 200)]
    assert len(receiver.requests) == 1
    # The tries after the first may repeat what it committed: they say so.
    assert calls[0] is False and all(calls[1:]), calls
    # One line for the outage and one when it ended, no traceback. (The second follows the
    # log's sync, which a reader of the delivery does not wait for.)

    def outage_lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("recording attempts")]

    async def ended() -> bool:
        return len(outage_lines()) >= 2

    await wait_for(ended, timeout=10)
    lines = outage_lines()
    assert len(lines) == 2 and all(r.exc_info is None for r in lines), [r.getMessage() for r in lines]


async def test_a_lease_handed_back_over_a_lost_connection_is_handed_back_again(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """One dropped session (pg_terminate_backend, a failover) failed the only try to hand leases
    back: the deliveries waited out their whole lease (90 s by default) before any worker took
    them again. The release is tried again after a short pause."""
    store = Store.from_url(db_url)
    try:
        _, leased = await one_leased(store)
        real = store.release_leases
        failures = [ConnectionResetError("the session was ended")]

        async def once_lost(*args: Any) -> None:
            if failures:
                raise failures.pop()
            await real(*args)

        store.release_leases = once_lost  # type: ignore[method-assign]
        dispatcher = Dispatcher(store, settings_for(db_url), SecretBox("k" * 32))
        with caplog.at_level(logging.WARNING):
            await dispatcher._release([leased])
        assert failures == []  # it failed once, then went
        assert not [r for r in caplog.records if "releasing" in r.getMessage()]
        (again,) = await store.lease_deliveries(10, 60)  # due at once, not in 60 s
        assert again.id == leased.id
    finally:
        await store.close()


async def close_both(dispatcher: Dispatcher, store: Store) -> None:
    """Close a dispatcher made without starting it (its destinations and HTTP clients), then
    its store."""
    await dispatcher._close_all()
    for client in (dispatcher._session, dispatcher._http):
        if client is not None:
            await client.close()
    await store.close()


async def test_an_attempt_begun_after_its_lease_sends_nothing_and_says_so(
    db_url: str, receiver: Receiver
) -> None:
    """Begun once its lease (less the margin for recording it) has run out, an attempt sends
    nothing; its log said "cut short after 0.0 s", a timeout that never happened."""
    store = Store.from_url(db_url)
    dispatcher = Dispatcher(store, settings_for(db_url, delivery_lease_seconds=2.0), SecretBox("k" * 32))
    try:
        _, leased = await one_leased(store, 0.3, receiver.url + "/late")  # within the 0.5 s margin
        dests = await dispatcher._destinations({"dst_a"})
        result = await dispatcher.send_one(leased, dests["dst_a"])
        assert result.status == "retrying", result
        assert (result.error or "").startswith("not sent: the delivery's lease"), result
        assert receiver.requests == []
    finally:
        await close_both(dispatcher, store)


async def test_an_attempt_begun_late_in_its_lease_ends_with_the_lease(
    db_url: str, receiver: Receiver
) -> None:
    """With a lease shorter than a destination's timeout, attempts are cut short at the end of
    their lease, so that none still runs when another worker may retake the delivery. The cut
    was timed from the send, which begins a moment after the lease (the destination is read
    first; a delivery routed here waits for its insert): slow, that moment ran the attempt past
    the lease, and the delivery was retaken and sent beside it."""
    store = Store.from_url(db_url)
    dispatcher = Dispatcher(store, settings_for(db_url, delivery_lease_seconds=2.0), SecretBox("k" * 32))
    try:
        # The receiver holds the request past the lease's end (it arrives a second or more
        # after the lease began), but not much longer: its teardown waits for the answer.
        receiver.plan = [Reply(status=200, delay=2.0)]
        _, leased = await one_leased(store, 2.0, receiver.url + "/slow")
        ends = time.time() + 2.0  # the lease's end, or a moment after it
        await asyncio.sleep(1.0)  # the moment between the lease and the send, slow
        dests = await dispatcher._destinations({"dst_a"})
        attempt = asyncio.create_task(dispatcher.send_one(leased, dests["dst_a"]))
        await asyncio.sleep(ends - time.time() + 0.05)
        # The lease has run out: another worker retakes the delivery and sends it.
        (retaken,) = await store.lease_deliveries(1, 2.0)
        assert retaken.id == leased.id
        assert attempt.done(), "the first attempt still runs beside the second"
        result = attempt.result()
        assert result.status == "retrying" and "at the end of the delivery's lease" in (result.error or "")
        assert len(receiver.requests) == 1
    finally:
        await close_both(dispatcher, store)
