"""SQLite writes on the event loop: one transaction per call, durable after a shared fsync,
never blocking the loop on another connection's lock."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
import threading
from pathlib import Path

import pytest

from ingestlayer import metrics
from ingestlayer.store import sqlite_durability, sqlite_loop
from ingestlayer.store.conditions import storage_condition
from ingestlayer.store.log_sync_process import LogSyncProcess
from ingestlayer.store.sqlite_durability import WalSync
from ingestlayer.store.sqlite_loop import LoopSqlite


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


def _committed(path: str) -> list[int]:
    """What another connection sees: only committed rows."""
    conn = sqlite3.connect(path)
    try:
        return _values(conn)
    finally:
        conn.close()


async def test_a_failing_operation_undoes_only_itself(db: str) -> None:
    store = LoopSqlite(db)
    try:
        assert await store.write(_insert, 1) == 1
        with pytest.raises(ValueError, match="operation 2 failed"):
            await store.write(_fail_after_insert, 2)
        with pytest.raises(sqlite3.IntegrityError):
            await store.write(_insert, 1)
        assert await store.write(_insert, 3) == 3
        assert await store.read(_values) == [1, 3]
        assert _committed(db) == [1, 3]
    finally:
        await store.close()


async def test_calls_after_close_are_refused(db: str) -> None:
    store = LoopSqlite(db)
    await store.close()
    with pytest.raises(RuntimeError, match="closed"):
        await store.write(_insert, 1)


async def test_durable_writes_wait_for_a_sync_of_the_log_and_leases_do_not(db: str) -> None:
    store = LoopSqlite(db)
    try:
        assert store.wal is not None
        await store.write(_insert, 1, durable=False)
        assert store.wal.syncs == 0
        await store.write(_insert, 2)
        assert store.wal.syncs == 1
        # Many durable writes at once share syncs: far fewer fsyncs than commits.
        await asyncio.gather(*(store.write(_insert, v) for v in range(10, 60)))
        assert 2 <= store.wal.syncs <= 30
        assert len(_committed(db)) == 52
    finally:
        await store.close()


async def test_a_write_waits_for_another_connections_lock_without_blocking_the_loop(db: str) -> None:
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t (v) VALUES (1)")
    store = LoopSqlite(db)
    try:
        pending = asyncio.ensure_future(store.write(_insert, 2))
        ticks = 0
        for _ in range(10):  # the loop keeps running while the write waits
            await asyncio.sleep(0.02)
            ticks += 1
        assert ticks == 10 and not pending.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(pending, 10) == 2
        assert _committed(db) == [1, 2]
    finally:
        other.close()
        await store.close()


async def test_a_lock_held_too_long_fails_the_write_with_the_reason(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_loop, "LOCK_WAIT_SECONDS", 0.3)
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    store = LoopSqlite(db)
    try:
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            await store.write(_insert, 1)
    finally:
        other.rollback()
        other.close()
        await store.close()
    assert _committed(db) == []


async def test_event_loops_on_two_threads_can_share_one_store(db: str) -> None:
    store = LoopSqlite(db)

    def other_thread() -> None:
        async def many() -> None:
            for v in range(1000, 1200):
                await store.write(_insert, v)

        asyncio.run(many())

    try:
        t = threading.Thread(target=other_thread)
        t.start()
        for v in range(200):
            await store.write(_insert, v)
        await asyncio.to_thread(t.join)
        assert len(_committed(db)) == 400
    finally:
        await store.close()


async def test_waiters_queued_during_a_sync_are_served_by_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"x")
    started, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def slow_fsync(fd: int) -> None:
        calls.append(fd)
        started.set()
        release.wait(5)

    sync = WalSync(str(path), fsync=slow_fsync)
    try:
        first = asyncio.ensure_future(sync.wait())
        await asyncio.to_thread(started.wait, 5)
        # These committed after the running sync began: it does not cover them.
        later = [asyncio.ensure_future(sync.wait()) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not first.done() and not any(f.done() for f in later)
        started.clear()
        release.set()
        await asyncio.wait_for(asyncio.gather(first, *later), 5)
        assert len(calls) == 2  # one for the first waiter, one shared by the five
    finally:
        release.set()
        await asyncio.to_thread(sync.close)


async def test_a_failed_sync_fails_the_durable_write(db: str, tmp_path: Path) -> None:
    store = LoopSqlite(db)
    # fdatasync of a FIFO fails (EINVAL) in the kernel, as an I/O error on the log would.
    fifo = tmp_path / "not-a-log"
    os.mkfifo(fifo)
    real = store.wal
    store.wal = LogSyncProcess(str(fifo))
    try:
        with pytest.raises(sqlite3.OperationalError, match="could not sync the database log: Invalid arg"):
            await store.write(_insert, 1)
        # Nothing durable from now on: a later write is refused before it commits, so no event
        # is stored (and routed) that its client was told may not have been.
        with pytest.raises(sqlite3.OperationalError, match="earlier"):
            await store.write(_insert, 2)
        assert _committed(db) == [1]
        assert await store.write(_insert, 3, durable=False) == 3  # a lease, say: lost with nothing
    finally:
        await store.wal.close()
        store.wal = real
        await store.close()


async def test_a_failed_sync_on_the_thread_fails_its_waiters(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"x")

    def broken(_fd: int) -> None:
        raise OSError(5, "Input/output error")

    sync = WalSync(str(path), fsync=broken)
    try:
        with pytest.raises(sqlite3.OperationalError, match="could not sync the database log"):
            await sync.wait()
        with pytest.raises(sqlite3.OperationalError, match=re.escape("earlier (Input/output error)")):
            await sync.wait()
    finally:
        await asyncio.to_thread(sync.close)


def _insert_blob(conn: sqlite3.Connection, n: int) -> None:
    conn.execute("INSERT INTO t (v) VALUES (?)", (n,))
    conn.execute("CREATE TABLE IF NOT EXISTS blobs (b BLOB)")
    conn.execute("INSERT INTO blobs VALUES (?)", (b"x" * 50_000,))


def _db_size(path: str) -> int:
    return os.stat(path).st_size  # the database file alone, not its -wal


async def test_the_wal_is_copied_back_off_the_loop(db: str) -> None:
    # The loop connection's own automatic checkpoint is off (it would stall every request);
    # the checkpoint thread must copy the log into the database file instead.
    store = LoopSqlite(db)
    try:
        before = _db_size(db)
        for n in range(60):  # about 3 MB of log
            await store.write(_insert_blob, n, durable=False)
        await asyncio.sleep(0.6)
        await store.write(_insert, 1000)  # a commit after the interval asks for a checkpoint
        for _ in range(50):
            if _db_size(db) > before + 2_000_000:
                break
            await asyncio.sleep(0.1)
        assert _db_size(db) > before + 2_000_000
    finally:
        await store.close()


def _insert_group(conn: sqlite3.Connection, first: int) -> None:
    """What an ingest group writes: a few dozen small rows at the end of a table."""
    conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body TEXT)")
    conn.executemany("INSERT INTO events VALUES (?, ?)", [(first + i, "x" * 300) for i in range(30)])


@pytest.mark.parametrize("restart", [True, False], ids=["restarted", "passive-only"])
async def test_the_wal_starts_over_under_steady_writes(db: str, restart: bool) -> None:
    # A writer that hardly pauses keeps passive checkpoints from ever reaching the end of the
    # log, and SQLite starts the log over only once one has: without the restart, the -wal file
    # keeps every page each commit wrote (the same few pages, again and again): ~44 MB here.
    store = LoopSqlite(db, restart_wal_after_frames=256 if restart else 1 << 40)
    largest = 0
    restarts_before = _restarts()
    try:
        for commit in range(2000):
            await store.write(_insert_group, commit * 30, durable=False)
            await asyncio.sleep(0.001)
            largest = max(largest, os.stat(db + "-wal").st_size)
        stored = await store.read(lambda conn: conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        await store.close()
    assert stored == 60_000
    # /metrics shows what the checkpoint thread saw.
    reported = metrics.REGISTRY.get_sample_value("ingestlayer_sqlite_wal_bytes")
    assert reported is not None and 0 < reported <= largest
    if restart:
        assert largest < 16 * 1024 * 1024
        assert _restarts() > restarts_before
    else:
        assert largest > 30 * 1024 * 1024
        assert _restarts() == restarts_before


def _restarts() -> float:
    return metrics.REGISTRY.get_sample_value("ingestlayer_sqlite_wal_restarts_total") or 0.0


async def test_every_connection_cuts_a_grown_log_back(tmp_path: Path) -> None:
    # Whichever connection starts the log over (the event loop's, the management API's, the
    # checkpoint's) cuts it back to the limit, so each must carry it.
    from ingestlayer.store.db import create_engines

    path = str(tmp_path / "e.db")
    loop_db = LoopSqlite(path)
    engines = create_engines(f"sqlite:///{path}")
    try:
        limits = [loop_db._conn.execute("PRAGMA journal_size_limit").fetchone()[0]]
        for engine in (engines.write, engines.read):
            async with engine.connect() as conn:
                limits.append((await conn.exec_driver_sql("PRAGMA journal_size_limit")).scalar())
        assert limits == [sqlite_loop.WAL_SIZE_LIMIT_BYTES] * 3
    finally:
        await engines.dispose()
        await loop_db.close()


async def test_a_reader_holding_the_log_back_is_named_in_the_log(
    db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader's old snapshot keeps every frame after it: the -wal file grows with each write
    and cannot start over. That used to show only in ingestlayer_sqlite_wal_bytes."""
    monkeypatch.setattr(sqlite_durability, "HELD_WARNING_SECONDS", 0.3)
    caplog.set_level(logging.INFO, logger="ingestlayer")
    store = LoopSqlite(db, restart_wal_after_frames=64)
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        await store.write(_insert_group, 0, durable=False)
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM events").fetchone()  # holds this snapshot
        await _write_for(store, 1, seconds=2.0)  # checkpoints are asked for every 0.5 s
        held = [r.getMessage() for r in caplog.records if "has not been able to start over" in r.getMessage()]
        assert len(held) == 1 and "a reader holds an old snapshot" in held[0], held
        reader.execute("COMMIT")
        await _write_for(store, 100_000, seconds=1.5)
        assert any("starts over again" in r.getMessage() for r in caplog.records)
    finally:
        reader.close()
        await store.close()


