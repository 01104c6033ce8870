"""A worker in another process is woken by the commit that gives it work, instead of finding the
work at its next poll: by LISTEN/NOTIFY on PostgreSQL, by watching for other connections'
commits on SQLite."""

from __future__ import annotations

import asyncio
import time

from ingestlayer.ids import new_id
from ingestlayer.records import IngestRouting, NewDelivery, NewEvent
from ingestlayer.store.pg_hot import DELIVER_CHANNEL
from ingestlayer.store.store import Store
from tests.support.databases import listening_on


async def test_ingest_and_routing_commits_wake_listeners_elsewhere(pg_url: str) -> None:
    api, worker = Store.from_url(pg_url), Store.from_url(pg_url)  # two processes' stores
    route_woken, deliver_woken, stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    listening = asyncio.create_task(worker.listen_for_work(route_woken.set, deliver_woken.set, stop))
    try:
        project_id, _, _ = await api.create_project("p")
        await listening_on(pg_url, DELIVER_CHANNEL)  # the listener connects (the last channel it adds)
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

        # Deliveries that ingest routed itself wake the dispatchers the same way.
        route_woken.clear()
        deliver_woken.clear()
        routed = NewEvent(new_id("evt"), project_id, "a.b", "{}", None, "api", now, now)
        versions = await api.config_versions([project_id])
        routing = IngestRouting(
            versions=versions,
            traces={routed.id: "[]"},
            deliveries=[NewDelivery(new_id("dlv"), project_id, routed.id, "a.b", "pl_1", "dst_1", "{}")],
        )
        await api.insert_events([routed], routing=routing)
        assert routing.created == 1 and routing.leased == []
        await asyncio.wait_for(deliver_woken.wait(), 5)
        assert not route_woken.is_set()  # nothing left to route

        # Decided at a configuration that has moved since: routed the usual way instead, with
        # a route job (which wakes the routers), no delivery and no trace.
        deliver_woken.clear()
        moved = NewEvent(new_id("evt"), project_id, "a.b", "{}", None, "api", now, now)
        stale = IngestRouting(
            versions={project_id: versions[project_id] - 1},
            traces={moved.id: "[]"},
            deliveries=[NewDelivery(new_id("dlv"), project_id, moved.id, "a.b", "pl_1", "dst_1", "{}")],
        )
        await api.insert_events([moved], routing=stale)
        assert stale.confirmed == set() and stale.created == 0 and stale.leased == []
        await asyncio.wait_for(route_woken.wait(), 5)
        assert not deliver_woken.is_set()
        stored = await api.get_event(project_id, moved.id)
        assert stored is not None and stored.trace is None
        assert await api.pending_route_jobs() == 1

        # Settled at ingest (no pipeline takes it): nothing to do, nobody woken.
        route_woken.clear()
        untaken = NewEvent(new_id("evt"), project_id, "a.b", "{}", None, "api", now, now)
        await api.insert_events([untaken], routing=IngestRouting(versions=versions, untaken={untaken.id}))
        await asyncio.sleep(0.5)
        assert not route_woken.is_set() and not deliver_woken.is_set()
        assert await api.pending_route_jobs() == 1
    finally:
        stop.set()
        await asyncio.wait_for(listening, 5)
        await api.close()
        await worker.close()


async def test_sqlite_workers_are_woken_by_other_connections_commits(sqlite_url: str) -> None:
    api, worker = Store.from_url(sqlite_url), Store.from_url(sqlite_url)  # two processes' stores
    woken: list[float] = []
    stop = asyncio.Event()

    def wake() -> None:
        woken.append(time.monotonic())

    watching = asyncio.create_task(worker.listen_for_work(wake, wake, stop, watch_commits=True))
    try:
        project_id, _, _ = await api.create_project("p")
        await asyncio.sleep(0.05)
        woken.clear()
        # The worker's own commits on its connection are not news to it.
        now = time.time()
        own = NewEvent(new_id("evt"), project_id, "a.b", "{}", None, "api", now, now)
        await worker.insert_events([own])
        await asyncio.sleep(0.05)
        assert woken == []
        await worker.complete_routing(await worker.lease_route_jobs(10, 60.0), [], {})

        # Another connection's commit wakes both (nothing else calls them here: how soon is the
        # watch interval's, COMMIT_WATCH_SECONDS, and measured by bench_delivery's latency run).
        ev = NewEvent(new_id("evt"), project_id, "a.b", "{}", None, "api", now, now)
        await api.insert_events([ev])
        for _ in range(1000):  # 10 s at most, for a loaded machine
            if len(woken) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(woken) == 2, woken
        routing = await worker.lease_route_jobs(10, 60.0)
        assert [e.id for e in routing.events] == [ev.id]
        await worker.complete_routing(routing, [], {})
        await asyncio.sleep(0.05)
        assert len(woken) == 2, woken  # once per commit, not again without one
    finally:
        stop.set()
        await asyncio.wait_for(watching, 5)
        await api.close()
        await worker.close()


async def test_sqlite_without_watching_returns_at_once(sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    try:
        await asyncio.wait_for(store.listen_for_work(lambda: None, lambda: None, asyncio.Event()), 1)
    finally:
        await store.close()
