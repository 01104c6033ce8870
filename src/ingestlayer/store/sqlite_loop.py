"""A plain ``sqlite3`` connection used on the event loop's own thread.

The hot statements (ingest, routing, leases, attempts) are short and CPU-bound: an ingest group
of 100 events is about a millisecond of SQLite work. Running them where they are asked for
costs less than any hand-off. A writer thread fed through a queue (this module's predecessor)
spent more on the hand-off than on the SQL: every statement released the GIL and took it back
from the busy event loop, and single-event ingest ran at 4,300 requests/s against 5,800 with the
same statements on the loop (same run, 64 connections).

What may not block the loop is kept off it:

- the fsync: commits are made durable by :class:`~ingestlayer.store.log_sync_process.LogSyncProcess`
  in a helper process (or :class:`~ingestlayer.store.sqlite_durability.WalSync` on a thread),
  while the loop goes on;
- the checkpoint, by :class:`~ingestlayer.store.sqlite_durability.Checkpointer`;
- waiting for another connection's write lock: ``busy_timeout`` is 0 here, and a busy database
  is retried after an ``asyncio.sleep``, so the other writer (the management API's connection,
  a CLI command, another process) can finish meanwhile.

Every call is its own transaction; callers already batch (an ingest group, a routing pass, a
dispatcher's attempt log), and the fsync is shared between everything committed before it.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from ingestlayer.store.log_sync_process import LogSyncProcess
from ingestlayer.store.sqlite_durability import (
    CHECKPOINT_INTERVAL_SECONDS,
    RESTART_AFTER_FRAMES,
    Checkpointer,
    sync_failed_earlier,
)
from ingestlayer.store.sqlite_file_watch import FileWatch

T = TypeVar("T")

# How long a write waits for another connection's lock before it fails, as busy_timeout did.
LOCK_WAIT_SECONDS = 30.0
# Retries of a busy lock, doubling from the first to the last. Hot writers hold it for well
# under a millisecond (an ingest group, a routing pass), so a long sleep mostly waits on a free
# lock: two `serve` processes on one file took 12,600-15,300 requests/s retrying after 1 to
# 50 ms, and 14,900-16,100 after 0.2 to 5 ms (same session, alternating).
_FIRST_RETRY_SECONDS = 0.0002
_MAX_RETRY_SECONDS = 0.005
# A log that a burst grew past this is cut back to it by whichever connection starts it over;
# below it, its blocks are reused rather than allocated again.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
_BUSY_CODES = frozenset({sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED})


def set_pragmas(execute: Callable[[str], object], busy_timeout_ms: int) -> None:
    """What every connection to the file sets: these here, and SQLAlchemy's in ``store.db``."""
    execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    execute("PRAGMA journal_mode = WAL")
    # FULL: a 202 means the event survives power loss, not just a process crash.
    execute("PRAGMA synchronous = FULL")
    execute("PRAGMA foreign_keys = ON")
    execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")


def connect(path: str, *, busy_timeout_ms: int = 30_000) -> sqlite3.Connection:
    # isolation_level=None: the module issues no BEGIN of its own; we do.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=256)
    set_pragmas(conn.execute, busy_timeout_ms)
    # Savepoints' statement journals in memory, not as files created and unlinked in /tmp.
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorcode", None) in _BUSY_CODES


_Runner = Callable[[Callable[..., T], tuple[Any, ...]], T]


class _Busy(Exception):
    """Another connection (or thread) holds the lock: try again later."""


class LoopSqlite:
    """Runs ``fn(conn, *args)`` synchronously on the calling thread, inside a transaction for
    :meth:`write`; safe to share between event loops on several threads (one runs at a time)."""

    def __init__(self, path: str, *, restart_wal_after_frames: int = RESTART_AFTER_FRAMES) -> None:
        self.path = path
        self._conn = connect(path, busy_timeout_ms=0)
        self._conn.execute("PRAGMA wal_autocheckpoint = 0")
        self._lock = threading.Lock()
        self._closed = False
        self._last_checkpoint = 0.0
        # SQLite keeps its log beside the file a symbolic link names, not beside the link: synced
        # at the link's side, every durable write failed ("could not sync the database log").
        wal_path = os.path.realpath(path) + "-wal"
        self._checkpointer = Checkpointer(
            lambda: connect(path),
            wal_path,
            writer_lock=self._lock,
            restart_after_frames=restart_wal_after_frames,
        )
        self.wal: LogSyncProcess | None = None
        mode = self._conn.execute("PRAGMA journal_mode").fetchone()[0]
        if mode == "wal":
            # Commits append to the log without syncing it; durable writes wait for its sync.
            self._conn.execute("PRAGMA synchronous = NORMAL")
            self.wal = LogSyncProcess(wal_path)
        # Otherwise (a file system without WAL support) every COMMIT syncs, at FULL.
        self.files = FileWatch(path, wal_path)

    async def write(self, fn: Callable[..., T], *args: Any, durable: bool = True) -> T:
        """Run ``fn`` in a write transaction. ``durable=False`` marks a write whose loss on power
        failure loses nothing else (a lease: the work is simply retaken); it returns at COMMIT.
        A durable write returns once its transaction is on disk."""
        if durable and self.wal is not None and self.wal.failure is not None:
            # Not even committed: a write that could not be made durable is not made visible.
            raise sync_failed_earlier(self.wal.failure)
        if self.files.problem is not None:
            # Leases too: nothing is taken on that could not be recorded where it would last.
            raise self.files.error()
        try:
            value = await self._with_lock(self._transaction, fn, args)
            if durable and self.wal is not None:
                await self.wal.wait()
        finally:
            # After a failed write too: on a full disk, the log's size is still measured, and the
            # first checkpoint after space is freed does not wait for a write to succeed first.
            self._look_again()
        return value

    def _look_again(self) -> None:
        """At most once per checkpoint interval: a checkpoint, and whether the files are still
        where they were opened."""
        now = time.monotonic()
        if now - self._last_checkpoint >= CHECKPOINT_INTERVAL_SECONDS:
            self._last_checkpoint = now
            self._checkpointer.request()
            self.files.check()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` outside a transaction (each statement sees the latest commit)."""
        return await self._with_lock(self._plain, fn, args)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.wal is not None:
            await self.wal.close()
        await asyncio.to_thread(self._checkpointer.close)
        with self._lock:
            self._conn.close()

    # ---- internals ---------------------------------------------------------------------------

    async def _with_lock(self, run: _Runner[T], fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        delay = _FIRST_RETRY_SECONDS
        deadline: float | None = None
        while True:
            if self._closed:
                raise RuntimeError("the database connection is closed")
            if self._lock.acquire(blocking=False):
                try:
                    return run(fn, args)
                except _Busy:
                    pass
                finally:
                    self._lock.release()
            now = time.monotonic()
            if deadline is None:
                deadline = now + LOCK_WAIT_SECONDS
            elif now >= deadline:
                raise sqlite3.OperationalError(
                    f"database is locked: another connection held it for {LOCK_WAIT_SECONDS:.0f} s"
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_SECONDS)

    def _transaction(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise _Busy from None
            raise
        try:
            value = fn(conn, *args)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.rollback()
            raise
        return value

    def _plain(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        return fn(self._conn, *args)
