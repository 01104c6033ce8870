"""Group commit: concurrent ingest requests share one transaction.

Each request hands its events to :class:`GroupCommitter` and awaits a future. A single writer
task drains everything that queued up while the previous transaction was committing and writes
it in one go, so a durable (synchronous=FULL / fsync) commit is paid once per group, not once
per event. Under light load a group is one request and latency is one commit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from ingestlayer.liveness import Heartbeat
from ingestlayer.records import IngestResult, NewEvent
from ingestlayer.store.outage_log import OutageLog
from ingestlayer.store.unavailable import DATABASE_UNAVAILABLE

log = logging.getLogger("ingestlayer.ingest")

SHUTTING_DOWN = "the server is shutting down"

InsertFn = Callable[[Sequence[NewEvent]], Awaitable[list[IngestResult]]]

# Turns of the event loop a group is left open for before it is taken. The answers of the group
# before have just been written (at the end of a turn); the requests their clients send next
# arrive over the next turns. Taken at once, a group held the few requests that happened to be
# queued: at 64 connections of single events about 23 per group (880 syncs a second), each
# paying the transaction's fixed cost (~127 µs) and its share of the log's frames and sync.
# Two turns: +11-13 % requests/s on SQLite and +8 % on PostgreSQL (bench/ab_ingest.py,
# alternating 4 s runs), three or four less; with nothing else to do the loop turns in
# microseconds, so a lone request waits no longer than that.
GATHER_TURNS = 2


class GroupCommitter:
    def __init__(
        self,
        insert: InsertFn,
        *,
        max_batch: int = 2000,
        max_inflight: int = 1,
        on_commit: Callable[[list[IngestResult]], None] | None = None,
    ) -> None:
        self._insert = insert
        self._max_batch = max_batch
        # Transactions in flight at once: one where the database has a single writer (SQLite,
        # whose log sync is shared anyway); more where commits run concurrently (PostgreSQL),
        # so the next group is written while the last one waits for its commit.
        self._max_inflight = max(1, max_inflight)
        self._inflight: set[asyncio.Task[None]] = set()
        self._on_commit = on_commit
        self._queue: list[tuple[list[NewEvent], asyncio.Future[list[IngestResult]]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # The writer task's loop, kept: asyncio.get_running_loop() makes a getpid() system call
        # (its fork check) each time, once per request here.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Each request that fails for the database's absence is already answered 503 with
        # Retry-After: a traceback each (one a request, 55 lines long) flooded the log.
        self._outage = OutageLog(log, "storing ingested events")
        # For /healthz: idle while it waits for requests with no transaction in flight, which may
        # last for ever; otherwise stamped as groups are taken and transactions end.
        self.heartbeat = Heartbeat("ingest", "the ingest group committer")

    def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.create_task(self._run(), name="ingest-group-commit")
            self.heartbeat.task = self._task

    async def submit(self, items: list[NewEvent]) -> list[IngestResult]:
        """Store ``items`` durably; return once their transaction has committed."""
        if self._closing:
            raise RuntimeError(SHUTTING_DOWN)
        fut: asyncio.Future[list[IngestResult]] = (self._loop or asyncio.get_running_loop()).create_future()
        self._queue.append((items, fut))
        self._wake.set()
        return await fut

    async def _run(self) -> None:
        beat = self.heartbeat
        while True:
            beat.idle = not self._inflight  # else the transactions in flight stamp it as they end
            await self._wake.wait()
            beat.idle = False
            self._wake.clear()
            while self._queue:
                beat.last = time.monotonic()
                if len(self._inflight) >= self._max_inflight:
                    await asyncio.wait(self._inflight, return_when=asyncio.FIRST_COMPLETED)
                    continue
                for _ in range(GATHER_TURNS):
                    await asyncio.sleep(0)
                group = self._take_group()
                if self._max_inflight == 1:
                    await self._commit_guarded(group)
                else:
                    task = asyncio.create_task(self._commit_guarded(group))
                    self._inflight.add(task)
                    task.add_done_callback(self._ended)
            if self._closing and not self._queue:
                if self._inflight:
                    await asyncio.gather(*self._inflight)
                return

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A transaction in flight ended: the committer went on; with nothing left to do it
        waits for requests."""
        self._inflight.discard(task)
        self.heartbeat.beat()
        if not self._inflight and not self._queue:
            self.heartbeat.idle = True

    def _take_group(self) -> list[tuple[list[NewEvent], asyncio.Future[list[IngestResult]]]]:
        group: list[tuple[list[NewEvent], asyncio.Future[list[IngestResult]]]] = []
        size = 0
        while self._queue and (not group or size + len(self._queue[0][0]) <= self._max_batch):
            items, fut = self._queue.pop(0)
            group.append((items, fut))
            size += len(items)
        return group

    async def _commit_guarded(
        self, group: list[tuple[list[NewEvent], asyncio.Future[list[IngestResult]]]]
    ) -> None:
        """Commit ``group``, whatever goes wrong: an error nobody expected (a bug) ended the
        writer task with nothing in the log, and every request after it waited for an answer
        forever while /readyz said ready. Its requests get the error (a 503), the next group is
        written as usual."""
        try:
            await self._commit(group)
        except Exception as exc:
            log.exception(
                "an ingest group of %d requests met an unexpected error; those not answered get a 503",
                len(group),
            )
            _fail(group, exc)

    async def _commit(self, group: list[tuple[list[NewEvent], asyncio.Future[list[IngestResult]]]]) -> None:
        flat = [ev for items, _ in group for ev in items]
        try:
            results = await self._insert(flat)
        except asyncio.CancelledError:  # a shutdown that could wait no longer (close)
            _fail(group, RuntimeError(SHUTTING_DOWN))
            raise
        except Exception as exc:
            if len(group) > 1 and not isinstance(exc, DATABASE_UNAVAILABLE):
                # The database refused the group rather than being out of reach: one request's
                # event must not fail every other request's (all 503, and again on their
                # retries while it kept coming back). Each request is stored on its own.
                log.exception(
                    "ingest transaction failed for %d events; storing its %d requests one by one",
                    len(flat),
                    len(group),
                )
                for one in group:
                    self.heartbeat.beat()  # one transaction each: a group's worth may take a while
                    await self._commit([one])
                return
            # Nothing was committed: every request in the group gets the error (a 503), and
            # its client retries with the same idempotency key.
            if isinstance(exc, DATABASE_UNAVAILABLE):
                self._outage.failed(exc, "requests are answered 503 with Retry-After")
            else:
                log.exception("ingest transaction failed for %d events", len(flat))
            _fail(group, exc)
            return
        self._outage.succeeded()
        pos = 0
        for items, fut in group:
            if not fut.done():
                fut.set_result(results[pos : pos + len(items)])
            pos += len(items)
        # After the answers: they are committed, whatever counting them does.
        if self._on_commit is not None:
            self._on_commit(results)

    async def close(self, timeout: float | None = None) -> bool:
        """Commit what is queued, then stop. Past ``timeout`` (a database that does not answer)
        stop anyway: the requests still waiting get the error (a 503; none was answered 202,
        so nothing accepted is lost). Returns whether it stopped before everything was stored."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is None:
            return False
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if done:
            return False
        task.cancel()
        for inflight in list(self._inflight):
            inflight.cancel()
        await asyncio.gather(task, *self._inflight, return_exceptions=True)
        _fail(self._queue, RuntimeError(SHUTTING_DOWN))
        self._queue.clear()
        return True


def _fail(group: list[tuple[list[NewEvent], asyncio.Future[list[IngestResult]]]], exc: BaseException) -> None:
    """Answer each request of ``group`` not answered yet with ``exc``."""
    for _, fut in group:
        if not fut.done():
            fut.set_exception(exc)
