"""One event's routing must not hold back the others routed in the same pass, nor be routed
again for ever: an event the database refuses is routed on its own, and one that still cannot
be routed after MAX_ROUTE_ATTEMPTS ends with the error in its trace."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from sqlalchemy import update

from ingestlayer.api.manage import run_apply
from ingestlayer.config import Settings
from ingestlayer.delivery.router import MAX_ROUTE_ATTEMPTS, Router
from ingestlayer.ids import new_id
from ingestlayer.records import NewEvent
from ingestlayer.store.schema import route_jobs
from ingestlayer.store.store import Store
from tests.support.receiver import Receiver, Reply
from tests.support.refusals import refuse_inserts, refuse_updates
from tests.support.server import TEST_SECRET_KEY, RunningServer, wait_for


def _pipeline(steps: list[Any] | None = None) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "features",
                "source": {"match": ["feature.*"]},
                "steps": steps or [],
                # Never sent: these tests stop at the deliveries routing creates.
                "destinations": [{"webhook.out": {"url": "http://127.0.0.1:9/hooks"}}],
            }
        ]
    }


async def _project(store: Store, config: dict[str, Any]) -> str:
    project_id, _, _ = await store.create_project("routing")
    await run_apply(store, project_id, config, dry_run=False, prune=False)
    return project_id


def _event(project_id: str, type_: str, payload: str = '{"feature": "export"}') -> NewEvent:
    now = time.time()
    return NewEvent(new_id("evt"), project_id, type_, payload, None, "api", now, now)


async def _attempted_before(store: Store, event_id: str, attempts: int) -> None:
    """The event's route job as after ``attempts`` routing attempts, due now."""
    async with store.engines.write.begin() as conn:
        await conn.execute(
            update(route_jobs).where(route_jobs.c.event_id == event_id).values(attempts=attempts, due_at=0.0)
        )


async def test_deliveries_the_database_refuses_leave_the_rest_of_the_pass_routed(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        pid = await _project(store, _pipeline())
        await refuse_inserts(store, "deliveries", "NEW.event_type = 'feature.poison'")
        events = [_event(pid, "feature.used") for _ in range(15)]
        poison = _event(pid, "feature.poison")
        events.insert(7, poison)
        await store.insert_events(events)
        router = Router(store, Settings.from_env().with_overrides(secret_key=TEST_SECRET_KEY))
        assert await router.run_once() == 16  # one pass: the refusal used to fail it whole
        routed = await store.list_deliveries(pid, limit=100)
        assert sorted(d["event_id"] for d in routed) == sorted(e.id for e in events if e is not poison)
        # The refused one waits for its next attempt, alone; nothing else is routed again.
        assert await store.pending_route_jobs() == 1
        assert (await store.lease_route_jobs(100, 60.0)).events == []
        # At its last attempt it ends, without deliveries, the refusal in its trace.
        await _attempted_before(store, poison.id, MAX_ROUTE_ATTEMPTS - 1)
        assert await router.run_once() == 1
        assert await store.pending_route_jobs() == 0
        assert len(await store.list_deliveries(pid, limit=100)) == 15
        stored = await store.get_event(pid, poison.id)
        assert stored is not None and stored.trace is not None
        assert stored.trace[0]["outcome"] == "failed"
        assert "refused by a trigger" in stored.trace[0]["steps"][0]["error"]
    finally:
        await store.close()


async def test_an_event_whose_routing_keeps_failing_ends_with_the_error_in_its_trace(db_url: str) -> None:
    """A transform nesting the payload deeper than any JSON writer goes makes the event's body
    impossible to write: routing it failed every time, and it was routed again every half hour
    for ever."""
    store = Store.from_url(db_url)
    try:
        deep = ".".join(["a"] * 300)
        pid = await _project(store, _pipeline([{"transform": {"set": {deep: 1}}}]))
        bad = _event(pid, "feature.used")
        await store.insert_events([bad])
        router = Router(store, Settings.from_env().with_overrides(secret_key=TEST_SECRET_KEY))
        assert await router.run_once() == 1
        assert await store.pending_route_jobs() == 1  # retried later, as a bug may be fixed
        await _attempted_before(store, bad.id, MAX_ROUTE_ATTEMPTS - 1)
        assert await router.run_once() == 1
        assert await store.pending_route_jobs() == 0
        assert await store.list_deliveries(pid, limit=10) == []
        stored = await store.get_event(pid, bad.id)
        assert stored is not None and stored.trace is not None
        (entry,) = stored.trace
        assert entry["outcome"] == "failed"
        assert "Recursion limit reached" in entry["steps"][0]["error"]
        assert f"{MAX_ROUTE_ATTEMPTS} attempts" in entry["steps"][0]["note"]
    finally:
        await store.close()


async def test_a_waiting_events_routing_the_database_refuses_does_not_stop_the_router(
    server: RunningServer, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """An event routed in a task of its own (its pipeline waits on a lookup) is stored by a
    later pass, before that pass takes anything. When the database refused what it produced
    outside the per-event handling (here: the trace saying it waits for its retry), every pass
    failed there: the worker routed nothing more, for any project, until it was restarted."""
    caplog.set_level(logging.ERROR, logger="ingestlayer.router")
    lookup = Receiver()
    await lookup.start()
    try:
        lookup.default = Reply(status=500)
        provider = {"url": lookup.url + "/x?e={email}", "mapping": {"role": "title"}, "cache_ttl": 0}
        person = [{"enrich.person": {"provider": provider, "on_error": "retry"}}]
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": "people",
                        "source": {"match": ["user.*"]},
                        "steps": person,
                        "destinations": [{"webhook.out": {"url": f"{receiver.url}/people"}}],
                    },
                    {
                        "name": "orders",
                        "source": {"match": ["order.*"]},
                        "destinations": [{"webhook.out": {"url": f"{receiver.url}/orders"}}],
                    },
                ]
            }
        )
        store = server.runtime.store
        await refuse_updates(store, "events", """NEW.trace LIKE '%"outcome":"retrying"%'""")
        _, waiting = await server.ingest("user.signed_up", {"email": "ann@corp.io"})

        async def refused() -> bool:  # the lookup failed, and storing its retry was refused
            return any(r.name == "ingestlayer.router" for r in caplog.records)

        await wait_for(refused, timeout=15)
        _, order = await server.ingest("order.placed", {"n": 1})

        async def paths() -> list[str]:
            return sorted(r.path for r in receiver.requests)

        await wait_for(lambda: _has(paths, "/orders"), timeout=15)
        assert await store.pending_route_jobs() == 1  # the refused one waits, not lost
        # Once the lookup answers, it is routed (its trace no longer one the database refuses).
        lookup.default = Reply(status=200, body=b'{"title": "CFO"}')
        await wait_for(lambda: _has(paths, "/people"), timeout=20)
        assert [r.json()["id"] for r in receiver.requests] == [order["id"], waiting["id"]]
    finally:
        await lookup.stop()


async def _has(paths: Any, path: str) -> bool:
    return path in await paths()
