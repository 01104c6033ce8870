"""Retention purges old events with their finished deliveries, and never touches unfinished work."""

from __future__ import annotations

import asyncio
import itertools
import time

import asyncpg
from sqlalchemy import func, select

from ingestlayer.ids import new_id
from ingestlayer.records import AttemptResult, NewDelivery, NewEvent
from ingestlayer.store.schema import attempts, events
from ingestlayer.store.store import Store
from tests.support.write_log import WriteLog


def _event(project_id: str, received_at: float) -> NewEvent:
    return NewEvent(
        id=new_id("evt"),
        project_id=project_id,
        type="user.signed_up",
        payload_json="{}",
        idempotency_key=None,
        source="api",
        occurred_at=received_at,
        received_at=received_at,
    )


async def test_purge_keeps_unfinished_deliveries(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        old = time.time() - 40 * 86400
        finished, unfinished, recent = _event(pid, old), _event(pid, old), _event(pid, time.time())
        await store.insert_events([finished, unfinished, recent])
        lease = await store.lease_route_jobs(10, 60)
        deliveries = [
            NewDelivery(new_id("dlv"), pid, e.id, e.type, "pip_x", "dst_x", "{}")
            for e in (finished, unfinished, recent)
        ]
        await store.complete_routing(lease, deliveries, {})
        leased = {d.event_id: d for d in await store.lease_deliveries(10, 60)}
        done = leased[finished.id]
        await store.record_attempts(
            [AttemptResult(done.id, pid, done.lease_token, 1, old, 3.0, 200, None, "ok", "delivered", None)]
        )
        await store.release_leases([leased[unfinished.id], leased[recent.id]])

        removed = await store.purge_older_than(time.time() - 30 * 86400)

        assert removed == 1
        assert await store.get_event(pid, finished.id) is None
        assert await store.get_delivery(pid, done.id) is None
        assert await store.get_event(pid, unfinished.id) is not None  # still owed a delivery
        assert await store.get_event(pid, recent.id) is not None
        assert await store.purge_older_than(time.time() - 30 * 86400) == 0
    finally:
        await store.close()


async def test_purge_reaches_finished_events_behind_kept_ones(db_url: str) -> None:
    """More kept events than one batch, oldest first: the purge walks past them to the rest."""
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        # The destinations exist: a retry for a destination that does not is ended at once.
        webhook = {"kind": "webhook.out", "config": {"settings": {"url": "https://example.com/h"}}}
        await store.apply_config(pid, [{"id": d, "name": d, **webhook} for d in ("dst_x", "dst_y")], [])
        old, now = time.time() - 40 * 86400, time.time()
        # Ids count up in creation order, so this is also the order the purge walks them in.
        pending1, pending2, retrying, delivered1, unrouted, dead, mixed, delivered2 = (
            _event(pid, old) for _ in range(8)
        )
        recent = _event(pid, now)
        routed = [pending1, pending2, retrying, delivered1, dead, mixed, delivered2, recent]
        await store.insert_events(routed)
        lease = await store.lease_route_jobs(20, 60)
        dlv = {e.id: NewDelivery(new_id("dlv"), pid, e.id, e.type, "pip_x", "dst_x", "{}") for e in routed}
        mixed_pending = NewDelivery(new_id("dlv"), pid, mixed.id, mixed.type, "pip_y", "dst_y", "{}")
        await store.complete_routing(lease, [*dlv.values(), mixed_pending], {})
        # Inserted after routing: its route job stays pending.
        await store.insert_events([unrouted])

        leased = {d.id: d for d in await store.lease_deliveries(20, 60)}
        outcome = {
            dlv[retrying.id].id: "retrying",
            dlv[delivered1.id].id: "delivered",
            dlv[dead.id].id: "dead",
            dlv[mixed.id].id: "delivered",
            dlv[delivered2.id].id: "delivered",
            dlv[recent.id].id: "delivered",
        }
        results = []
        for did, status in outcome.items():
            retry_at = now + 60 if status == "retrying" else None
            token = leased[did].lease_token
            results.append(AttemptResult(did, pid, token, 1, old, 3.0, None, None, None, status, retry_at))
        await store.record_attempts(results)
        await store.release_leases([d for did, d in leased.items() if did not in outcome])

        kept = [pending1, pending2, retrying, unrouted, mixed]  # 5 kept, ahead of and among the rest
        finished = [delivered1, dead, delivered2]
        finished_attempts = select(attempts.c.id).where(
            attempts.c.delivery_id.in_([dlv[e.id].id for e in finished])
        )
        async with store.engines.read.connect() as conn:
            assert len((await conn.execute(finished_attempts)).all()) == len(finished)

        removed = await store.purge_older_than(now - 30 * 86400, batch=2)

        assert removed == len(finished)
        for e in finished:
            assert await store.get_event(pid, e.id) is None
            assert await store.get_delivery(pid, dlv[e.id].id) is None
        async with store.engines.read.connect() as conn:
            assert (await conn.execute(finished_attempts)).all() == []
        remaining = await store.list_events(pid, limit=100)
        assert {e.id for e in remaining} == {e.id for e in [*kept, recent]}
        for e in [pending1, pending2, retrying, mixed, recent]:
            assert await store.get_delivery(pid, dlv[e.id].id) is not None
        assert await store.get_delivery(pid, mixed_pending.id) is not None
        kept_retry = await store.get_delivery(pid, dlv[retrying.id].id)
        assert kept_retry is not None
        assert len(kept_retry["attempt_log"]) == 1
        assert await store.purge_older_than(now - 30 * 86400, batch=2) == 0
    finally:
        await store.close()


async def test_a_replay_during_the_purge_is_not_lost(pg_url: str) -> None:
    """PostgreSQL runs a replay and the purge at once: a finished delivery that a replay makes
    due again, in a transaction still open when the purge looks, must not be deleted under it."""
    store = Store.from_url(pg_url)
    try:
        pid, _, _ = await store.create_project("acme")
        old = time.time() - 40 * 86400
        event = _event(pid, old)
        await store.insert_events([event])
        lease = await store.lease_route_jobs(10, 60)
        delivery = NewDelivery(new_id("dlv"), pid, event.id, event.type, "pip_x", "dst_x", "{}")
        await store.complete_routing(lease, [delivery], {})
        (leased,) = await store.lease_deliveries(10, 60)
        await store.record_attempts(
            [
                AttemptResult(
                    leased.id, pid, leased.lease_token, 1, old, 3.0, 200, None, "ok", "delivered", None
                )
            ]
        )

        replay = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            tx = replay.transaction()
            await tx.start()
            await replay.execute("UPDATE deliveries SET status = 'pending' WHERE id = $1", delivery.id)
            purge = asyncio.create_task(store.purge_older_than(time.time() - 30 * 86400))
            await asyncio.sleep(0.3)
            assert not purge.done()  # waiting for the replay's row lock
            await tx.commit()
            assert await asyncio.wait_for(purge, 10) == 0
        finally:
            await replay.close()
        kept = await store.get_delivery(pid, delivery.id)
        assert kept is not None and kept["status"] == "pending"
        assert await store.get_event(pid, event.id) is not None
    finally:
        await store.close()


async def test_an_event_routed_during_the_purge_keeps_its_deliveries(pg_url: str) -> None:
    """The router deletes an old event's route job and inserts its deliveries in one commit. A
    purge that read the event's deliveries before that commit and its route jobs after it saw
    neither, and deleted the event with the deliveries it had just been given."""
    store = Store.from_url(pg_url)
    try:
        pid, _, _ = await store.create_project("acme")
        old = time.time() - 40 * 86400
        (finished,) = await _finished_events(store, pid, old, 1)
        (finished_delivery,) = await store.list_deliveries(pid, limit=10)
        unrouted = _event(pid, old + 1)  # accepted while no worker ran, still to be routed
        await store.insert_events([unrouted])
        lease = await store.lease_route_jobs(10, 60)  # a router took it up
        assert [e.id for e in lease.events] == [unrouted.id]

        other = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            tx = other.transaction()
            await tx.start()
            # Any short row lock on an old delivery (a replay, the dispatcher) holds the purge up.
            await other.execute("SELECT 1 FROM deliveries WHERE id = $1 FOR UPDATE", finished_delivery["id"])
            purge = asyncio.create_task(store.purge_older_than(time.time() - 30 * 86400))
            await asyncio.sleep(0.3)
            assert not purge.done()
            routed = NewDelivery(new_id("dlv"), pid, unrouted.id, unrouted.type, "pip_x", "dst_x", "{}")
            routing = asyncio.create_task(store.complete_routing(lease, [routed], {}))
            await asyncio.sleep(0.3)
            await tx.commit()
            await asyncio.wait_for(asyncio.gather(purge, routing), 10)
        finally:
            await other.close()
        assert await store.get_event(pid, unrouted.id) is not None
        kept = await store.get_delivery(pid, routed.id)
        assert kept is not None and kept["status"] == "pending"
        assert await store.get_event(pid, finished.id) is None  # the finished one still went
    finally:
        await store.close()


async def _finished_events(store: Store, pid: str, received_at: float, n: int) -> list[NewEvent]:
    """``n`` events received at ``received_at``, each with one delivered delivery and its attempt."""
    evs = [_event(pid, received_at) for _ in range(n)]
    await store.insert_events(evs)
    lease = await store.lease_route_jobs(n, 60)
    dlv = [NewDelivery(new_id("dlv"), pid, e.id, e.type, "pip_x", "dst_x", "{}") for e in evs]
    await store.complete_routing(lease, dlv, {})
    leased = await store.lease_deliveries(n, 60)
    await store.record_attempts(
        [
            AttemptResult(d.id, pid, d.lease_token, 1, received_at, 3.0, 200, None, "ok", "delivered", None)
            for d in leased
        ]
    )
    return evs


async def _count_events(store: Store) -> int:
    async with store.engines.read.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(events))).scalar_one())


