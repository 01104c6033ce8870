"""Routing results count only for the route jobs still leased to the router that routed them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from ingestlayer.ids import new_id
from ingestlayer.records import NewDelivery, NewEvent, StoredEvent
from ingestlayer.store.store import Store


async def test_a_router_whose_lease_expired_adds_nothing_for_jobs_taken_over(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("leases")
        now = time.time()
        events = [NewEvent(new_id("evt"), pid, "a.b", "{}", None, "api", now, now) for _ in range(3)]
        await store.insert_events(events)
        slow = await store.lease_route_jobs(10, 0.05)  # a router that stalls past its lease
        assert len(slow.events) == 3
        await asyncio.sleep(0.2)
        taken = await store.lease_route_jobs(1, 60.0)  # another router takes one job over
        assert len(taken.events) == 1

        def deliveries(evs: Sequence[StoredEvent]) -> list[NewDelivery]:
            return [NewDelivery(new_id("dlv"), pid, e.id, "a.b", "pip_x", "dst_x", "{}") for e in evs]

        created, _ = await store.complete_routing(slow, deliveries(slow.events), {})
        assert created == 2  # the two jobs still under the stalled lease; not the one taken over
        created, _ = await store.complete_routing(taken, deliveries(taken.events), {})
        assert created == 1
        leased = await store.lease_deliveries(10, 60.0)
        assert sorted(d.event_id for d in leased) == sorted(e.id for e in events)  # one each
        assert not (await store.lease_route_jobs(10, 60.0)).events
    finally:
        await store.close()
