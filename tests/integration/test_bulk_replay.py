"""Bulk replay by filter: the first ``limit`` matches in id order, a bounded batch per transaction."""

from __future__ import annotations

import time

from sqlalchemy import func, select

from ingestlayer.ids import new_id
from ingestlayer.records import AttemptResult, NewDelivery, NewEvent
from ingestlayer.store.schema import deliveries
from ingestlayer.store.store import Store
from tests.support.write_log import WriteLog


async def _ended(store: Store, pid: str, destination_id: str, status: str, n: int) -> list[str]:
    """``n`` deliveries to ``destination_id`` that ended ``status`` after one attempt."""
    now = time.time()
    evs = [NewEvent(new_id("evt"), pid, "feature.used", "{}", None, "api", now, now) for _ in range(n)]
    await store.insert_events(evs)
    lease = await store.lease_route_jobs(n, 60)
    dlv = [NewDelivery(new_id("dlv"), pid, e.id, e.type, "pip_x", destination_id, "{}") for e in evs]
    await store.complete_routing(lease, dlv, {})
    leased = await store.lease_deliveries(n, 60)
    await store.record_attempts(
        [AttemptResult(d.id, pid, d.lease_token, 1, now, 3.0, 500, None, "no", status, None) for d in leased]
    )
    return sorted(d.id for d in dlv)


async def _pending(store: Store) -> int:
    async with store.engines.read.connect() as conn:
        query = select(func.count()).select_from(deliveries).where(deliveries.c.status == "pending")
        return int((await conn.execute(query)).scalar_one())


async def test_bulk_replay_takes_the_first_matches_a_batch_per_transaction(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        dead = await _ended(store, pid, "dst_x", "dead", 7)
        delivered = await _ended(store, pid, "dst_x", "delivered", 2)
        elsewhere = await _ended(store, pid, "dst_y", "dead", 1)
        log = WriteLog(store, lambda: _pending(store))

        first = await store.replay(
            pid, status=["dead"], destination_ids=["dst_x"], limit=5, batch=2, pause=0, target_seconds=60
        )

        assert first == dead[:5]
        assert log.seen == [2, 4, 5]  # pending after each transaction: never more than 2 at once
        for did in dead[:5]:
            d = await store.get_delivery(pid, did)
            assert d is not None and d["status"] == "pending" and d["finished_at"] is None
        for did in [*dead[5:], *elsewhere]:
            d = await store.get_delivery(pid, did)
            assert d is not None and d["status"] == "dead"
        for did in delivered:
            d = await store.get_delivery(pid, did)
            assert d is not None and d["status"] == "delivered"

        # Run again for the rest: the ones replayed are no longer dead.
        rest = await store.replay(
            pid, status=["dead"], destination_ids=["dst_x"], limit=100, batch=2, pause=0
        )
        assert rest == dead[5:]
        assert await store.replay(pid, status=["dead"], destination_ids=["dst_x"], batch=2, pause=0) == []
    finally:
        await store.close()


async def test_bulk_replay_leaves_other_projects_alone(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        other, _, _ = await store.create_project("other")
        mine = await _ended(store, pid, "dst_x", "dead", 3)
        theirs = await _ended(store, other, "dst_x", "dead", 3)
        assert await store.replay(pid, status=["dead"], batch=1, pause=0) == mine
        for did in theirs:
            d = await store.get_delivery(other, did)
            assert d is not None and d["status"] == "dead"
    finally:
        await store.close()


async def test_a_slow_replay_transaction_halves_the_next_batch(db_url: str) -> None:
    """A transaction over the time target halves the next batch (down to one delivery), as the
    retention purge's do: on SQLite each holds the only writer, and batches of 1,000 held it up
    to 110 ms at 300,000 deliveries. Every match is still replayed, once."""
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        dead = await _ended(store, pid, "dst_x", "dead", 9)
        log = WriteLog(store, lambda: _pending(store))

        # Every transaction takes longer than no time at all.
        replayed = await store.replay(pid, status=["dead"], batch=4, pause=0, target_seconds=0.0)

        assert replayed == dead
        assert log.seen == [4, 6, 7, 8, 9]  # pending after each transaction
    finally:
        await store.close()
