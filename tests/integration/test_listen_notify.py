"""On PostgreSQL a worker in another process is woken by the commit that gives it work, instead of
finding the work at its next poll."""

from __future__ import annotations

import asyncio
import time

from ingestlayer.ids import new_id
from ingestlayer.records import NewDelivery, NewEvent
from ingestlayer.store.store import Store


async def test_ingest_and_routing_commits_wake_listeners_elsewhere(pg_url: str) -> None:
    api, worker = Store.from_url(pg_url), Store.from_url(pg_url)  # two processes' stores
    route_woken, deliver_woken, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    listening = asyncio.create_task(worker.listen_for_work(route_woken.set, deliver_woken.set, stop))
    try:
        project_id, _, _ = await api.create_project("p")
        await asyncio.sleep(0.5)  # the listener connects
        now = time.time()
        ev = NewEvent(new_id("evt"), project_id, "a.b", "{}", None, "api", now, now)
        await api.insert_events([ev])
        await asyncio.wait_for(route_woken.wait(), 5)
        assert not deliver_woken.is_set()

        lease = await worker.lease_route_jobs(10, 60.0)
        delivery = NewDelivery(new_id("dlv"), project_id, ev.id, "a.b", "pl_1", "dst_1", "{}")
        created, handed = await worker.complete_routing(lease, [delivery], {}, prelease=0)
        assert (created, handed) == (1, [])
        await asyncio.wait_for(deliver_woken.wait(), 5)
    finally:
        stop.set()
        await asyncio.wait_for(listening, 5)
        await api.close()
        await worker.close()


async def test_sqlite_has_no_signal_and_returns_at_once(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    try:
        await asyncio.wait_for(store.listen_for_work(lambda: None, lambda: None, asyncio.Event()), 1)
    finally:
        await store.close()
