"""In ``serve``, ingest settles what it can before storing a batch: events that no pipeline
takes get no route job, and pipelines whose steps cannot wait run at ingest, their deliveries
and trace stored in the event's own transaction. Both only while the configuration that
decided is still the project's current one; everything else is routed by the router."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import yaml
from sqlalchemy import func, select

from ingestlayer.config import Settings
from ingestlayer.ids import new_id
from ingestlayer.pipeline.apply import apply_plan, plan
from ingestlayer.pipeline.config import parse_config
from ingestlayer.records import NewEvent
from ingestlayer.runtime import Runtime
from ingestlayer.store.schema import deliveries
from ingestlayer.store.store import Store
from tests.support.routing import route_all
from tests.support.server import TEST_SECRET_KEY

HOOK = "http://127.0.0.1:9/hook"  # never called: the dispatcher does not run here


def _pipeline(name: str, match: str, *steps: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"match": [match]},
        "steps": list(steps),
        "destinations": [{"webhook.out": {"url": HOOK}}],
    }


async def _apply(store: Store, project_id: str, *pipelines: dict[str, Any]) -> None:
    cfg = parse_config(yaml.safe_load(yaml.safe_dump({"pipelines": list(pipelines)})))
    await apply_plan(store, await plan(store, project_id, cfg))


def _events(
    project_id: str, event_type: str, n: int = 1, payload: str = "{}", key: str | None = None
) -> list[NewEvent]:
    now = time.time()
    return [NewEvent(new_id("evt"), project_id, event_type, payload, key, "api", now, now) for _ in range(n)]


async def _deliveries_for(store: Store, events: list[NewEvent]) -> list[tuple[str, str]]:
    """(status, body) of each delivery of these events."""
    async with store.engines.read.connect() as conn:
        query = select(deliveries.c.status, deliveries.c.body).where(
            deliveries.c.event_id.in_([e.id for e in events])
        )
        return [(r[0], r[1]) for r in await conn.execute(query)]


async def _count_deliveries(store: Store) -> int:
    async with store.engines.read.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(deliveries)) or 0)


def _runtime(db_url: str) -> Runtime:
    rt = Runtime(
        Settings.from_env().with_overrides(database_url=db_url, secret_key=TEST_SECRET_KEY),
        api=True,
        worker=True,
    )
    rt.committer.start()
    return rt


async def test_untaken_events_skip_routing_until_the_configuration_moves(db_url: str) -> None:
    rt = _runtime(db_url)
    store, router = rt.store, rt.router
    try:
        project_id, _, _ = await store.create_project("p")
        await _apply(store, project_id, _pipeline("billing", "invoice.*"))

        # The router has compiled nothing yet: the first event is routed the usual way.
        first = _events(project_id, "feature.used")
        await rt.committer.submit(first)
        assert await store.pending_route_jobs() == 1 and router.backlog() == 1
        await router.run_once()
        assert await store.pending_route_jobs() == 0

        # Now it knows no pipeline takes feature.used: stored, and nothing left to route.
        untaken = _events(project_id, "feature.used", 5)
        results = await rt.committer.submit(untaken)
        assert [r.id for r in results] == [e.id for e in untaken]
        assert await store.pending_route_jobs() == 0 and router.backlog() == 0
        for ev in untaken:
            stored = await store.get_event(project_id, ev.id)
            assert stored is not None and stored.trace is None

        # A pipeline for feature.* arrives: the router's compiled configuration is now stale,
        # so the next feature.used gets its route job and reaches the new pipeline.
        await _apply(store, project_id, _pipeline("billing", "invoice.*"), _pipeline("usage", "feature.*"))
        after = _events(project_id, "feature.used")
        await rt.committer.submit(after)
        assert await store.pending_route_jobs() == 1 and router.backlog() == 1
        await router.run_once()
        assert len(await _deliveries_for(store, after)) == 1
        assert await _deliveries_for(store, untaken) == []
    finally:
        await rt.shutdown()


async def test_pipelines_that_cannot_wait_are_routed_in_the_ingest_transaction(db_url: str) -> None:
    rt = _runtime(db_url)
    store, router = rt.store, rt.router
    try:
        project_id, _, _ = await store.create_project("p")
        await _apply(store, project_id, _pipeline("big", "invoice.*", {"filter.match": "amount >= 100"}))
        first = _events(project_id, "invoice.failed", payload='{"amount": 500}')
        await rt.committer.submit(first)
        await router.run_once()  # the router compiles the configuration on its first pass

        kept = _events(project_id, "invoice.failed", 3, payload='{"amount": 250}')
        dropped = _events(project_id, "invoice.paid", payload='{"amount": 5}')
        await rt.committer.submit([*kept, dropped[0]])
        # Settled at ingest: no route job, nothing handed to the router.
        assert await store.pending_route_jobs() == 0 and router.backlog() == 0
        rows = await _deliveries_for(store, kept)
        assert len(rows) == 3
        for status, body in rows:
            # The dispatcher is not running here, so none was handed over: due in the table.
            assert status == "pending"
            assert orjson.loads(body)["payload"] == {"amount": 250}
        stored = await store.get_event(project_id, kept[0].id)
        assert stored is not None and stored.trace is not None
        assert stored.trace[0]["outcome"] == "routed" and stored.trace[0]["destinations"]
        assert await _deliveries_for(store, dropped) == []
        stored = await store.get_event(project_id, dropped[0].id)
        assert stored is not None and stored.trace is not None
        assert stored.trace[0]["outcome"] == "dropped"

        # A repeated idempotency key stores nothing, so it routes nothing either.
        before = await _count_deliveries(store)
        keyed = _events(project_id, "invoice.failed", payload='{"amount": 300}', key="k-1")
        again = _events(project_id, "invoice.failed", payload='{"amount": 300}', key="k-1")
        first_result = await rt.committer.submit(keyed)
        second_result = await rt.committer.submit(again)
        assert second_result[0].duplicate and second_result[0].id == first_result[0].id
        assert await _count_deliveries(store) == before + 1
        assert await store.pending_route_jobs() == 0

        # The filter changes: the next event is routed by the router under the new one.
        await _apply(store, project_id, _pipeline("big", "invoice.*", {"filter.match": "amount >= 1000"}))
        later = _events(project_id, "invoice.failed", payload='{"amount": 250}')
        await rt.committer.submit(later)
        assert await store.pending_route_jobs() == 1 and router.backlog() == 1
        await router.run_once()
        assert await _deliveries_for(store, later) == []
        # ... and from then on by ingest again, under the new configuration.
        big = _events(project_id, "invoice.failed", payload='{"amount": 5000}')
        await rt.committer.submit(big)
        assert await store.pending_route_jobs() == 0 and router.backlog() == 0
        assert len(await _deliveries_for(store, big)) == 1
    finally:
        await rt.shutdown()


async def test_pipelines_that_may_wait_are_left_to_the_router(db_url: str) -> None:
    rt = _runtime(db_url)
    store, router = rt.store, rt.router
    try:
        project_id, _, _ = await store.create_project("p")
        lookup = {"enrich.entity": {"from": "user_id", "entity": "user", "attach": ["plan"]}}
        await _apply(store, project_id, _pipeline("usage", "feature.*", lookup))
        await rt.committer.submit(_events(project_id, "feature.used", payload='{"user_id": "u1"}'))
        await router.run_once()

        ev = _events(project_id, "feature.used", payload='{"user_id": "u1"}')
        await rt.committer.submit(ev)
        assert router.backlog() == 1  # an enrichment may wait: not run inside ingest
        await route_all(router)
        assert len(await _deliveries_for(store, ev)) == 1
    finally:
        await rt.shutdown()


async def test_api_alone_routes_at_ingest_once_it_has_compiled_the_configuration(db_url: str) -> None:
    """``ingestlayer api`` runs no router: it compiles configurations itself, after the first
    insert that lacked one, and leaves the deliveries due for the workers' dispatchers."""
    rt = Runtime(
        Settings.from_env().with_overrides(database_url=db_url, secret_key=TEST_SECRET_KEY),
        api=True,
        worker=False,
    )
    rt.committer.start()
    store = rt.store
    try:
        project_id, _, _ = await store.create_project("p")
        await _apply(store, project_id, _pipeline("big", "invoice.*", {"filter.match": "amount >= 100"}))
        first = _events(project_id, "invoice.failed", payload='{"amount": 500}')
        await rt.committer.submit(first)
        assert await store.pending_route_jobs() == 1  # nothing compiled yet: a worker routes it

        for _ in range(1000):  # the compilation runs in the background (up to ~10 s under load)
            if rt.router.configs.current(project_id) is not None:
                break
            await asyncio.sleep(0.01)
        kept = _events(project_id, "invoice.failed", 2, payload='{"amount": 250}')
        await rt.committer.submit(kept)
        assert await store.pending_route_jobs() == 1
        assert [status for status, _ in await _deliveries_for(store, kept)] == ["pending", "pending"]

        # The configuration moves: a route job again, and the new configuration is compiled.
        await _apply(store, project_id, _pipeline("big", "invoice.*", {"filter.match": "amount >= 1000"}))
        moved = _events(project_id, "invoice.failed", payload='{"amount": 250}')
        await rt.committer.submit(moved)
        assert await store.pending_route_jobs() == 2 and await _deliveries_for(store, moved) == []
        for _ in range(1000):
            compiled = rt.router.configs.current(project_id)
            if (
                compiled is not None
                and compiled.version == (await store.config_versions({project_id}))[project_id]
            ):
                break
            await asyncio.sleep(0.01)
        small = _events(project_id, "invoice.failed", payload='{"amount": 250}')
        await rt.committer.submit(small)
        assert await store.pending_route_jobs() == 2 and await _deliveries_for(store, small) == []
        stored = await store.get_event(project_id, small[0].id)
        assert stored is not None and stored.trace is not None and stored.trace[0]["outcome"] == "dropped"
    finally:
        await rt.shutdown()


