"""Alembic environment: migrations run over the same async drivers as the server."""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import context
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ingestlayer.store.db import SQLITE_BUSY_TIMEOUT_MS, async_url
from ingestlayer.store.schema import metadata

config = context.config
target_metadata = metadata


def _applied(on_step: Any) -> Any:
    """Alembic's callback after each migration, as ``on_step(revision, description)``."""
    if on_step is None:
        return None

    def report(*, step: Any, **_: Any) -> None:
        if step.is_upgrade:
            on_step(step.up_revision_id, step.up_revision.doc or "")

    return report


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        on_version_apply=_applied(config.attributes.get("on_step")),
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # SQLite's DDL is transactional too: a migration that rebuilds a table (create a copy,
        # fill it, drop, rename) and is interrupted must leave the database as it was, not
        # with a half-built copy that makes every later attempt fail.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Several api/worker processes may start together: one migrates, the others wait.
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(742300117)")
        context.run_migrations()


def _engine(url: str, connect_timeout: float | None = None) -> AsyncEngine:
    driver_url = async_url(url)
    connect_args: dict[str, Any] = {}
    if connect_timeout is not None and driver_url.startswith("postgresql"):
        # asyncpg's own default is 60 s: a server that accepts and never answers held a start
        # for a minute, whatever INGESTLAYER_DATABASE_TIMEOUT said.
        connect_args["timeout"] = connect_timeout
    engine = create_async_engine(driver_url, connect_args=connect_args)
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # The driver would commit on its own around DDL; BEGIN and COMMIT are ours. Foreign
            # keys stay off (SQLite's default): a table rebuild drops the old table, which with
            # them on would cascade into the rows that reference it.
            dbapi_conn.isolation_level = None
            dbapi_conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


async def _run_async(url: str, connect_timeout: float | None) -> None:
    engine = _engine(url, connect_timeout)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
            await conn.commit()
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    url: Any = config.attributes.get("database_url")
    if not url:
        raise RuntimeError("no database URL given to the migration environment")
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    asyncio.run(_run_async(str(url), config.attributes.get("connect_timeout")))


run_migrations_online()