async def _write_for(store: LoopSqlite, first: int, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    commit = first
    while asyncio.get_running_loop().time() < deadline:
        await store.write(_insert_group, commit * 30, durable=False)
        await asyncio.sleep(0.002)
        commit += 1


class _FullDisk:
    """The checkpoint thread's connection, on a disk with no room left until ``freed``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.freed = False

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if "wal_checkpoint" in sql and not self.freed:
            raise sqlite3.OperationalError("database or disk is full")
        return self.conn.execute(sql, *args)

    def close(self) -> None:
        self.conn.close()


def _disk_full(conn: sqlite3.Connection, value: int) -> None:
    conn.execute("INSERT INTO t (v) VALUES (?)", (value,))
    raise sqlite3.OperationalError("database or disk is full")


async def test_a_full_disk_is_logged_once_and_still_checkpointed(
    db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Every checkpoint fails while the disk is full: they were each a warning, twice a second.
    And failed writes asked for none, so the log's size went unmeasured, and the first
    checkpoint after space was freed waited for a write to succeed."""
    monkeypatch.setattr(sqlite_loop, "CHECKPOINT_INTERVAL_SECONDS", 0.02)
    caplog.set_level(logging.INFO, logger="ingestlayer")
    store = LoopSqlite(db)
    disk: list[_FullDisk] = []
    real_connect = store._checkpointer._connect
    store._checkpointer._connect = lambda: disk.append(_FullDisk(real_connect())) or disk[-1]  # type: ignore[assignment,func-returns-value]
    try:
        await store.write(_insert, 1)  # a log to measure
        metrics.SQLITE_WAL_BYTES.set(0)
        for n in range(2, 60):
            with pytest.raises(sqlite3.OperationalError, match="disk is full"):
                await store.write(_disk_full, n)
            await asyncio.sleep(0.01)
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("WAL checkpoint")]
        reason = "OperationalError: database or disk is full"
        assert lines == [f"WAL checkpoint failed: database unavailable: {reason}; retrying"], lines
        # Measured by the checkpoints the failed writes asked for.
        assert metrics.SQLITE_WAL_BYTES._value.get() == os.stat(db + "-wal").st_size > 0

        disk[0].freed = True
        await asyncio.sleep(0.05)
        with pytest.raises(sqlite3.OperationalError):
            await store.write(_disk_full, 100)  # still no write succeeds: the checkpoint runs

        async def recovered() -> bool:
            return any("WAL checkpoint works again" in r.getMessage() for r in caplog.records)

        for _ in range(200):
            if await recovered():
                break
            await asyncio.sleep(0.01)
        assert await recovered()
        assert _committed(db) == [1]
    finally:
        await store.close()


