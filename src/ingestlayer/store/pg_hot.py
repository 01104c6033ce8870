"""The hot path on PostgreSQL: the statements run for every event and every attempt, on asyncpg.

Through SQLAlchemy's asyncio layer a transaction cost a pool checkout with a ping (a round
trip), statement compilation and result processing on top of the driver. Here each operation is
one transaction on a connection from a plain asyncpg pool, every batch goes in as arrays
(``unnest``, ``= ANY``) in one statement, and asyncpg keeps each statement prepared. The
operations do exactly what the SQLite versions in :mod:`ingestlayer.store.sqlite_hot` do; the
integration suite runs the same tests against both databases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import asyncpg
import orjson

from ingestlayer import clock
from ingestlayer.ids import new_id
from ingestlayer.records import (
    AttemptResult,
    DestinationRow,
    IngestResult,
    IngestRouting,
    LeasedDelivery,
    NewDelivery,
    NewEvent,
    RouteLease,
)
from ingestlayer.store import rows as rowmap
from ingestlayer.store.db import CLOSE_TIMEOUT_SECONDS, close_connections, count_dropped
from ingestlayer.store.idempotency import InsertPlan
from ingestlayer.store.lease_window import DUE, DUE_DESTINATIONS_CTE, LEASE_WINDOW, Room
from ingestlayer.store.outage_log import OutageLog

log = logging.getLogger("ingestlayer.store")

POOL_SIZE = 10
# Workers in other processes are told of new work at commit (NOTIFY is delivered then), instead of
# finding it at their next poll: a poll interval per hop would rule out a low p99.
ROUTE_CHANNEL = "ingestlayer_route"
DELIVER_CHANNEL = "ingestlayer_deliver"
# What every process caches for a few seconds changed: "keys:<project id>" (one was revoked) or
# "secrets:<project id>" (one was set or deleted). Told at commit, so none waits out its cache.
CHANGES_CHANNEL = "ingestlayer_changes"
LISTEN_RETRY_SECONDS = 1.0

# Ingest as one statement (one round trip, its own transaction): the events, then the route jobs
# and deliveries of those it inserted (a taken idempotency key inserts nothing), then the
# notifications, which PostgreSQL sends at commit. A transaction of separate statements cost
# BEGIN, one round trip each and COMMIT.
#
# The rows go in as JSON documents ($1 the events, $2 the deliveries, $4 the ids of the events
# that get a route job), not as one array per column: asyncpg checks every array element against
# collections.abc in Python (two isinstance calls per string), which cost the event loop more per
# event than the rest of the insert. orjson writes the events' dataclasses as they are; floats
# come back exactly (shortest round-trip digits both ways).
_INGEST_EVENT_COLUMNS = (
    "id text, project_id text, type text, payload_json text, idempotency_key text, source text, "
    "occurred_at float8, received_at float8, trace text"
)
_DELIVERY_KEYS = (
    "id",
    "project_id",
    "event_id",
    "event_type",
    "pipeline_id",
    "destination_id",
    "status",
    "due_at",
    "lease_token",
    "body",
)
# $8 holds the configuration version (by project) that ingest's routing decisions were made at.
# Only where the project's config_version is still that one do they hold (IngestRouting): its
# events get their traces and deliveries and no route job for what ingest settled; every other
# event gets a route job. Checked in the statement itself rather than read before it: a separate
# read cost a second round trip per group, which the requests of the group waited for. Either
# way the version is read in its own statement's snapshot (READ COMMITTED), so a configuration
# committed before the event arrived is seen.
_INGEST = f"""
WITH v AS (
    SELECT p.id FROM projects p JOIN json_each_text($8::json) AS x(id, version)
        ON p.id = x.id AND p.config_version = x.version::int
), e AS (
    INSERT INTO events (id, project_id, type, payload, idempotency_key, source, occurred_at, received_at,
                        trace)
    SELECT x.id, x.project_id, x.type, x.payload_json, x.idempotency_key, x.source, x.occurred_at,
           x.received_at, CASE WHEN x.project_id IN (SELECT id FROM v) THEN x.trace END
    FROM json_to_recordset($1::json) AS x({_INGEST_EVENT_COLUMNS})
    ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id, project_id, received_at
), d AS (
    INSERT INTO deliveries (id, project_id, event_id, event_type, pipeline_id, destination_id, status,
                            attempts, retry_base, due_at, lease_token, body, created_at, updated_at)
    SELECT x.id, x.project_id, x.event_id, x.event_type, x.pipeline_id, x.destination_id, x.status, 0, 0,
           x.due_at, x.lease_token, x.body, $3, $3
    FROM json_to_recordset($2::json)
         AS x(id text, project_id text, event_id text, event_type text, pipeline_id text, destination_id text,
              status text, due_at float8, lease_token text, body text)
    WHERE x.event_id IN (SELECT id FROM e) AND x.project_id IN (SELECT id FROM v)
    RETURNING status
), j AS (
    INSERT INTO route_jobs (event_id, project_id, due_at, attempts)
    SELECT e.id, e.project_id, coalesce($5::float8, e.received_at), $6::int
    FROM e
    WHERE e.project_id NOT IN (SELECT id FROM v)
       OR e.id IN (SELECT value FROM json_array_elements_text($4::json))
    RETURNING event_id
)
SELECT id, NULL FROM e
UNION ALL
SELECT NULL, id FROM v
UNION ALL
SELECT NULL, NULL FROM (
    SELECT pg_notify(c, '') FROM unnest($7::text[]) AS c
    WHERE (c = '{ROUTE_CHANNEL}' AND EXISTS (SELECT 1 FROM j))
       OR (c = '{DELIVER_CHANNEL}' AND EXISTS (SELECT 1 FROM d WHERE status = 'pending'))
) AS n
"""
_EXISTING_KEYS = """
SELECT idempotency_key, id FROM events WHERE project_id = $1 AND idempotency_key = ANY($2::text[])
"""
_LEASE_JOBS = """
UPDATE route_jobs SET due_at = $1, attempts = attempts + 1, waiting = false
WHERE event_id IN (
    SELECT event_id FROM route_jobs WHERE due_at <= $2 ORDER BY due_at LIMIT $3 FOR UPDATE SKIP LOCKED
)
RETURNING event_id, attempts
"""
_EVENTS_BY_ID = f"""
SELECT {rowmap.EVENT_COLUMNS} FROM events WHERE id = ANY($1::text[]) ORDER BY id
"""
_CONFIG_VERSIONS = "SELECT id, config_version FROM projects WHERE id = ANY($1::text[])"
_COMPLETE_JOBS = """
DELETE FROM route_jobs WHERE due_at = $1 AND event_id = ANY($2::text[]) RETURNING event_id
"""
_INSERT_DELIVERIES = """
INSERT INTO deliveries (id, project_id, event_id, event_type, pipeline_id, destination_id, status, attempts,
                        retry_base, due_at, lease_token, body, created_at, updated_at)
