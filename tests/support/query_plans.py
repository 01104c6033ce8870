"""How a store call reads the database: the statements it sends, and how each one is served.

For tests that hold a listing to its index by its plan or by the rows it reads, never by the
clock: a scan that takes 5 ms on a test's few thousand rows takes seconds on a real history.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

Sent = tuple[str, Any]


@contextlib.contextmanager
def statements_sent(engine: AsyncEngine) -> Iterator[list[Sent]]:
    """Each statement sent on ``engine`` meanwhile, with its parameters, as the driver got it."""
    sent: list[Sent] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _ctx: Any, _many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)


async def sqlite_plan(engine: AsyncEngine, sent: Sent) -> list[str]:
    """SQLite's EXPLAIN QUERY PLAN of a statement sent: one line per step ("SEARCH events USING
    INDEX ix_events_project_id_id (project_id=? AND id>?)", "SCAN attempts", ...)."""
    statement, params = sent
    async with engine.connect() as conn:
        rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
        return [str(r[-1]) for r in rows]


async def pg_rows_read(engine: AsyncEngine, sent: Sent) -> int:
    """The table and index entries PostgreSQL reads to answer a statement sent (EXPLAIN ANALYZE:
    the rows each scan returned and those it read and dropped by a filter), on the cheapest plan
    that does not read the whole table: a test's tables are small enough for a sequential scan to
    look cheapest, which says nothing of a history of millions."""
    statement, params = sent
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        rows = await conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params)
        plan = rows.scalar_one()
        await conn.rollback()
    doc = json.loads(plan) if isinstance(plan, str) else plan
    return _read(doc[0]["Plan"])


def _read(node: dict[str, Any]) -> int:
    n = 0
    if node["Node Type"].endswith("Scan"):
        loops = int(node.get("Actual Loops", 1))
        n += int(node.get("Actual Rows", 0)) * loops + int(node.get("Rows Removed by Filter", 0))
    return n + sum(_read(child) for child in node.get("Plans", []))


async def pg_rows_read_generic(engine: AsyncEngine, sent: Sent) -> int:
    """The same, on the plan PostgreSQL makes once for any parameters: the one a prepared
    statement (asyncpg keeps every statement prepared) runs with from its sixth execution on,
    when that plan looks no costlier than planning each time."""
    statement, params = sent
    values = ", ".join(_sql_literal(p) for p in params)
    async with engine.connect() as conn:
        await conn.exec_driver_sql("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.exec_driver_sql("PREPARE probed AS " + statement)
        rows = await conn.exec_driver_sql(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probed({values})")
        plan = rows.scalar_one()
        await conn.rollback()
        await conn.exec_driver_sql("DEALLOCATE probed")
    doc = json.loads(plan) if isinstance(plan, str) else plan
    return _read(doc[0]["Plan"])


def _sql_literal(value: Any) -> str:
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "NULL"}[value]
    return repr(value)
