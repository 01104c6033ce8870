"""In ``serve``, events that no pipeline takes are stored without a route job, but only while
the configuration that said so is still the project's current one."""

from __future__ import annotations

import time
from typing import Any

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

HOOK = "http://127.0.0.1:9/hook"  # never called: the dispatcher does not run here


def _pipeline(name: str, match: str) -> dict[str, Any]:
    return {"name": name, "source": {"match": [match]}, "destinations": [{"webhook.out": {"url": HOOK}}]}


async def _apply(store: Store, project_id: str, *pipelines: dict[str, Any]) -> None:
    cfg = parse_config(yaml.safe_load(yaml.safe_dump({"pipelines": list(pipelines)})))
    await apply_plan(store, await plan(store, project_id, cfg))


def _events(project_id: str, event_type: str, n: int = 1) -> list[NewEvent]:
    now = time.time()
    return [NewEvent(new_id("evt"), project_id, event_type, "{}", None, "api", now, now) for _ in range(n)]


async def _deliveries_for(store: Store, events: list[NewEvent]) -> int:
    async with store.engines.read.connect() as conn:
        query = select(func.count()).select_from(deliveries)
        return int(await conn.scalar(query.where(deliveries.c.event_id.in_([e.id for e in events]))) or 0)


async def test_untaken_events_skip_routing_until_the_configuration_moves(db_url: str) -> None:
    rt = Runtime(Settings.from_env().with_overrides(database_url=db_url), api=True, worker=True)
    store, router = rt.store, rt.router
    rt.committer.start()
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
            assert await store.get_event(project_id, ev.id) is not None

        # A type a pipeline takes is routed and delivered as before.
        taken = _events(project_id, "invoice.failed")
        await rt.committer.submit(taken)
        assert router.backlog() == 1
        await router.run_once()
        assert await _deliveries_for(store, taken) == 1

        # A pipeline for feature.* arrives: the router's compiled configuration is now stale,
        # so the next feature.used gets its route job and reaches the new pipeline.
        await _apply(store, project_id, _pipeline("billing", "invoice.*"), _pipeline("usage", "feature.*"))
        after = _events(project_id, "feature.used")
        await rt.committer.submit(after)
        assert await store.pending_route_jobs() == 1 and router.backlog() == 1
        await router.run_once()
        assert await _deliveries_for(store, after) == 1
        assert await _deliveries_for(store, untaken) == 0
    finally:
        await rt.shutdown()