SELECT d.id, d.project_id, d.event_id, d.event_type, d.pipeline_id, d.destination_id, d.status, 0, 0,
       d.due_at, d.lease_token, d.body, $2, $2
FROM json_to_recordset($1::json)
     AS d(id text, project_id text, event_id text, event_type text, pipeline_id text, destination_id text,
          status text, due_at float8, lease_token text, body text)
"""
_SET_TRACES = """
UPDATE events SET trace = v.trace FROM unnest($1::text[], $2::text[]) AS v(id, trace) WHERE events.id = v.id
"""
# $5: the configuration version each event's routing failed by (NULL: not known); where its
# project's has moved on since, the job is due now ($6) rather than waiting (Store.defer_route_jobs).
_MOVED = "v.version IS DISTINCT FROM (SELECT config_version FROM projects WHERE id = route_jobs.project_id)"
_DEFER_JOBS = f"""
UPDATE route_jobs
SET due_at = CASE WHEN v.version IS NOT NULL AND {_MOVED} THEN $6 ELSE v.due END,
    attempts = GREATEST(route_jobs.attempts - $4, 0),
    waiting = $4 = 0 AND (v.version IS NULL OR NOT {_MOVED})
FROM unnest($1::text[], $2::float8[], $3::float8[], $5::int[]) AS v(id, token, due, version)
WHERE route_jobs.event_id = v.id AND route_jobs.due_at = v.token
RETURNING route_jobs.event_id
"""
_RENEW_JOBS = """
UPDATE route_jobs SET due_at = $1
FROM unnest($2::text[], $3::float8[]) AS v(id, token)
WHERE route_jobs.event_id = v.id AND route_jobs.due_at = v.token
RETURNING route_jobs.event_id
"""
_LEASE_DELIVERIES = f"""
UPDATE deliveries SET status = 'delivering', due_at = $1, lease_token = $2, updated_at = $3
WHERE id IN (
    SELECT id FROM deliveries WHERE {DUE} AND due_at <= $3
    ORDER BY due_at LIMIT $4 FOR UPDATE SKIP LOCKED
)
RETURNING {rowmap.DELIVERY_COLUMNS}
"""
# With each destination's room (lease_window), in one round trip: the oldest due rows of a
# window, each destination's up to its room ($6/$7 by id, $8 for any other), locked and leased;
# with how many rows the window held ("seen", on every row; on a single row of NULLs when none
# were leased), so the caller knows whether more may lie beyond it.
_LEASE_WINDOW = f"""
WITH win AS (
    SELECT id, destination_id, due_at FROM deliveries WHERE {DUE} AND due_at <= $3
    ORDER BY due_at LIMIT $5
), ranked AS (
    SELECT win.id, win.due_at, coalesce(k.room, $8) AS room,
           row_number() OVER (PARTITION BY win.destination_id ORDER BY win.due_at) AS n
    FROM win LEFT JOIN unnest($6::text[], $7::int[]) AS k(did, room) ON k.did = win.destination_id
), picked AS (
    SELECT id FROM deliveries
    WHERE id IN (SELECT id FROM ranked WHERE n <= room ORDER BY due_at LIMIT $4)
      AND {DUE} AND due_at <= $3
    FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE deliveries SET status = 'delivering', due_at = $1, lease_token = $2, updated_at = $3
    WHERE id IN (SELECT id FROM picked)
    RETURNING {rowmap.DELIVERY_COLUMNS}
)
SELECT leased.*, w.seen FROM (SELECT count(*) AS seen FROM win) AS w LEFT JOIN leased ON true
"""
# Beyond the window: each destination with due-status rows (a skip scan of
# ix_deliveries_due_destination), its oldest due rows up to its room, the oldest $4 of those.
_LEASE_PER_DESTINATION = f"""
WITH RECURSIVE {DUE_DESTINATIONS_CTE}, candidates AS (
    SELECT x.id, x.due_at
    FROM d LEFT JOIN unnest($5::text[], $6::int[]) AS k(did, room) ON k.did = d.id
    CROSS JOIN LATERAL (
        SELECT id, due_at FROM deliveries
        WHERE {DUE} AND destination_id = d.id AND due_at <= $3
        ORDER BY due_at LIMIT greatest(0, least($4, coalesce(k.room, $7)))
    ) AS x
    WHERE d.id IS NOT NULL
), picked AS (
    SELECT id FROM deliveries
    WHERE id IN (SELECT id FROM candidates ORDER BY due_at LIMIT $4) AND {DUE} AND due_at <= $3
    FOR UPDATE SKIP LOCKED
)
UPDATE deliveries SET status = 'delivering', due_at = $1, lease_token = $2, updated_at = $3
WHERE id IN (SELECT id FROM picked)
RETURNING {rowmap.DELIVERY_COLUMNS}
"""
# Attempts logged and their deliveries moved on in one statement (one round trip, one implicit
# transaction), the rows as JSON documents ($1 the results, $2 the deliveries' new states; see
# _INGEST for why not arrays). The state moves on only while the lease is still ours; the
# attempt is logged regardless. $4 moves retry_base along with the attempts for attempts that
# do not count toward the retry schedule (cut short at shutdown).
_STATE_KEYS = ("id", "token", "status", "n", "due", "code", "error", "finished")
_RECORD_ATTEMPTS = """
WITH a AS (
    INSERT INTO attempts (delivery_id, project_id, n, started_at, duration_ms, status_code, error,
                          response_excerpt, next_retry_at, worker)
    SELECT delivery_id, project_id, n, started_at, duration_ms, status_code, error, response_excerpt,
           next_retry_at, worker
    FROM json_to_recordset($1::json)
         AS x(delivery_id text, project_id text, n int, started_at float8, duration_ms float8,
              status_code int, error text, response_excerpt text, next_retry_at float8, worker text)
    {guard}
)
UPDATE deliveries SET status = v.status, attempts = v.n, due_at = v.due, lease_token = NULL,
       last_status_code = v.code, last_error = v.error, updated_at = $3, finished_at = v.finished,
       retry_base = deliveries.retry_base + $4