async def test_api_alone_notices_a_change_away_from_pipelines_that_may_wait(db_url: str) -> None:
    rt = Runtime(
        Settings.from_env().with_overrides(database_url=db_url, secret_key=TEST_SECRET_KEY),
        api=True,
        worker=False,
    )
    rt.committer.start()
    store = rt.store
    try:
        project_id, _, _ = await store.create_project("p")
        lookup = {"enrich.entity": {"from": "user_id", "entity": "user", "attach": ["plan"]}}
        await _apply(store, project_id, _pipeline("usage", "feature.*", lookup))
        await rt.committer.submit(_events(project_id, "feature.used"))
        for _ in range(1000):
            if rt.router.configs.current(project_id) is not None:
                break
            await asyncio.sleep(0.01)
        assert rt.router.configs.current(project_id) is not None
        await rt.committer.submit(_events(project_id, "feature.used"))
        assert await store.pending_route_jobs() == 2  # an enrichment may wait: left to the workers

        # The enrichment goes: ingest sees the version move, compiles, and routes from then on.
        await _apply(store, project_id, _pipeline("usage", "feature.*"))
        await rt.committer.submit(_events(project_id, "feature.used"))
        assert await store.pending_route_jobs() == 3
        for _ in range(1000):
            compiled = rt.router.configs.current(project_id)
            if compiled is not None and not compiled.performs_io:
                break
            await asyncio.sleep(0.01)
        routed = _events(project_id, "feature.used")
        await rt.committer.submit(routed)
        assert await store.pending_route_jobs() == 3
        assert len(await _deliveries_for(store, routed)) == 1
    finally:
        await rt.shutdown()
