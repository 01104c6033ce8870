"""Test databases: a migrated template per session, copied per test (fast), on both backends.

PostgreSQL tests need INGESTLAYER_TEST_PG_URL (default: the local server). With CI=true a missing
PostgreSQL is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import shutil
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import pytest

from ingestlayer.store.migrate import upgrade

PG_URL = os.environ.get("INGESTLAYER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _pg_base() -> str:
    return PG_URL.rsplit("/", 1)[0]


async def listening_on(pg_url: str, channel: str, sessions: int = 1, timeout: float = 30.0) -> None:
    """Until ``sessions`` connections to ``pg_url``'s database have run ``LISTEN channel`` as
    their last statement: a process answers its health check before its listener has connected,
    and a notification sent before then is not seen."""
    conn = await asyncpg.connect(pg_url, timeout=timeout)
    try:
        deadline = time.monotonic() + timeout
        sql = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query = $1"
        while await conn.fetchval(sql, f'LISTEN "{channel}"') < sessions:
            assert time.monotonic() < deadline, f"fewer than {sessions} sessions listen on {channel}"
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def _pg_exec(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=30)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_available() -> str | None:
    """None when PostgreSQL answers, else the reason it does not."""
    try:
        asyncio.run(_pg_exec("SELECT 1"))
    except Exception as exc:
        return f"PostgreSQL at {PG_URL} is not reachable ({type(exc).__name__}: {exc})"
    return None


def require_pg() -> None:
    reason = pg_available()
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true requires PostgreSQL: {reason}")
    pytest.skip(reason)


class PgTemplates:
    """One migrated template database per session; each test gets a fresh copy of it."""

    def __init__(self) -> None:
        self.template = f"il_tmpl_{uuid.uuid4().hex[:10]}"
        self.created: list[str] = []
        self._ready = False
        self._dropper: queue.Queue[str | None] = queue.Queue()
        self._drops: threading.Thread | None = None

    def ensure_template(self) -> None:
        if self._ready:
            return
        asyncio.run(_pg_exec(f'CREATE DATABASE "{self.template}"'))
        upgrade(f"{_pg_base()}/{self.template}")
        self._ready = True

    def new_database(self) -> str:
        self.ensure_template()
        name = f"il_t_{uuid.uuid4().hex[:12]}"
        asyncio.run(_pg_exec(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        self.created.append(name)
        return f"{_pg_base()}/{name}"

    def drop_finished(self) -> None:
        """Drop the databases made so far, on a thread of its own while the next tests run: each
        DROP waits on the disk, and the session's end had a few hundred of them to wait for."""
        names, self.created = self.created, []
        for name in names:
            self._dropper.put(name)
        if self._drops is None or not self._drops.is_alive():
            self._drops = threading.Thread(target=asyncio.run, args=(self._drop_queued(),), daemon=True)
            self._drops.start()

    async def _drop_queued(self) -> None:
        conn = await asyncpg.connect(PG_URL, timeout=30)
        try:
            while (name := await asyncio.to_thread(self._dropper.get)) is not None:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    def drop_all(self) -> None:
        self._dropper.put(None)
        if self._drops is not None:
            self._drops.join(timeout=120)
        # What the thread did not drop (it failed, or never ran), and the template.
        left = [*self.created, *_drain(self._dropper), *([self.template] if self._ready else [])]

        async def run() -> None:
            conn = await asyncpg.connect(PG_URL, timeout=30)
            try:
                for name in left:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()

        asyncio.run(run())


def _drain(names: queue.Queue[str | None]) -> list[str]:
    left = []
    with contextlib.suppress(queue.Empty):
        while True:
            if (name := names.get_nowait()) is not None:
                left.append(name)
    return left


class SqliteTemplates:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.template = root / "template.db"
        self._ready = False

    def new_database(self) -> str:
        if not self._ready:
            upgrade(f"sqlite:///{self.template}")
            self._ready = True
        path = self.root / f"t_{uuid.uuid4().hex[:12]}.db"
        shutil.copyfile(self.template, path)
        return f"sqlite:///{path}"