async def test_purge_holds_the_writer_for_at_most_a_batch(db_url: str) -> None:
    """Each purge transaction deletes at most ``batch`` events (SQLite's one writer is free in
    between, for ingest); the old finished events all go, with their deliveries and attempts."""
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        now = time.time()
        old = await _finished_events(store, pid, now - 40 * 86400, 7)
        recent = await _finished_events(store, pid, now, 2)
        log = WriteLog(store, lambda: _count_events(store))

        removed = await store.purge_older_than(now - 30 * 86400, batch=3, target_seconds=60, pause=0)

        assert removed == 7
        counts = [9, *log.seen]
        assert [a - b for a, b in itertools.pairwise(counts)] == [3, 3, 1]
        assert {e.id for e in await store.list_events(pid, limit=100)} == {e.id for e in recent}
        async with store.engines.read.connect() as conn:
            left = (await conn.execute(select(attempts.c.delivery_id))).scalars().all()
            assert len(left) == 2
        for e in old:
            assert await store.get_event(pid, e.id) is None
    finally:
        await store.close()


async def test_a_slow_purge_transaction_halves_the_next_batch(db_url: str) -> None:
    """A transaction over the time target halves the next batch (down to one event): batches of
    events with many deliveries and attempts stay short. Everything old still goes."""
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        now = time.time()
        await _finished_events(store, pid, now - 40 * 86400, 9)
        log = WriteLog(store, lambda: _count_events(store))

        # Every transaction takes longer than no time at all.
        removed = await store.purge_older_than(now - 30 * 86400, batch=4, target_seconds=0.0, pause=0)

        assert removed == 9
        counts = [9, *log.seen]
        assert [a - b for a, b in itertools.pairwise(counts)] == [4, 2, 1, 1, 1]
        assert await _count_events(store) == 0
    finally:
        await store.close()


async def test_purge_with_nothing_old_takes_no_write_transaction(db_url: str) -> None:
    """Retention runs every 10 minutes: with nothing past the cutoff it must not hold the writer
    while it looks (the walk passes every recent event)."""
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        await _finished_events(store, pid, time.time(), 3)
        log = WriteLog(store, lambda: _count_events(store))
        assert await store.purge_older_than(time.time() - 30 * 86400, batch=2, pause=0) == 0
        assert log.seen == []
        assert await _count_events(store) == 3
    finally:
        await store.close()
