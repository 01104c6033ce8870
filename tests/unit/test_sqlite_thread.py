"""The SQLite writer thread: queued operations share a transaction, each in its own savepoint."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable
from pathlib import Path

import pytest

from ingestlayer.store.sqlite_thread import SqliteThread


def _insert(conn: sqlite3.Connection, value: int) -> int:
    conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
    return value


def _fail_after_insert(conn: sqlite3.Connection, value: int) -> None:
    conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
    raise ValueError(f"operation {value} failed")


def _values(conn: sqlite3.Connection) -> list[int]:
    return [r[0] for r in conn.execute("SELECT v FROM t ORDER BY v")]


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "t.db")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")  # as migrations leave every database
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    conn.close()
    return path


async def test_operations_queued_together_commit_together_and_one_failure_undoes_only_itself(db: str) -> None:
    writer = SqliteThread(db, writer=True, name="test-writer")
    reader = SqliteThread(db, writer=False, name="test-reader")
    try:
        calls: list[Awaitable[object]] = [writer.call(_insert, v) for v in range(1, 40)]
        calls.insert(10, writer.call(_fail_after_insert, 1000))
        results = await asyncio.gather(*calls, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        assert [str(f) for f in failures] == ["operation 1000 failed"]
        assert await reader.call(_values) == list(range(1, 40))
    finally:
        await writer.close()
        await reader.close()


async def test_a_constraint_error_reaches_the_caller_and_the_writer_goes_on(db: str) -> None:
    writer = SqliteThread(db, writer=True, name="test-writer")
    try:
        assert await writer.call(_insert, 7) == 7
        with pytest.raises(sqlite3.IntegrityError):
            await writer.call(_insert, 7)
        assert await writer.call(_insert, 8) == 8
        assert await writer.call(_values) == [7, 8]
    finally:
        await writer.close()


async def test_calls_after_close_are_refused(db: str) -> None:
    writer = SqliteThread(db, writer=True, name="test-writer")
    await writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        await writer.call(_insert, 1)


async def test_a_writer_waits_for_another_connections_write_lock(db: str) -> None:
    # Another process holding the write lock must delay the group, not fail it.
    other = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (v) VALUES (1)")
    writer = SqliteThread(db, writer=True, name="test-writer")
    try:
        pending = asyncio.ensure_future(writer.call(_insert, 2))
        await asyncio.sleep(0.2)
        assert not pending.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(pending, 10) == 2
        assert await writer.call(_values) == [1, 2]
    finally:
        other.close()
        await writer.close()


def _insert_blob(conn: sqlite3.Connection, n: int) -> None:
    conn.execute("INSERT INTO t (v) VALUES (?)", (n,))
    conn.execute("CREATE TABLE IF NOT EXISTS blobs (b BLOB)")
    conn.execute("INSERT INTO blobs VALUES (?)", (b"x" * 50_000,))


def _db_size(path: str) -> int:
    return os.stat(path).st_size  # the database file alone, not its -wal


async def test_the_wal_is_copied_back_off_the_writer(db: str) -> None:
    # The writer's own automatic checkpoint is off (it would stall every queued write); the
    # checkpoint thread must copy the log into the database file instead.
    writer = SqliteThread(db, writer=True, name="test-writer")
    try:
        before = _db_size(db)
        for n in range(60):  # about 3 MB of log
            await writer.call(_insert_blob, n)
        await asyncio.sleep(0.6)
        await writer.call(_insert, 1000)  # a commit after the interval asks for a checkpoint
        for _ in range(50):
            if _db_size(db) > before + 2_000_000:
                break
            await asyncio.sleep(0.1)
        assert _db_size(db) > before + 2_000_000
    finally:
        await writer.close()
