"""The two background threads behind SQLite writes on the event loop: the log's fsync and its
checkpoint. Neither runs Python between system calls, so neither competes for the GIL with the
event loop for long.

- :class:`WalSync` makes commits durable. The loop's connection commits at
  ``synchronous=NORMAL``: in WAL mode a COMMIT appends the transaction's frames to the ``-wal``
  file (in the page cache) and returns, and the write lock is free for the next transaction at
  once. A durable write then waits here for an ``fdatasync`` of that file that *started after
  its commit*. One call flushes the whole file, so it serves every commit that queued up while
  the previous one ran: group commit, without holding the database lock across the sync.
- :class:`Checkpointer` copies the log back into the database file off the loop.

Power-loss safety is SQLite's own: at ``NORMAL`` a WAL database stays consistent and can only
lose transactions that were not yet synced, and nothing waiting here has been acknowledged.
Checkpoints run on a connection at ``synchronous=FULL``, which syncs the log before copying it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable

from ingestlayer import metrics
from ingestlayer.store.outage_log import OutageLog

log = logging.getLogger("ingestlayer.store")

_Waiter = tuple["asyncio.Future[None]", asyncio.AbstractEventLoop]


def settle(waiters: list[asyncio.Future[None]], exc: BaseException | None) -> None:
    """Resolve the waiters of one sync (on their loop's thread)."""
    for fut in waiters:
        if fut.done():  # the caller gave up (cancelled)
            continue
        if exc is None:
            fut.set_result(None)
        else:
            fut.set_exception(exc)


def settle_on_loops(waiters: list[_Waiter], exc: BaseException | None) -> None:
    """Resolve futures from a worker thread, one hop to each waiting event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for fut, loop in waiters:
        by_loop.setdefault(loop, []).append(fut)
    for loop, futs in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, futs, exc)


def sync_failed(path: str, reason: str) -> sqlite3.OperationalError:
    """Log a failed ``fdatasync`` of the log; return the error its waiters get.

    After one, the log is not synced again until the server restarts: the kernel reports a
    failed writeback once and may drop the pages it could not write, so a later sync could
    succeed over a hole in the log, and SQLite's recovery stops at the first frame missing, with
    every commit after it. Nothing acknowledged is lost that way only if nothing is acknowledged
    after the failure (as PostgreSQL stops on a failed fsync)."""
    log.error(
        "fdatasync of %s failed: %s; nothing more is stored until the server restarts "
        "(SQLite recovers the log on the next start)",
        path,
        reason,
    )
    return sqlite3.OperationalError(f"could not sync the database log: {reason}")


def sync_failed_earlier(reason: str) -> sqlite3.OperationalError:
    return sqlite3.OperationalError(
        f"could not sync the database log earlier ({reason}); nothing is stored until the server restarts"
    )


class WalSync:
    """``await sync.wait()`` after a commit returns once that commit is on disk."""

    def __init__(self, wal_path: str, *, fsync: Callable[[int], None] = os.fdatasync) -> None:
        self._path = wal_path
        self._fsync = fsync
        self._fd: int | None = None
        self._queue: queue.SimpleQueue[_Waiter | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False
        self.syncs = 0  # how many fdatasync calls were made (for tests and metrics)
        self.failure: str | None = None  # why a sync failed, once one has (see sync_failed)

    async def wait(self) -> None:
        if self._closed:
            raise RuntimeError("the database log's sync has been closed")
        if self.failure is not None:
            raise sync_failed_earlier(self.failure)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._ensure_thread()
        self._queue.put((fut, loop))
        await fut

    def close(self) -> None:
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:  # started on first use: one-shot CLI commands never need it
                    self._thread = threading.Thread(target=self._main, name="sqlite-walsync", daemon=True)
                    self._thread.start()

    def _main(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            # Everyone queued so far committed before this sync starts: one call serves them all.
            waiters = [first]
            stop = False
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                waiters.append(item)
            try:
                error = self._sync()
            except Exception as exc:
                # Not the disk's answer (a bug): it ended the thread with its waiters unsettled,
                # and every commit after waited for good. Theirs fail as not synced; the next
                # sync is tried as usual.
                log.exception("syncing %s failed unexpectedly", self._path)
                # Not "could not sync the database log": that names a failed fdatasync, final
                # until a restart (conditions.py), and this one is not.
                error = sqlite3.OperationalError(f"the database log's sync failed unexpectedly: {exc!r}")
            try:
                settle_on_loops(waiters, error)
            except Exception:
                log.exception("could not hand the database log's sync to its waiters")
            if stop:
                return

    def _sync(self) -> BaseException | None:
        """One ``fdatasync`` of the log: None once made, else the error for its waiters."""
        if self.failure is not None:
            return sync_failed_earlier(self.failure)
        try:
            if self._fd is None:
                # The log exists once the first transaction has committed into it, and stays
                # while this process keeps its connection open.
                self._fd = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:  # no sync was made, nothing was dropped: try again next time
            log.error("could not open %s to sync it: %s", self._path, exc)
            return sqlite3.OperationalError(f"could not open the database log to sync it: {exc}")
        try:
            self._fsync(self._fd)
            self.syncs += 1
        except OSError as exc:
            self.failure = exc.strerror or str(exc)
            return sync_failed(self._path, self.failure)
        return None


# How often a writer asks for a checkpoint, at most.
CHECKPOINT_INTERVAL_SECONDS = 0.5
# A log longer than this many frames (4 KiB pages) after a passive checkpoint is started over.
RESTART_AFTER_FRAMES = 8192
# How long that restart may wait for the writer and the readers to let go (and so hold up the
# next writer) before it gives up until the next checkpoint.
RESTART_WAIT_MS = 20
# A reader in the way of every restart for this long is named in the log, then every 5 minutes.
HELD_WARNING_SECONDS = 30.0
HELD_WARNING_EVERY_SECONDS = 300.0


class Checkpointer:
    """Copies the WAL back into the database on its own thread and connection.

    SQLite's automatic checkpoint runs inside the COMMIT that crosses 1,000 WAL pages: on the
    event loop it would hold up every request while it copies pages and syncs the database file
    (stalls of 100-400 ms were seen at 800 events/s). A passive checkpoint here never blocks the
    writer, whose own automatic checkpoint is off.

    A passive checkpoint never waits, so under steady writes it never catches up with the end of
    the log, and SQLite only starts the log over once one has: the ``-wal`` file grew without
    bound (by 25 MB/s at 15,000 events/s), and every append past its end allocated and zeroed
    new blocks (12 % of the event loop's time in ``pwrite``). Past ``restart_after_frames`` a
    RESTART checkpoint copies what the passive one left and waits for readers to move on, so
    the next commit writes from the start of the file again. It holds writers up for the few
    milliseconds that takes (they wait with ``asyncio.sleep``), at most once per interval."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        wal_path: str,
        *,
        writer_lock: threading.Lock,
        restart_after_frames: int = RESTART_AFTER_FRAMES,
    ) -> None:
        self._connect = connect
        self._wal_path = wal_path
        # Held during a restart: this process's writer, which only ever takes it without
        # blocking, then waits for it on its event loop instead of winning every race for
        # SQLite's lock against a checkpoint whose busy handler sleeps.
        self._writer_lock = writer_lock
        self._restart_after = restart_after_frames
        self._wanted = threading.Event()
        self._closed = False
        self._held_since: float | None = None  # when restarts began to find a reader in the way
        self._next_held_warning = 0.0
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        # A full disk fails every checkpoint, twice a second: a line as it starts, a few while it
        # lasts, one when it ends.
        self._outage = OutageLog(log, "WAL checkpoint")

    def request(self) -> None:
        if self._closed:
            return
        if self._thread is None:
            with self._start_lock:  # writers on several threads may ask first at once
                if self._thread is None:
                    self._thread = threading.Thread(target=self._main, name="sqlite-checkpoint", daemon=True)
                    self._thread.start()
        self._wanted.set()

    def close(self) -> None:
        self._closed = True
        self._wanted.set()
        if self._thread is not None:
            self._thread.join()

    def _open(self) -> sqlite3.Connection:
        conn = self._connect()
        try:
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA busy_timeout = {RESTART_WAIT_MS}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _main(self) -> None:
        # Opened at the first request, and again at the next after a failure: a connection that
        # could not be opened (the disk full, the file unreadable for a moment) ended the thread
        # with a traceback, and the log was never checkpointed again: it grew with every write.
        conn: sqlite3.Connection | None = None
        try:
            while True:
                self._wanted.wait()
                self._wanted.clear()
                if self._closed:
                    return
                try:
                    if conn is None:
                        conn = self._open()
                    _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    if frames >= self._restart_after:
                        with self._writer_lock:
                            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                        if not busy:
                            metrics.SQLITE_WAL_RESTARTS.inc()
                        self._restart_outcome(bool(busy), time.monotonic())
                    self._outage.succeeded()
                except sqlite3.Error as exc:  # locked, or the disk is full: the next request tries again
                    self._outage.failed(exc)
                except Exception:
                    # A bug: it ended the thread, and the log was never checkpointed again.
                    log.exception("the WAL checkpoint failed unexpectedly; the next request tries again")
                with contextlib.suppress(OSError):  # no log yet, or a read-only copy
                    metrics.SQLITE_WAL_BYTES.set(os.stat(self._wal_path).st_size)
        finally:
            if conn is not None:
                conn.close()

    def _restart_outcome(self, busy: bool, now: float) -> None:
        """Say so when the log cannot start over for long: a reader holding an old snapshot (a
        long transaction in another process, an open ``sqlite3`` shell) keeps every frame after
        it, and the file grows by every write (500 MB in 35 s at 700 events/s) with, until
        now, nothing in the log but ``ingestlayer_sqlite_wal_bytes``."""
        if not busy:
            if self._held_since is not None and self._next_held_warning:
                log.info(
                    "the SQLite log starts over again, after %.0f s held back by a reader",
                    now - self._held_since,
                )
            self._held_since, self._next_held_warning = None, 0.0
            return
        if self._held_since is None:
            self._held_since = now
        held = now - self._held_since
        if held >= HELD_WARNING_SECONDS and now >= self._next_held_warning:
            self._next_held_warning = now + HELD_WARNING_EVERY_SECONDS
            with contextlib.suppress(OSError):
                size = os.stat(self._wal_path).st_size
                log.warning(
                    "the SQLite log %s (%.0f MB) has not been able to start over for %.0f s: a reader "
                    "holds an old snapshot (a long transaction in another process, an open sqlite3 "
                    "shell); the file grows with every write until that reader ends",
                    self._wal_path,
                    size / 1e6,
                    held,
                )
