"""Ingest hands fresh events straight to the router in the same process, their route jobs
already leased; nothing handed over may be lost or routed twice."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from ingestlayer.config import Settings
from ingestlayer.delivery.router import Router
from ingestlayer.records import NewEvent, RouteLease, StoredEvent
from ingestlayer.store.store import Store
from tests.support.server import TEST_SECRET_KEY


def _events(project_id: str, n: int) -> list[NewEvent]:
    from ingestlayer.ids import new_id

    now = time.time()
    return [
        NewEvent(new_id("evt"), project_id, "feature.used", f'{{"n": {i}}}', None, "api", now, now)
        for i in range(n)
    ]


def _stored(ev: NewEvent) -> StoredEvent:
    return StoredEvent(
        ev.id, ev.project_id, ev.type, ev.payload_json, None, ev.source, ev.occurred_at, ev.received_at
    )


async def test_handed_events_are_routed_once_and_leave_no_job(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        project_id, _, _ = await store.create_project("p")
        router = Router(store, Settings.from_env().with_overrides(secret_key=TEST_SECRET_KEY))
        for _ in range(3):  # three ingest groups, three tokens, one routing pass
            batch = _events(project_id, 40)
            token = store.route_token(60.0)
            await store.insert_events(batch, route_token=token)
            router.accept(RouteLease(token, [_stored(e) for e in batch], {e.id: 1 for e in batch}))
        # Leased to us: no other router may take them from the table meanwhile.
        assert (await store.lease_route_jobs(500, 60.0)).events == []
        assert router.backlog() == 120
        took = 0
        while router.backlog():
            took += await router.run_once()
        assert took == 120
        assert await store.pending_route_jobs() == 0
    finally:
        await store.close()


async def test_events_handed_over_but_not_routed_at_shutdown_are_due_again_at_once(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        project_id, _, _ = await store.create_project("p")
        settings = dataclasses.replace(
            Settings.from_env().with_overrides(secret_key=TEST_SECRET_KEY), poll_interval=0.01
        )
        router = Router(store, settings)
        stop = asyncio.Event()
        stop.set()  # stopping already: the router exits without routing
        batch = _events(project_id, 5)
        token = store.route_token(600.0)
        await store.insert_events(batch, route_token=token)
        router.accept(RouteLease(token, [_stored(e) for e in batch], {e.id: 1 for e in batch}))
        await router.run(stop)
        lease = await store.lease_route_jobs(500, 60.0)
        assert sorted(e.id for e in lease.events) == sorted(e.id for e in batch)
    finally:
        await store.close()
