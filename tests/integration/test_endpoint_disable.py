"""Disabling an endpoint ends its waiting deliveries at once ("pending deliveries go dead"), not
at their next attempt hours later; they can be replayed once it is enabled again."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ingestlayer import metrics
from ingestlayer.ids import new_id
from ingestlayer.records import AttemptResult, NewDelivery, NewEvent
from ingestlayer.store.store import DISABLED_DESTINATION_ERROR, Store
from ingestlayer.timefmt import parse_iso
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, start_server, wait_for
from tests.support.write_log import WriteLog

# The first attempt at once, the next an hour later: a failed delivery waits as "retrying".
HOURLY = {"schedule": [0, 3600], "jitter": 0}


@pytest.fixture
async def one_at_a_time(db_url: str) -> AsyncIterator[RunningServer]:
    """A server that attempts one delivery per destination at a time: while the receiver holds
    one, the next waits as "pending"."""
    s = await start_server(db_url, delivery_concurrency_per_destination=1)
    yield s
    await s.stop()


async def send(server: RunningServer, type_: str) -> str:
    status, body = await server.ingest(type_, {"n": 1})
    assert status == 202, body
    eid: str = body["id"]
    return eid


async def delivery_of(server: RunningServer, event_id: str, statuses: tuple[str, ...]) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        _, ev = await server.request("GET", f"/v1/events/{event_id}")
        found = [d for d in ev["deliveries"] if d["status"] in statuses]
        return found[0] if found else None

    result: dict[str, Any] = await wait_for(check)
    return result


async def test_disabling_ends_waiting_deliveries_at_once(
    one_at_a_time: RunningServer, receiver: Receiver
) -> None:
    server = one_at_a_time
    status, ep = await server.request(
        "POST",
        "/v1/endpoints",
        json={"url": receiver.url + "/hooks", "events": ["invoice.*"], "retry": HOURLY},
    )
    assert status == 201, ep
    url = f"/v1/endpoints/{ep['id']}"

    # One delivery failed once and waits an hour for its next attempt.
    receiver.plan = [Reply(status=500)]
    retrying = await delivery_of(server, await send(server, "invoice.failed"), ("retrying",))
    assert retrying["next_attempt_at"] and retrying["last_status_code"] == 500
    # One is being attempted (the receiver holds it), so the next one waits as pending.
    receiver.plan = [Reply(status=200, delay=1.5)]
    held_id = await send(server, "invoice.created")
    held = await delivery_of(server, held_id, ("delivering",))
    pending = await delivery_of(server, await send(server, "invoice.paid"), ("pending",))

    def dead_attempts() -> float | None:
        return metrics.REGISTRY.get_sample_value("ingestlayer_delivery_attempts_total", {"result": "dead"})

    dead_before = dead_attempts() or 0.0
    before = time.time()
    status, off = await server.request("PATCH", url, json={"enabled": False})
    assert status == 200 and off["enabled"] is False
    # Counted in the attempts metric as the dispatcher counts the deliveries it ends.
    assert dead_attempts() == dead_before + 2

    # At once, not at their next attempt: both dead, with the reason the dispatcher gives.
    for waiting in (retrying, pending):
        status, d = await server.request("GET", f"/v1/deliveries/{waiting['id']}")
        assert status == 200
        assert d["status"] == "dead", d
        assert d["last_error"] == "destination is disabled"
        assert d["last_status_code"] is None and d["next_attempt_at"] is None
        assert before - 1 < parse_iso(d["finished_at"]) < time.time() + 1
        last = d["attempts"][-1]
        assert last["error"] == "destination is disabled" and last["status_code"] is None
        assert last["n"] == d["attempt_count"] == len(d["attempts"])
    status, d = await server.request("GET", f"/v1/deliveries/{retrying['id']}")
    assert [a["status_code"] for a in d["attempts"]] == [500, None]
    # The one in flight is left to its attempt, which the receiver answers.
    done = await delivery_of(server, held_id, ("delivered", "dead"))
    assert done["id"] == held["id"] and done["status"] == "delivered"
    _, counts = await server.request("GET", f"/v1/deliveries?destination={ep['destination_id']}")
    assert counts["counts"].get("retrying", 0) == counts["counts"].get("pending", 0) == 0
    assert len(receiver.requests) == 2  # the failed attempt and the held one: nothing since

    # Enabled again, they are replayed like any dead delivery, and arrive.
    status, on = await server.request("PATCH", url, json={"enabled": True})
    assert status == 200 and on["enabled"] is True
    status, replayed = await server.request(
        "POST", "/v1/deliveries/replay", json={"status": ["dead"], "destination": ep["destination_id"]}
    )
    assert status == 200, replayed
    for waiting in (retrying, pending):
        again = await delivery_of(server, waiting["event_id"], ("delivered",))
        assert again["id"] == waiting["id"]
    types = [r.headers["X-Ingestlayer-Event"] for r in receiver.requests[2:]]
    assert sorted(types) == ["invoice.failed", "invoice.paid"]


async def test_disabling_leaves_other_destinations_alone(srv: RunningServer, receiver: Receiver) -> None:
    made = []
    for path in ("/a", "/b"):
        status, ep = await srv.request(
            "POST",
            "/v1/endpoints",
            json={"url": receiver.url + path, "events": ["invoice.*"], "retry": HOURLY},
        )
        assert status == 201, ep
        made.append(ep)
    receiver.default = Reply(status=503)
    eid = await send(srv, "invoice.failed")

    async def both_retrying() -> list[dict[str, Any]] | None:
        _, ev = await srv.request("GET", f"/v1/events/{eid}")
        ds: list[dict[str, Any]] = ev["deliveries"]
        return ds if len(ds) == 2 and all(d["status"] == "retrying" for d in ds) else None

    await wait_for(both_retrying)
    status, _ = await srv.request("PATCH", f"/v1/endpoints/{made[0]['id']}", json={"enabled": False})
    assert status == 200
    _, ev = await srv.request("GET", f"/v1/events/{eid}")
    by_dest = {d["destination_id"]: d for d in ev["deliveries"]}
    assert by_dest[made[0]["destination_id"]]["status"] == "dead"
    assert by_dest[made[1]["destination_id"]]["status"] == "retrying"
    assert by_dest[made[1]["destination_id"]]["last_error"] == "HTTP 503"


@pytest.mark.parametrize(
    ("method", "change", "error"),
    [
        ("PATCH", {"enabled": False}, "destination is disabled"),
        ("DELETE", None, "destination was deleted"),
    ],
)
async def test_an_attempt_failing_after_its_endpoint_went_away_ends_dead_at_once(
    server: RunningServer, receiver: Receiver, method: str, change: dict[str, Any] | None, error: str
) -> None:
    """The endpoint is disabled or deleted while the receiver holds an attempt, which then fails:
    the delivery ends ``dead`` at once, as the ones waiting did. It used to wait as "retrying" for
    its next attempt, an hour away here, for a destination that was gone."""
    status, ep = await server.request(
        "POST",
        "/v1/endpoints",
        json={"url": receiver.url + "/hooks", "events": ["invoice.*"], "retry": HOURLY},
    )
    assert status == 201, ep
    receiver.plan = [Reply(status=500, delay=1.0)]
    held = await delivery_of(server, await send(server, "invoice.failed"), ("delivering",))

    async def held_by_the_receiver() -> bool:
        # Leased is not sent yet: on a loaded machine the change could land between the lease
        # and the request, and the attempt would fail for the change, never reaching the receiver.
        return bool(receiver.requests)

    await wait_for(held_by_the_receiver)
    status, _ = await server.request(method, f"/v1/endpoints/{ep['id']}", json=change)
    assert status in (200, 204)

    await delivery_of(server, held["event_id"], ("dead",))
    status, d = await server.request("GET", f"/v1/deliveries/{held['id']}")
    assert status == 200, d
    assert d["status"] == "dead" and d["last_error"] == error, d
    assert d["next_attempt_at"] is None and d["finished_at"]
    assert [(a["status_code"], a["error"]) for a in d["attempts"]] == [(500, "HTTP 500"), (None, error)]
    assert len(receiver.requests) == 1


async def _waiting_delivery(store: Store, pid: str, destination_id: str) -> str:
    """A delivery to the destination that waits for its first attempt (pending)."""
    now = time.time()
    event = NewEvent(new_id("evt"), pid, "invoice.paid", "{}", None, "api", now, now)
    await store.insert_events([event])
    lease = await store.lease_route_jobs(10, 60)
    new = NewDelivery(new_id("dlv"), pid, event.id, event.type, "pip_x", destination_id, "{}")
    await store.complete_routing(lease, [new], {})
    return new.id


async def test_recording_a_retry_for_a_live_destination_takes_no_write_transaction_of_its_own(
    db_url: str,
) -> None:
    """The check for a destination gone meanwhile reads only: on SQLite a write transaction
    would take the writer from ingest for every batch of attempts holding a retry."""
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        webhook = {"kind": "webhook.out", "config": {"settings": {"url": "https://example.com/h"}}}
        await store.apply_config(pid, [{"id": "dst_live", "name": "live", **webhook}], [])
        await _waiting_delivery(store, pid, "dst_live")
        now = time.time()
        (leased,) = await store.lease_deliveries(10, 60)
        log = WriteLog(store, lambda: asyncio.sleep(0))
        failed = AttemptResult(
            leased.id, pid, leased.lease_token, 1, now, 3.0, 500, "HTTP 500", None, "retrying", now + 3600
        )
        await store.record_attempts([failed])
        assert log.seen == []
        stored = await store.get_delivery(pid, leased.id)
        assert stored is not None and stored["status"] == "retrying", stored
    finally:
        await store.close()


async def test_a_disable_undone_before_its_waiting_deliveries_are_ended_leaves_them_waiting(
    db_url: str,
) -> None:
    """The request that disables an endpoint ends its waiting deliveries after the change has
    committed. Another request (or process) may enable it again in between: the deliveries of an
    enabled endpoint must go on waiting for their attempt, not end "destination is disabled"."""
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        dest = {
            "id": "dst_a",
            "name": "a",
            "kind": "webhook.out",
            "config": {"settings": {"url": "https://example.com/h"}},
        }
        await store.apply_config(pid, [dest], [])
        waiting = await _waiting_delivery(store, pid, "dst_a")
        await store.apply_config(pid, [{**dest, "enabled": False}], [])  # the disabling request
        await store.apply_config(pid, [dest], [])  # enabled again, by another request
        # The disabling request goes on, past its commit.
        assert await store.end_waiting_deliveries(pid, "dst_a", DISABLED_DESTINATION_ERROR) == []
        stored = await store.get_delivery(pid, waiting)
        assert stored is not None and stored["status"] == "pending", stored
        assert stored["attempt_log"] == []
    finally:
        await store.close()
