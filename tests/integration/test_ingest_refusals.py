"""Ingest requests share transactions (group commit), and ingest may store an event's deliveries
with it: a row the database refuses must fail no other request, and must not refuse an event
whose routing alone the database will not store."""

from __future__ import annotations

import asyncio
import time

from ingestlayer.ids import new_id
from ingestlayer.records import IngestResult, NewEvent
from ingestlayer.store.group_commit import GroupCommitter
from ingestlayer.store.store import Store
from tests.integration.test_delivery import webhook_pipeline
from tests.support.receiver import Receiver
from tests.support.refusals import refuse_inserts
from tests.support.server import RunningServer, wait_for


async def test_an_event_the_database_refuses_fails_only_its_own_request(db_url: str) -> None:
    store = Store.from_url(db_url)
    committer = GroupCommitter(store.insert_events)
    try:
        pid, _, _ = await store.create_project("groups")
        await refuse_inserts(store, "events", "NEW.type = 'feature.poison'")
        now = time.time()

        def event(type_: str) -> NewEvent:
            return NewEvent(new_id("evt"), pid, type_, "{}", None, "api", now, now)

        requests = [[event("feature.used")] for _ in range(10)]
        requests.insert(4, [event("feature.used"), event("feature.poison")])
        committer.start()
        # Submitted together: one group, one transaction.
        answers = await asyncio.gather(*(committer.submit(r) for r in requests), return_exceptions=True)
        refused = answers.pop(4)
        assert isinstance(refused, Exception) and "refused by a trigger" in str(refused)
        assert all(isinstance(a, list) and len(a) == 1 and isinstance(a[0], IngestResult) for a in answers), (
            answers
        )
        stored = await store.list_events(pid, limit=100)
        assert sorted(e.id for e in stored) == sorted(r[0].id for r in requests[:4] + requests[5:])
    finally:
        await committer.close()
        await store.close()


async def test_deliveries_the_database_refuses_at_ingest_do_not_refuse_the_events(
    server: RunningServer, receiver: Receiver
) -> None:
    """Ingest stores the deliveries of events it routes itself in the events' transaction; when
    the database refuses those, the events are stored all the same and left to the router."""
    await server.apply(webhook_pipeline(receiver.url))
    # One event first, so that ingest routes by a compiled configuration from then on.
    status, _ = await server.request(
        "POST",
        "/v1/events",
        key=server.ingest_key,
        json={"type": "feature.used", "payload": {"feature": "api"}},
    )
    assert status == 202

    async def received(n: int) -> bool:
        return len(receiver.requests) == n

    await wait_for(lambda: received(1))
    await refuse_inserts(server.runtime.store, "deliveries", "NEW.event_type = 'feature.poison'")
    events = [{"type": "feature.used", "payload": {"feature": "export", "i": i}} for i in range(15)]
    events.insert(7, {"type": "feature.poison", "payload": {"feature": "export"}})
    status, body = await server.request("POST", "/v1/events", key=server.ingest_key, json={"batch": events})
    assert status == 202, body
    await wait_for(lambda: received(16))
    poison = body["items"][7]["id"]
    status, ev = await server.request("GET", f"/v1/events/{poison}")
    assert status == 200 and ev["deliveries"] == []
    # Left to the router, which tries again later (and in the end gives up, in its trace).
    assert await server.runtime.store.pending_route_jobs() == 1
    await asyncio.sleep(0.3)
    assert len(receiver.requests) == 16