async def _checkpointed_after_writes(store: LoopSqlite, db: str) -> bool:
    """Whether about 3 MB of log, written with checkpoints asked for along the way, reaches the
    database file within a few seconds of writes."""
    before = _db_size(db)
    for n in range(60):
        await store.write(_insert_blob, n, durable=False)
        await asyncio.sleep(0.005)
    for i in range(100):
        await store.write(_insert, 1000 + i)
        if _db_size(db) > before + 2_000_000:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_checkpoint_connection_that_could_not_be_opened_is_opened_again(
    db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The checkpoint thread's connection failed to open once (the disk full or the file
    unreadable for a moment): the thread ended with a traceback and no checkpoint ran again, so
    the log grew with every write. Now the failure is logged and the next request opens it."""
    monkeypatch.setattr(sqlite_loop, "CHECKPOINT_INTERVAL_SECONDS", 0.02)
    caplog.set_level(logging.INFO, logger="ingestlayer")
    store = LoopSqlite(db)
    real_connect = store._checkpointer._connect
    tries: list[str] = []

    def connect_once_failing() -> sqlite3.Connection:
        if not tries:
            tries.append("failed")
            raise sqlite3.OperationalError("disk I/O error")
        tries.append("opened")
        return real_connect()

    store._checkpointer._connect = connect_once_failing  # type: ignore[method-assign]
    try:
        assert await _checkpointed_after_writes(store, db)
        assert tries == ["failed", "opened"]
        failed = [m for r in caplog.records if (m := r.getMessage()).startswith("WAL checkpoint failed")]
        assert failed and "disk I/O error" in failed[0], failed
    finally:
        await store.close()


async def test_an_unexpected_error_in_a_sync_fails_its_waiters_and_the_next_sync_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An error that is not the disk's answer (a bug) ended the sync thread with its waiters
    unsettled: that commit, and every one after, waited for good."""
    path = tmp_path / "log"
    path.write_bytes(b"x")
    calls: list[int] = []

    def fails_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise ValueError("not the disk")
        os.fdatasync(fd)

    sync = WalSync(str(path), fsync=fails_once)
    try:
        with pytest.raises(sqlite3.OperationalError, match="sync failed unexpectedly") as failed:
            await asyncio.wait_for(sync.wait(), 10)
        # A 503 to retry shortly, not "nothing is stored until the server restarts".
        assert storage_condition(failed.value) is None
        await asyncio.wait_for(sync.wait(), 10)  # the next commit is synced
        assert sync.syncs == 1 and sync.failure is None
        assert any("syncing" in r.getMessage() and r.exc_info for r in caplog.records)
    finally:
        await asyncio.to_thread(sync.close)


