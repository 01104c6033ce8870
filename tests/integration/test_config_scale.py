"""A large configuration change does not hold up every other project.

Measured with 2,000 pipelines in one project: applying them wrote one row per statement inside
the one write transaction (SQLite's only write lock held 2.6-5.3 s, other projects' ingest p99
5.4 s), planning the change (its diffs) ran on the event loop for 0.6-1.2 s, and so did
compiling it for routing (0.7-1.0 s after each change). The writes are now a few statements
whatever their number, and the planning and a large project's compiling run off the event loop.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from sqlalchemy import event

from ingestlayer.delivery import router as router_module
from ingestlayer.delivery.router import ConfigCache
from ingestlayer.pipeline import apply as apply_module
from ingestlayer.pipeline.apply import apply_plan, plan
from ingestlayer.pipeline.config import parse_config
from ingestlayer.store.store import Store


def document(n: int, *, url: str = "https://hooks.example.com/in", above: int = 0) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": f"p{i}",
                "source": {"match": [f"t{i}.*"]},
                "steps": [{"filter.match": f"n > {i + above}"}],
                "destinations": [{"webhook.out": {"url": f"{url}/{i}"}, "name": f"d{i}"}],
            }
            for i in range(n)
        ]
    }


class Statements:
    """The statements a store's write engine runs (an executemany counts once)."""

    def __init__(self, store: Store) -> None:
        self.count = 0
        self._engine = store.engines.write.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: Any) -> None:
        self.count += 1

    def close(self) -> None:
        event.remove(self._engine, "before_cursor_execute", self._seen)


async def test_applying_many_pipelines_takes_a_few_statements_not_one_a_row(db_url: str) -> None:
    store = Store.from_url(db_url)
    statements = Statements(store)
    try:
        project_id, _, _ = await store.create_project("big")
        # Created, then every one of them changed.
        for url, above in (("https://hooks.example.com/in", 0), ("https://hooks.example.com/v2", 1)):
            p = await plan(store, project_id, parse_config(document(300, url=url, above=above)))
            assert len(p.pipeline_rows) == len(p.destination_rows) == 300
            statements.count = 0
            await apply_plan(store, p)
            # One or two statements per table and the project's version: 600 rows, 1,200 before.
            assert statements.count <= 12, statements.count
        cfg = await store.load_project_config(project_id)
        stored = {d.name: d.config["settings"]["url"] for d in cfg.destinations.values()}
        assert stored == {f"d{i}": f"https://hooks.example.com/v2/{i}" for i in range(300)}
        assert sorted(p.name for p in cfg.pipelines) == sorted(f"p{i}" for i in range(300))
        routes = {
            p.name: cfg.destinations[p.config["destinations"][0]["destination_id"]].name
            for p in cfg.pipelines
        }
        assert routes == {f"p{i}": f"d{i}" for i in range(300)}
        again = await plan(
            store, project_id, parse_config(document(300, url="https://hooks.example.com/v2", above=1))
        )
        assert {c.action for c in again.changes} == {"unchanged"}
    finally:
        statements.close()
        await store.close()


async def test_planning_and_compiling_a_large_project_happen_off_the_event_loop(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    planned_on: list[int] = []
    compiled_on: list[tuple[int, int]] = []
    real_plan, real_compile = apply_module._plan_against, router_module.compile_project

    def plan_against(*args: Any) -> Any:
        planned_on.append(threading.get_ident())
        return real_plan(*args)

    def compile_project(cfg: Any) -> Any:
        compiled_on.append((len(cfg.pipelines), threading.get_ident()))
        return real_compile(cfg)

    monkeypatch.setattr(apply_module, "_plan_against", plan_against)
    monkeypatch.setattr(router_module, "compile_project", compile_project)
    store = Store.from_url(sqlite_url)
    try:
        small, _, _ = await store.create_project("small")
        large, _, _ = await store.create_project("large")
        await apply_plan(store, await plan(store, small, parse_config(document(3))))
        await apply_plan(store, await plan(store, large, parse_config(document(120))))
        assert planned_on and loop_thread not in planned_on
        compiled = await ConfigCache(store).get_many({small, large})
        assert len(compiled[large].pipelines) == 120 and len(compiled[small].pipelines) == 3
        on = dict(compiled_on)
        assert on[120] != loop_thread  # a large project: on a thread of its own
        assert on[3] == loop_thread  # a small one: where it is needed, without a hand-off
    finally:
        await store.close()
