"""A plain ``sqlite3`` connection owned by one thread, fed from the event loop.

Through SQLAlchemy's asyncio layer and aiosqlite, every statement, BEGIN and COMMIT is a hop to
the driver's thread and back, and one small write transaction cost 0.5-1.6 ms of CPU on the
reference machine: far more than the write itself. Here a whole operation (a Python function
taking the connection) runs on the thread in one hop.

The writer goes further: whatever operations queued up while it was busy (an ingest group, a
router's completion, a dispatcher's attempt log) run in one transaction, each inside its own
savepoint so one failing operation does not undo the others. With ``synchronous=FULL`` the fsync
at COMMIT is then paid once for all of them: group commit across every kind of write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("ingestlayer.store")

T = TypeVar("T")
Op = Callable[..., Any]

BUSY_TIMEOUT_MS = 30_000
# Operations per transaction at most: bounds how long one COMMIT keeps everyone waiting.
MAX_GROUP = 256

_Item = tuple[Op, tuple[Any, ...], "asyncio.Future[Any]", asyncio.AbstractEventLoop, bool]


def connect(path: str) -> sqlite3.Connection:
    # isolation_level=None: the module issues no BEGIN of its own; we do.
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=256)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # FULL: a 202 means the event survives power loss, not just a process crash.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Savepoints' statement journals in memory, not as files created and unlinked in /tmp.
    conn.execute("PRAGMA temp_store = MEMORY")
    return conn


def _resolve(outcomes: list[tuple[asyncio.Future[Any], BaseException | None, Any]]) -> None:
    for fut, exc, value in outcomes:
        if fut.done():  # the caller gave up (cancelled); the work was still done
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(value)


# How often the writer asks for a checkpoint, at most.
CHECKPOINT_INTERVAL_SECONDS = 0.5


class Checkpointer:
    """Copies the WAL back into the database on its own thread and connection.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses 1,000 WAL pages: on the
    writer, holding up every queued ingest, routing and attempt write while it copies pages and
    syncs the database file (stalls of 100-400 ms were seen at 800 events/s). A passive
    checkpoint here never blocks the writer; the writer's own automatic checkpoint is off."""

    def __init__(self, path: str) -> None:
        self._conn = connect(path)
        self._wanted = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def close(self) -> None:
        self._closed = True
        self._wanted.set()
        self._thread.join()
        self._conn.close()

    def _main(self) -> None:
        while True:
            self._wanted.wait()
            self._wanted.clear()
            if self._closed:
                return
            try:
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            except sqlite3.Error as exc:  # busy or locked: the next request tries again
                log.warning("WAL checkpoint failed: %s", exc)


class SqliteThread:
    """Runs ``fn(conn, *args)`` on a dedicated thread; ``writer=True`` groups calls into
    transactions (see the module docstring), otherwise each call runs in autocommit mode."""

    def __init__(self, path: str, *, writer: bool, name: str) -> None:
        self.path = path
        self.writer = writer
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._conn = connect(path)
        self._durable = True  # connect() sets synchronous = FULL
        self._closed = False
        self._checkpointer: Checkpointer | None = None
        self._last_checkpoint = 0.0
        if writer:
            self._conn.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = Checkpointer(path)
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    async def call(self, fn: Callable[..., T], *args: Any, durable: bool = True) -> T:
        """Run ``fn(conn, *args)`` on the thread. ``durable=False`` marks a write that may be lost
        on power failure without losing anything else (a lease: the work is simply retaken); a
        group made only of such writes commits without an fsync. Later durable commits sync
        the log up to themselves, earlier writes included."""
        if self._closed:
            raise RuntimeError("the database connection is closed")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._queue.put((fn, args, fut, loop, durable))
        return await fut

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        await asyncio.to_thread(self._thread.join)
        if self._checkpointer is not None:
            await asyncio.to_thread(self._checkpointer.close)
        self._conn.close()

    # ---- on the thread ---------------------------------------------------------------------

    def _main(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
            outcomes = self._run_group(group) if self.writer else [self._run_one(i) for i in group]
            by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, BaseException | None, Any]]] = {}
            for (_fn, _args, _fut, loop, _durable), outcome in zip(group, outcomes, strict=True):
                by_loop.setdefault(loop, []).append(outcome)
            for loop, done in by_loop.items():
                # A closed loop raises RuntimeError: nobody is waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(_resolve, done)
            if self._checkpointer is not None:
                now = time.monotonic()
                if now - self._last_checkpoint >= CHECKPOINT_INTERVAL_SECONDS:
                    self._last_checkpoint = now
                    self._checkpointer.request()
            if stop:
                return

    def _run_one(self, item: _Item) -> tuple[asyncio.Future[Any], BaseException | None, Any]:
        fn, args, fut, _loop, _durable = item
        try:
            return fut, None, fn(self._conn, *args)
        except BaseException as exc:  # handed to the caller, who decides
            if self._conn.in_transaction:
                self._conn.rollback()
            return fut, exc, None

    def _run_group(self, group: list[_Item]) -> list[tuple[asyncio.Future[Any], BaseException | None, Any]]:
        conn = self._conn
        durable = any(item[4] for item in group)
        try:
            if durable != self._durable:
                # In WAL mode, NORMAL skips the fsync at COMMIT; FULL syncs the log to here.
                conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._durable = durable
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(item[2], exc, None) for item in group]
        outcomes: list[tuple[asyncio.Future[Any], BaseException | None, Any]] = []
        if len(group) == 1:
            fn, args, fut, _loop, _durable = group[0]
            try:
                outcomes.append((fut, None, fn(conn, *args)))
            except BaseException as exc:
                conn.rollback()
                return [(fut, exc, None)]
        else:
            for fn, args, fut, _loop, _durable in group:
                conn.execute("SAVEPOINT op")
                try:
                    value = fn(conn, *args)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((fut, exc, None))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((fut, None, value))
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            # Nothing was committed: every operation in the group fails with the reason.
            log.error("commit of %d operations failed: %s", len(group), exc)
            if conn.in_transaction:
                conn.rollback()
            return [(fut, exc, None) for fut, _e, _v in outcomes]
        return outcomes