class _BrokenOnce:
    """The checkpoint thread's connection, whose first checkpoint meets an error that is not
    SQLite's."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.broken = True

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if "wal_checkpoint" in sql and self.broken:
            self.broken = False
            raise TypeError("not SQLite's")
        return self.conn.execute(sql, *args)

    def close(self) -> None:
        self.conn.close()


async def test_an_unexpected_error_in_a_checkpoint_leaves_the_thread_checkpointing(
    db: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error that is not SQLite's ended the checkpoint thread, and the log grew for good."""
    monkeypatch.setattr(sqlite_loop, "CHECKPOINT_INTERVAL_SECONDS", 0.02)
    store = LoopSqlite(db)
    real_connect = store._checkpointer._connect
    store._checkpointer._connect = lambda: _BrokenOnce(real_connect())  # type: ignore[assignment,return-value]
    try:
        assert await _checkpointed_after_writes(store, db)
        assert any("failed unexpectedly" in r.getMessage() for r in caplog.records)
    finally:
        await store.close()


async def test_a_database_named_through_a_symbolic_link_is_written_durably(tmp_path: Path) -> None:
    """SQLite keeps its log beside the file a link names: the log was synced at the link's side,
    where there is none, and every durable write failed ("could not sync the database log")."""
    volume = tmp_path / "volume"
    volume.mkdir()
    conn = sqlite3.connect(volume / "ingestlayer.db")
    conn.execute("PRAGMA journal_mode = WAL")  # as migrations leave every database
    conn.execute("CREATE TABLE t (v INTEGER PRIMARY KEY)")
    conn.close()
    link = tmp_path / "ingestlayer.db"
    link.symlink_to(volume / "ingestlayer.db")
    store = LoopSqlite(str(link))
    try:
        assert await asyncio.wait_for(store.write(_insert, 1), 10) == 1  # waits for the log's sync
        assert await asyncio.wait_for(store.write(_insert, 2), 10) == 2
        store.files.check()
        assert store.files.problem is None
    finally:
        await store.close()
    assert _committed(str(volume / "ingestlayer.db")) == [1, 2]


def test_a_path_that_cannot_be_looked_at_is_not_taken_for_a_removed_file(tmp_path: Path) -> None:
    """Only a path that names nothing (ENOENT, ENOTDIR) is a removed file; any other error of
    stat() (a directory without search permission for a moment, a network file system's error)
    refused every write until a restart."""
    from ingestlayer.store.sqlite_file_watch import UNKNOWN, _identity

    (tmp_path / "file").write_text("x")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    assert _identity(str(tmp_path / "missing")) is None
    assert _identity(str(tmp_path / "file" / "under")) is None  # ENOTDIR
    assert _identity(str(tmp_path / "a")) == UNKNOWN  # ELOOP
    assert _identity(str(tmp_path / "file")) not in (None, UNKNOWN)
