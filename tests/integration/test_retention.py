"""Retention purges old events with their finished deliveries, and never touches unfinished work."""

from __future__ import annotations

import time

from ingestlayer.ids import new_id
from ingestlayer.records import AttemptResult, NewDelivery, NewEvent
from ingestlayer.store.store import Store


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
