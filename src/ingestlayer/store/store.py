"""The store: every SQL statement the server runs lives in this package.

Callers ask for operations by name ("insert events", "lease due deliveries") and never build
queries. Each write operation is one transaction.

:class:`Store` is the one class callers use. The hot path (ingest, routing, leasing deliveries
and recording attempts) it hands to :mod:`.sqlite_hot` or :mod:`.pg_hot` here; the rest it
inherits from one module a concern: :mod:`.projects` (projects, keys, sign-outs, rate buckets),
:mod:`.configuration` (pipelines, destinations, sources, secrets), :mod:`.ending` (ending the
deliveries of deleted or disabled destinations), :mod:`.listings` (listing events and
deliveries, replay), :mod:`.retention` (the purge), :mod:`.entities` (entities and the step
cache) and :mod:`.notify` (LISTEN/NOTIFY), on :mod:`.base` (what they share).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
import weakref
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import func, insert, literal, select
from sqlalchemy.exc import DBAPIError

from ingestlayer import clock
from ingestlayer.ids import new_id
from ingestlayer.records import (
    AttemptResult,
    IngestResult,
    IngestRouting,
    LeasedDelivery,
    NewDelivery,
    NewEvent,
    RouteLease,
)
from ingestlayer.store.base import Conflict, NotFound
from ingestlayer.store.conditions import storage_condition
from ingestlayer.store.configuration import ConfigMixin
from ingestlayer.store.db import DATABASE_TIMEOUT_SECONDS, DEFAULT_POOL_SIZE, Engines, create_engines
from ingestlayer.store.ending import DELETED_DESTINATION_ERROR, DISABLED_DESTINATION_ERROR, EndingMixin
from ingestlayer.store.entities import EntitiesMixin
from ingestlayer.store.lease_window import Room
from ingestlayer.store.listings import ListingsMixin
from ingestlayer.store.pg_hot import PgHotPath
from ingestlayer.store.projects import ProjectsMixin, hash_key
from ingestlayer.store.retention import (
    DUE_STATUSES,
    PURGE_BATCH,
    PURGE_PAUSE_SECONDS,
    PURGE_TARGET_SECONDS,
    REPLAY_BATCH,
    RetentionMixin,
)
from ingestlayer.store.schema import deliveries, events, route_jobs
from ingestlayer.store.sqlite_file_watch import refuse_engine_writes
from ingestlayer.store.sqlite_hot import SqliteHotPath
from ingestlayer.timefmt import iso

# Names callers import from here, whichever module of the package defines them.
__all__ = [
    "DELETED_DESTINATION_ERROR",
    "DELIVERY_COUNT_CAP",
    "DELIVERY_STATUSES",
    "DISABLED_DESTINATION_ERROR",
    "DUE_STATUSES",
    "PG_CONCURRENT_WRITERS",
    "PURGE_BATCH",
    "PURGE_PAUSE_SECONDS",
    "PURGE_TARGET_SECONDS",
    "REPLAY_BATCH",
    "AtLeast",
    "Conflict",
    "NotFound",
    "Store",
    "hash_key",
    "storable_attempt",
    "storable_text",
]

log = logging.getLogger("ingestlayer.store")

DELIVERY_STATUSES = ("pending", "delivering", "retrying", "delivered", "dead")
# Counting deliveries walks the (project_id, status, id) index, about 100 ms per million entries
# on PostgreSQL and 50 on SQLite, and a busy project keeps millions of delivered ones: each
# status is counted up to this many, and a count that reaches it is reported as "at least".
DELIVERY_COUNT_CAP = 100_000
# Ingest transactions in flight at once on PostgreSQL (its pool holds more connections).
PG_CONCURRENT_WRITERS = 4
_lease_counter = itertools.count(1)


class AtLeast(int):
    """A count that stopped at its cap: there are this many or more. Formats with a ``+``."""

    def __format__(self, spec: str) -> str:
        return format(int(self), spec) + "+"

    def __repr__(self) -> str:
        return f"AtLeast({int(self)})"


def storable_text(text: str | None) -> str | None:
    """``text`` as both databases store it alike: NUL (which PostgreSQL cannot store in text)
    and lone surrogates (which are no UTF-8) shown as U+FFFD."""
    if text is None or (text.isascii() and "\x00" not in text):
        return text
    text = text.replace("\x00", "\ufffd")
    try:
        text.encode()
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text


def storable_attempt(r: AttemptResult) -> AttemptResult:
    """``r`` with its error and response excerpt storable (:func:`storable_text`).

    Both come from the receiver (its body, its reason). On PostgreSQL one answer holding a NUL
    failed the whole batch of attempts it was recorded with, whose deliveries were then sent
    again when their leases ran out, and its own forever. SQLite stores the same text, so the
    two show the same attempt log."""
    error, excerpt = storable_text(r.error), storable_text(r.response_excerpt)
    if error is r.error and excerpt is r.response_excerpt:
        return r
    return dataclasses.replace(r, error=error, response_excerpt=excerpt)


class DatabaseNotWritable(PermissionError):
    """The SQLite file (or its directory) is read-only to this process."""


class Store(ProjectsMixin, ConfigMixin, EndingMixin, ListingsMixin, RetentionMixin, EntitiesMixin):
    """Async access to the database. One instance per process."""

    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        self.dialect = engines.dialect
        self.worker_id = f"{os.uname().nodename}:{os.getpid()}"
        self._config_change_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # The statements run for every event and attempt bypass SQLAlchemy: plain sqlite3 on
        # the store's own threads, or an asyncpg pool (see sqlite_hot and pg_hot).
        url = engines.write.url
        self._hot: SqliteHotPath | PgHotPath
        if self.dialect == "sqlite":
            if not url.database or url.database == ":memory:":
                raise ValueError("SQLite needs a database file (an in-memory database is one per connection)")
            self._hot = SqliteHotPath(url.database)
            refuse_engine_writes(engines.write, self._hot.db.files)
        else:
            dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._hot = PgHotPath(dsn, engines.command_timeout, engines.pool_size)

    def config_change_lock(self, project_id: str) -> asyncio.Lock:
        """Held by one change of the project's configuration at a time in this process (see
        :func:`ingestlayer.api.manage.until_unchanged`); kept only while in use."""
        lock = self._config_change_locks.get(project_id)
        if lock is None:
            lock = self._config_change_locks[project_id] = asyncio.Lock()
        return lock

    @property
    def concurrent_writers(self) -> int:
        """How many hot write transactions are worth running at once: SQLite has one writer;
        PostgreSQL commits concurrently (and groups their log flushes itself)."""
        return 1 if self.dialect == "sqlite" else PG_CONCURRENT_WRITERS

    async def sync_clock(self) -> float:
        """Stamp and compare stored times on the database's clock from now on; return how far
        it is ahead of this machine's. SQLite has no clock but the machine's: 0."""
        if isinstance(self._hot, PgHotPath):
            return await self._hot.sync_clock()
        return 0.0

    @classmethod
    def from_url(
        cls, url: str, command_timeout: float = DATABASE_TIMEOUT_SECONDS, pool_size: int = DEFAULT_POOL_SIZE
    ) -> Store:
        return cls(create_engines(url, command_timeout, pool_size))

    async def close(self) -> None:
        await self._hot.close()
        await self.engines.dispose()

    async def ping(self) -> None:
        """Both of the store's ways to the database answer (for /readyz): the engine's, and on
        PostgreSQL the hot path's pool, which ingest and the dispatcher use, and which must be
        able to write."""
        async with self.engines.read.connect() as conn:
            await conn.execute(select(1))
        if isinstance(self._hot, PgHotPath):
            await self._hot.ping()

    def durability_failure(self) -> str | None:
        """Why nothing can be stored durably until restart (SQLite: a failed sync of the log)."""
        if isinstance(self._hot, SqliteHotPath) and self._hot.db.wal is not None:
            return self._hot.db.wal.failure
        return None

    def moved_files(self) -> str | None:
        """Why nothing is stored while SQLite's files are not where they were opened (looked at
        again now: two ``stat`` calls); None while they are."""
        if isinstance(self._hot, SqliteHotPath):
            self._hot.db.files.check()
            return self._hot.db.files.problem
        return None

    async def check_writable(self) -> None:
        """Raise :class:`DatabaseNotWritable` when this process cannot write the SQLite file.

        A read-only file opens, reads and answers pings: a server started on one was ready, and
        answered every event 503 "retry shortly", for ever. Writing the header's user_version
        back as it is, then rolling back, is the smallest write SQLite refuses there."""
        if self.dialect != "sqlite":
            return
        async with self.engines.write.connect() as conn:
            trans = await conn.begin()
            try:
                version = (await conn.exec_driver_sql("PRAGMA user_version")).scalar_one()
                await conn.exec_driver_sql(f"PRAGMA user_version = {int(version)}")
            except DBAPIError as exc:
                if storage_condition(exc) != "read_only":
                    raise
                raise DatabaseNotWritable(
                    f"the database {self.engines.write.url.database} cannot be written by this process: "
                    "the file, or its directory (where SQLite keeps its -wal and -shm files), is read-only"
                ) from None
            finally:
                await trans.rollback()

    # ---- ingest ------------------------------------------------------------------------------

    def route_token(self, lease_seconds: float) -> float:
        """A new route lease token: the lease's deadline, made unique within this process."""
        return clock.now() + lease_seconds + next(_lease_counter) * 1e-6

    async def insert_events(
        self,
        batch: Sequence[NewEvent],
        route_token: float | None = None,
        routing: IngestRouting | None = None,
    ) -> list[IngestResult]:
        """Store events and their route jobs in one transaction (the outbox).

        Idempotency is on (project, key): a key already stored, or repeated within this batch,
        yields the first event's id with ``duplicate=True`` and no second route job.
        With ``route_token`` the route jobs are stored already leased under it (a router in this
        process takes the events straight from ingest); otherwise they are due at once.
        Events that ``routing`` settled (no pipeline takes them, or ingest routed them itself)
        get no route job, and the latter their trace and deliveries, while their project's
        configuration is still the one that decided (see :class:`IngestRouting`).
        """
        return await self._hot.insert_events(batch, route_token, routing)

    # ---- routing -----------------------------------------------------------------------------

    async def lease_route_jobs(self, limit: int, lease_seconds: float) -> RouteLease:
        return await self._hot.lease_route_jobs(limit, clock.now(), self.route_token(lease_seconds))

    async def complete_routing(
        self,
        lease: RouteLease,
        new_deliveries: Sequence[NewDelivery],
        traces: dict[str, list[dict[str, Any]]],
        *,
        prelease: int = 0,
        lease_seconds: float = 90.0,
    ) -> tuple[int, list[LeasedDelivery]]:
        """Insert deliveries and drop route jobs in one transaction, for the jobs still leased.

        Returns how many deliveries were inserted, and the first ``prelease`` of them inserted
        already leased (to this process's dispatcher, which starts them at once: no lease query,
        no poll). Jobs whose lease was lost to another router are left alone, so an event is never
        routed twice.
        """
        return await self._hot.complete_routing(lease, new_deliveries, traces, prelease, lease_seconds)

    async def defer_route_jobs(
        self,
        lease: RouteLease,
        delays: dict[str, float],
        *,
        uncounted: bool = False,
        traces: dict[str, list[dict[str, Any]]] | None = None,
        routed_by: dict[str, int] | None = None,
    ) -> None:
        """Give leased jobs back to the queue after a failure, each due again after its delay.
        ``uncounted``: the routing was not attempted (put off, or cut short by a shutdown), so
        the lease does not count as one of the event's routing attempts. ``traces``: what to
        show on events while they wait (why their routing failed), set where the job was still
        this lease's. A counted deferral marks the job waiting: a change of its project's
        configuration makes it due at once (ConfigMixin._wake_waiting_routes). ``routed_by``:
        the configuration version each event's routing failed by; one whose project's has moved
        on since is due at once instead: the change came while it was routed (that wake leaves
        leased jobs to their router), and may be the fix."""
        await self._hot.defer_route_jobs(lease, delays, uncounted, traces or {}, routed_by or {})

    async def renew_route_leases(self, tokens: dict[str, float], lease_seconds: float) -> dict[str, float]:
        """Extend the leases of jobs still being routed (event id → the token each is leased
        under). Returns the new token of each job still ours; one missing ran out and was
        taken by another router, which routes it instead."""
        if not tokens:
            return {}
        token = self.route_token(lease_seconds)
        return dict.fromkeys(await self._hot.renew_route_leases(tokens, token), token)

    async def create_test_delivery(self, event: NewEvent, destination_id: str) -> str:
        """Store a test event and one delivery of it to ``destination_id``, bypassing pipelines."""
        now = clock.now()
        did = new_id("dlv")
        body = orjson.dumps(
            {
                "id": event.id,
                "type": event.type,
                "occurred_at": iso(event.occurred_at),
                "payload": orjson.loads(event.payload_json),
            }
        ).decode()
        async with self.engines.write.begin() as conn:
            await conn.execute(
                insert(events).values(
                    id=event.id,
                    project_id=event.project_id,
                    type=event.type,
                    payload=event.payload_json,
                    idempotency_key=None,
                    source=event.source,
                    occurred_at=event.occurred_at,
                    received_at=event.received_at,
                )
            )
            await conn.execute(
                insert(deliveries).values(
                    id=did,
                    project_id=event.project_id,
                    event_id=event.id,
                    event_type=event.type,
                    pipeline_id="test",
                    destination_id=destination_id,
                    status="pending",
                    attempts=0,
                    retry_base=0,
                    due_at=now,
                    body=body,
                    created_at=now,
                    updated_at=now,
                )
            )
        return did

    async def pending_route_jobs(self) -> int:
        async with self.engines.read.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(route_jobs)) or 0)

    # ---- delivery ------------------------------------------------------------------------------

    async def lease_deliveries(
        self, limit: int, lease_seconds: float, room: Room | None = None
    ) -> list[LeasedDelivery]:
        """Lease up to ``limit`` due deliveries (including ones whose lease has expired), the
        oldest first, each destination's up to its ``room`` (its free concurrency here)."""
        return await self._hot.lease_deliveries(limit, lease_seconds, room)

    async def record_attempts(
        self, results: Sequence[AttemptResult], *, again: bool = False, counted: bool = True
    ) -> None:
        """Log attempts and move their deliveries on, in one transaction.

        The state change applies only while the lease is still ours; the attempt itself is always
        logged, because the request was made. ``again``: some may be recorded already (an earlier
        try lost its connection, perhaps after the commit), and are not logged twice.
        ``counted=False``: the attempts do not count toward the retry schedule (``retry_base``
        moves with them), as for ones cut short at shutdown.
        """
        if results:
            await self._hot.record_attempts(
                [storable_attempt(r) for r in results], again=again, counted=counted
            )
            retrying = [r.delivery_id for r in results if r.status == "retrying"]
            if retrying:
                try:
                    await self.end_stranded_retries(retrying)
                except Exception as exc:
                    # The attempts are recorded: raising would make callers record them again,
                    # row by row. These deliveries end instead at their next attempt, which
                    # finds the destination gone.
                    log.warning("could not end retries of deleted or disabled destinations: %s", exc)

    async def release_leases(
        self, leased: Sequence[LeasedDelivery], cut_short: Sequence[AttemptResult] = ()
    ) -> None:
        """Hand back leases, due again right away: ``leased`` never attempted (shutdown, a full
        destination), and ``cut_short`` attempts that shutdown interrupted. Those are logged
        (the request was made, and the next one is numbered after it) without counting toward
        the retry schedule, so restarting workers never makes a delivery dead."""
        if leased:
            await self._hot.release_leases(leased)
        if cut_short:
            await self.record_attempts(cut_short, counted=False)

    # ---- counting deliveries (API, dashboard) -------------------------------------------------

    # Here, not in listings.py: it reads DELIVERY_COUNT_CAP from this module at each call.
    async def delivery_counts(
        self,
        project_id: str,
        *,
        statuses: Sequence[str] = DELIVERY_STATUSES,
        since_id: str | None = None,
        destination_id: str | None = None,
        cap: int | None = None,
        zeros: bool = False,
    ) -> dict[str, int]:
        """Deliveries per status (those with an id >= ``since_id``, and to ``destination_id``, if
        given), each up to ``cap`` (:data:`DELIVERY_COUNT_CAP` by default).

        A count that reaches the cap is an :class:`AtLeast`: the project has that many or more.
        Each status is one range of ``ix_deliveries_project_status_id`` read no further than the
        cap, so the cost is bounded however many deliveries the project keeps (at 3 million, 15 ms
        on PostgreSQL and 8 on SQLite, against 300 and 160 for counting them all). Statuses with
        none are left out unless ``zeros``.
        """
        cap = DELIVERY_COUNT_CAP if cap is None else cap
        if cap < 1:
            raise ValueError("cap must be at least 1")

        def capped(status: str) -> Any:
            # The status written into the SQL, not bound: PostgreSQL plans a prepared statement
            # once for any parameters after five runs, and for "some status" (a fifth of the
            # rows, by its statistics) that plan read the whole table, for each status counted.
            # Written in, each status has its own plan: an index range for the few pending.
            conds = [
                deliveries.c.project_id == project_id,
                deliveries.c.status == literal(status, literal_execute=True),
            ]
            if since_id is not None:
                conds.append(deliveries.c.id >= since_id)
            if destination_id is not None:
                conds.append(deliveries.c.destination_id == destination_id)
            upto = select(deliveries.c.id).where(*conds).limit(cap).subquery()
            return select(func.count()).select_from(upto).scalar_subquery()

        async with self.engines.read.connect() as conn:
            row = (await conn.execute(select(*(capped(s) for s in statuses)))).one()
        counts: dict[str, int] = {}
        for status, value in zip(statuses, row, strict=True):
            n = int(value or 0)
            if n or zeros:
                counts[status] = AtLeast(n) if n >= cap else n
        return counts