FROM json_to_recordset($2::json)
     AS v(id text, token text, status text, n int, due float8, code int, error text, finished float8)
WHERE deliveries.id = v.id AND deliveries.lease_token = v.token
"""
# Recording again what may have been recorded already (the connection was lost after the commit,
# before its answer): an attempt already logged is not logged twice. The state needs no guard:
# a recorded attempt cleared the lease token its update matches on.
_RECORD_ATTEMPTS_AGAIN = _RECORD_ATTEMPTS.format(
    guard="WHERE NOT EXISTS (SELECT 1 FROM attempts AS p WHERE p.delivery_id = x.delivery_id"
    " AND p.n = x.n AND p.started_at = x.started_at)"
)
_RECORD_ATTEMPTS = _RECORD_ATTEMPTS.format(guard="")
_RELEASE = """
UPDATE deliveries SET status = v.status, due_at = $4, lease_token = NULL, updated_at = $4
FROM unnest($1::text[], $2::text[], $3::text[]) AS v(id, token, status)
WHERE deliveries.id = v.id AND deliveries.lease_token = v.token
"""
_DESTINATIONS = f"""
SELECT {rowmap.DESTINATION_COLUMNS} FROM destinations WHERE id = ANY($1::text[])
"""


def _columns(rows: Sequence[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows to one list per column, for ``unnest``."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(col) for col in zip(*rows, strict=True)]


def _json_rows(keys: Sequence[str], rows: Iterable[tuple[Any, ...]]) -> str:
    """Rows as the JSON document (objects with these keys) that ``json_to_recordset`` reads."""
    return orjson.dumps([dict(zip(keys, r, strict=True)) for r in rows]).decode()


async def _insert_deliveries(
    conn: asyncpg.Connection, new: Sequence[NewDelivery], prelease: int, lease_seconds: float
) -> list[LeasedDelivery]:
    """Insert routed deliveries; the first ``prelease`` go straight to this process's
    dispatcher, inserted already leased, and are returned as such."""
    if not new:
        return []
    rows, leased, now = rowmap.new_delivery_rows(new, prelease, lease_seconds)
    await conn.execute(_INSERT_DELIVERIES, _json_rows(_DELIVERY_KEYS, rows), now)
    if len(leased) < len(new):  # some wait in the table: wake the dispatchers
        await conn.execute(f"NOTIFY {DELIVER_CHANNEL}")
    return leased


async def keep_session(conn: asyncpg.Connection) -> None:
    """What a pooled connection needs before its next use: nothing beyond what asyncpg always
    does (roll back a transaction left open, drop listeners). The default reset sends
    ``SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`` at every release, a
    round trip per transaction for state the hot path never creates: it runs plain statements
    and managed transactions on these connections, with no SET, LISTEN (the listener has its own
    connection), cursor or advisory lock."""


def handed_out_ended(exc: asyncpg.InternalClientError) -> bool:
    """asyncpg would not start a statement: the connection was still reading the server's
    FATAL for a session that had ended ("cannot switch to state 12; another operation (2) is in
    progress"). Raised before anything is sent."""
    return str(exc).startswith("cannot switch to state")


class PgHotPath:
    def __init__(self, dsn: str, command_timeout: float | None = None, pool_size: int = POOL_SIZE) -> None:
        self._dsn = dsn
        self._command_timeout = command_timeout
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening = asyncio.Lock()
        self._releasing: set[asyncio.Task[None]] = set()

    async def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(
                        self._dsn,
                        # No floor: asyncpg keeps one by reconnecting in the background, and
                        # logs a traceback for each try while the database is away.
                        min_size=0,
                        max_size=self._pool_size,
                        command_timeout=self._command_timeout,
                        timeout=self._command_timeout or 60.0,
                        reset=keep_session,
                    )
        return self._pool

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection. An error while handing it back (the server ended the session
        after our statements ran, and asyncpg's reset of it fails) is logged, not raised: what
        the statements did stands, and an ingest that committed must not be answered 503."""
        pool = await self.pool()
        # Bounded like a statement: with every connection held by statements a frozen server
        # does not answer, a request would wait here for as long as they do, then run its own.
        conn = await asyncio.wait_for(pool.acquire(), self._command_timeout)
        try:
            yield conn
        except BaseException:
            # After a statement timed out, handing the connection back waits for the server to
            # acknowledge asyncpg's cancel, up to the timeout again (an ingest's 503 came after
            # twice DATABASE_TIMEOUT): the caller has its error now, and the connection goes
            # back, or is dropped, meanwhile.
            task = asyncio.ensure_future(self._release(pool, conn))
            self._releasing.add(task)
            task.add_done_callback(self._releasing.discard)
            raise
        await self._release(pool, conn)

    @contextlib.asynccontextmanager
    async def ready_connection(
        self, query: str, args: Sequence[Any]
    ) -> AsyncIterator[tuple[asyncpg.Connection, list[asyncpg.Record]]]:
        """A pooled connection and the rows of ``query``, its first statement, run on it.

        When the server ends an idle pooled session (pg_terminate_backend, a restart), its
        FATAL message reaches the client before the socket closes; in between, the pool may
        hand the connection out, and asyncpg refuses to start any statement on it. Nothing was
        sent, so the statement runs again on another connection: an ingest is not answered 503
        because a session it never used had just been ended."""
        for attempt in range(self._pool_size + 1):
            async with self.connection() as conn:
                try:
                    rows = await conn.fetch(query, *args)
                except asyncpg.InternalClientError as exc:
                    if attempt == self._pool_size or not handed_out_ended(exc):
                        raise
                    conn.terminate()  # handed back, the pool opens a fresh one in its place
                    continue
                yield conn, rows
                return
        raise AssertionError("unreachable: the last attempt raises")

    @staticmethod
    async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
        try:
            await pool.release(conn)
        except Exception as exc:  # the pool has terminated such a connection already
            log.warning("a database connection was lost as it was handed back: %s", exc)

    async def ping(self) -> None:
        """Whether the hot path's own pool can write: a connection from it (the engine's pool may
        have one while this one has none: a role's connection limit), on a server that takes
        writes (not a standby, not a database set read-only during a failover)."""
        query = "SELECT current_setting('transaction_read_only')"
        async with self.ready_connection(query, ()) as (_, rows):
            if rows[0][0] == "on":
                raise asyncpg.exceptions.ReadOnlySQLTransactionError("the database takes no writes")

    async def sync_clock(self) -> float:
        """Measure the server's clock against this machine's (see :mod:`ingestlayer.clock`), on
        one connection so that taking it from the pool is not part of the round trips."""
        async with self.connection() as conn:

            async def read() -> float:
                return float(await conn.fetchval("SELECT extract(epoch FROM clock_timestamp())"))

            return await clock.sync_with(read)

    async def close(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> None:
        """Close the pool, giving the server ``timeout`` to let its connections go; past it they
        are dropped (counted in db.connections_dropped)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        size = pool.get_size()
        try:
            # Also waits for connections still being handed back; cancelled, it terminates them.
            await asyncio.wait_for(pool.close(), timeout)
        except TimeoutError:
            count_dropped(size)

    async def listen(
        self,
        wake: dict[str, Callable[[str], None]],
        stop: asyncio.Event,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        """Call ``wake[channel](payload)`` on each notification until ``stop``; reconnect when
        the connection drops, and call ``on_reconnect`` once listening again: what was notified
        meanwhile was missed (the callers' polls and cache lifetimes covered the gap)."""
        # An outage is a line when it starts, one every few seconds, and one when it is over,
        # not one a second (a retry each LISTEN_RETRY_SECONDS). A connection the server ended
        # counts as a failure too: it was reconnected without a word, and a listener that lost
        # its connection every few seconds (a proxy's idle timeout) went unnoticed.
        outage = OutageLog(log, "listening for new work")
        listened = False
        while not stop.is_set():
            lost = asyncio.Event()
            conn: asyncpg.Connection | None = None
            try:
                # Bounded like the pool's connections (asyncpg's default is 60 s): a shutdown
                # waits for this loop to end.
                conn = await asyncpg.connect(
                    self._dsn, timeout=self._command_timeout or 60.0, command_timeout=self._command_timeout
                )
                conn.add_termination_listener(lambda _c, lost=lost: lost.set())
                for channel, callback in wake.items():
                    await conn.add_listener(channel, lambda _c, _p, _ch, payload, cb=callback: cb(payload))
                outage.succeeded()
                if listened and on_reconnect is not None:
                    on_reconnect()
                listened = True
                stopping = asyncio.ensure_future(stop.wait())
                dropped = asyncio.ensure_future(lost.wait())
                await asyncio.wait({stopping, dropped}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                dropped.cancel()
                if lost.is_set() and not stop.is_set():
                    outage.failed(ConnectionError("the server closed the connection"), "polling meanwhile")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                outage.failed(exc, "polling meanwhile")
            finally:
                if conn is not None:
                    await close_connections([conn], CLOSE_TIMEOUT_SECONDS)
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), LISTEN_RETRY_SECONDS)

    # ---- ingest ---------------------------------------------------------------------------

    async def insert_events(
        self, batch: Sequence[NewEvent], route_token: float | None, routing: IngestRouting | None = None
    ) -> list[IngestResult]:
        plan = InsertPlan(batch)
        fresh = plan.fresh
        if routing is not None:
            # Written as if every project's configuration were still the one ingest decided at;
            # the statement keeps what holds only where it is (see _INGEST), and says where.
            routing.confirm(routing.versions)
            routing.set_traces(fresh)
        # Route jobs for the events ingest did not settle; the statement adds one for every event
        # of a project whose configuration moved, and none for an event whose key was taken.
        jobs = routing.to_route(fresh) if routing is not None else fresh
        mine = routing.deliveries_for(None) if routing is not None else []
        if routing is not None and mine:
            delivery_rows, leased, now = rowmap.new_delivery_rows(
                mine, routing.prelease, routing.lease_seconds
            )
        else:
            delivery_rows, leased, now = [], [], clock.now()
        # Each is notified only if the statement stored something for it to do.
        channels = []
        if route_token is None:  # jobs due now, for whichever router: wake them
            channels.append(ROUTE_CHANNEL)
        if len(leased) < len(mine):  # deliveries that wait in the table: wake the dispatchers
            channels.append(DELIVER_CHANNEL)
        args = (
            orjson.dumps(fresh).decode(),
            _json_rows(_DELIVERY_KEYS, delivery_rows),
            now,
            orjson.dumps([e.id for e in jobs]).decode(),
            route_token,
            0 if route_token is None else 1,
            channels,
            orjson.dumps(routing.versions if routing is not None else {}).decode(),
        )
        async with self.ready_connection(_INGEST, args) as (conn, rows):
            inserted = {r[0] for r in rows if r[0] is not None}
            existing: dict[tuple[str, str], str] = {}
            for project_id, keys in plan.missing_keys(inserted).items():
                for key, eid in await conn.fetch(_EXISTING_KEYS, project_id, keys):
                    existing[(project_id, key)] = eid
        if routing is not None:
            still = {r[1] for r in rows if r[1] is not None}
            routing.confirm({p: v for p, v in routing.versions.items() if p in still})
            routing.set_traces(fresh)  # as stored: none where the configuration had moved
            routing.created = len(routing.deliveries_for(inserted))
            routing.leased = [d for d in leased if d.project_id in still and d.event_id in inserted]
        return plan.results(inserted, existing)

    # ---- routing ----------------------------------------------------------------------------

    async def lease_route_jobs(self, limit: int, now: float, token: float) -> RouteLease:
        async with self.connection() as conn, conn.transaction():
            attempts = {r[0]: r[1] for r in await conn.fetch(_LEASE_JOBS, token, now, limit)}
            if not attempts:
                return RouteLease(token, [])
            evs = [rowmap.stored_event(r) for r in await conn.fetch(_EVENTS_BY_ID, list(attempts))]
            versions = await conn.fetch(_CONFIG_VERSIONS, sorted({e.project_id for e in evs}))
        return RouteLease(token, evs, attempts, {r[0]: r[1] for r in versions})

    async def complete_routing(
        self,
        lease: RouteLease,
        new_deliveries: Sequence[NewDelivery],
        traces: dict[str, list[dict[str, Any]]],
        prelease: int,
        lease_seconds: float,
    ) -> tuple[int, list[LeasedDelivery]]:
        async with self.connection() as conn, conn.transaction():
            owned: set[str] = set()
            for route_token, ids in lease.by_token([e.id for e in lease.events]).items():
                owned.update(r[0] for r in await conn.fetch(_COMPLETE_JOBS, route_token, ids))
            mine = [d for d in new_deliveries if d.event_id in owned]
            leased = await _insert_deliveries(conn, mine, prelease, lease_seconds)
            trace_rows = [(eid, orjson.dumps(t).decode()) for eid, t in traces.items() if eid in owned]
            if trace_rows:
                await conn.execute(_SET_TRACES, *_columns(trace_rows, 2))
        return len(mine), leased

    async def defer_route_jobs(
        self,
        lease: RouteLease,
        delays: dict[str, float],
        uncounted: bool,
        traces: dict[str, list[dict[str, Any]]],
        routed_by: dict[str, int],
    ) -> None:
        now = clock.now()
        rows = [
            (eid, token, now + delays[eid], routed_by.get(eid))
            for token, ids in lease.by_token(list(delays)).items()
            for eid in ids
        ]
        ids, tokens, due, versions = _columns(rows, 4)
        async with self.connection() as conn, conn.transaction():
            deferred = await conn.fetch(_DEFER_JOBS, ids, tokens, due, int(uncounted), versions, now)
            trace_rows = [(r[0], orjson.dumps(traces[r[0]]).decode()) for r in deferred if r[0] in traces]
            if trace_rows:
                await conn.execute(_SET_TRACES, *_columns(trace_rows, 2))

    async def renew_route_leases(self, tokens: dict[str, float], new_token: float) -> list[str]:
        async with self.connection() as conn:
            rows = await conn.fetch(_RENEW_JOBS, new_token, list(tokens), list(tokens.values()))
        return [r[0] for r in rows]

    async def config_versions(self, project_ids: list[str]) -> dict[str, int]:
        async with self.connection() as conn:
            return {r[0]: r[1] for r in await conn.fetch(_CONFIG_VERSIONS, project_ids)}

    # ---- delivery ---------------------------------------------------------------------------

    async def lease_deliveries(
        self, limit: int, lease_seconds: float, room: Room | None = None
    ) -> list[LeasedDelivery]:
        now = clock.now()
        token = new_id("lse")
        until = now + lease_seconds
        async with self.connection() as conn:
            if room is None or not room.may_cut(limit):
                rows = await conn.fetch(_LEASE_DELIVERIES, until, token, now, limit)
                return [rowmap.leased_delivery(r, token, until) for r in rows]
            size = limit + LEASE_WINDOW
            ids, rooms = list(room.known), list(room.known.values())
            rows = await conn.fetch(_LEASE_WINDOW, until, token, now, limit, size, ids, rooms, room.default)
            leased = [rowmap.leased_delivery(r, token, until) for r in rows if r[0] is not None]
            if len(leased) >= limit or rows[0][-1] < size:
                return leased
            # The window was full and left the lease short: look past it, destination by
            # destination, with the room the window's leases left.
            left = room.after(leased)
            more = await conn.fetch(
                _LEASE_PER_DESTINATION,
                until,
                token,
                now,
                limit - len(leased),
                list(left.known),
                list(left.known.values()),
                left.default,
            )
        return leased + [rowmap.leased_delivery(r, token, until) for r in more]

    async def record_attempts(
        self, results: Sequence[AttemptResult], *, again: bool = False, counted: bool = True
    ) -> None:
        now = clock.now()
        states = _json_rows(_STATE_KEYS, (rowmap.finished_state(r, now) for r in results))
        statement = _RECORD_ATTEMPTS_AGAIN if again else _RECORD_ATTEMPTS
        async with self.connection() as conn:
            await conn.execute(
                statement, orjson.dumps(list(results)).decode(), states, now, 0 if counted else 1
            )

    async def release_leases(self, leased: Sequence[LeasedDelivery]) -> None:
        rows = [(d.id, d.lease_token, "retrying" if d.attempts else "pending") for d in leased]
        async with self.connection() as conn:
            await conn.execute(_RELEASE, *_columns(rows, 3), clock.now())

    async def get_destinations(self, ids: list[str]) -> dict[str, DestinationRow]:
        async with self.connection() as conn:
            rows = await conn.fetch(_DESTINATIONS, ids)
        return {r[0]: rowmap.destination(r) for r in rows}
