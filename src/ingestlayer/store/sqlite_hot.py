"""The hot path on SQLite: the statements run for every event and every attempt.

Ingest, routing and delivery run these many times a second, so on SQLite they skip the
SQLAlchemy/aiosqlite layers and run as plain ``sqlite3`` functions on the event loop's own
thread (:mod:`ingestlayer.store.sqlite_loop`), each write one transaction made durable by a
shared fsync. They do what :mod:`ingestlayer.store.pg_hot` does on PostgreSQL, and the
integration suite runs the same tests against both.
"""

from __future__ import annotations

import asyncio
import operator
import sqlite3
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

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
from ingestlayer.store.idempotency import InsertPlan
from ingestlayer.store.lease_window import (
    DUE,
    DUE_DESTINATIONS,
    LEASE_WINDOW,
    Room,
    destinations_with_room,
    from_window,
    oldest_first,
)
from ingestlayer.store.sqlite_loop import LoopSqlite

# How often a worker sharing the file with other processes looks for their commits.
COMMIT_WATCH_SECONDS = 0.005

_INSERT_EVENT = (
    "INSERT INTO events (id, project_id, type, payload, idempotency_key, source, occurred_at, received_at,"
    " trace) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# The conflict target names the partial unique index (keyed events only).
_INSERT_KEYED_EVENT = (
    _INSERT_EVENT + " ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
)
_INSERT_JOB = "INSERT INTO route_jobs (event_id, project_id, due_at, attempts) VALUES (?, ?, ?, ?)"
_EVENT_COLUMNS = ", ".join(f"e.{c}" for c in rowmap.EVENT_COLUMNS.split(", "))


def _ids_json(ids: Sequence[str]) -> str:
    """A list of ids as one parameter, read back with ``json_each`` (no variable-count limit)."""
    return orjson.dumps(list(ids)).decode()


# An event's INSERT parameters, as a tuple made in C.
_event_row: Callable[[NewEvent], tuple[Any, ...]] = operator.attrgetter(
    "id",
    "project_id",
    "type",
    "payload_json",
    "idempotency_key",
    "source",
    "occurred_at",
    "received_at",
    "trace",
)


# Rows per multi-row INSERT: 9 columns x 500 rows stays far below SQLite's 32,766 variables.
_ROWS_PER_INSERT = 500


def _insert_rows(conn: sqlite3.Connection, insert: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """INSERT many rows as few statements: ``executemany`` steps once per row, releasing and
    retaking the GIL each time, and one statement of 100 rows costs less than 100 of one."""
    if not rows:
        return
    head, _, values = insert.partition(" VALUES ")
    for start in range(0, len(rows), _ROWS_PER_INSERT):
        chunk = rows[start : start + _ROWS_PER_INSERT]
        conn.execute(f"{head} VALUES {', '.join([values] * len(chunk))}", list(chain.from_iterable(chunk)))


# ---- operations (run on the event loop by LoopSqlite; each write is one transaction) ---------


def insert_events(
    conn: sqlite3.Connection,
    batch: Sequence[NewEvent],
    route_token: float | None,
    routing: IngestRouting | None = None,
) -> list[IngestResult]:
    if routing is not None:
        routing.confirm(config_versions(conn, list(routing.versions)))
        routing.set_traces(batch)
    plan = InsertPlan(batch)
    inserted: set[str] | None
    if plan.first_by_key:
        inserted, existing = _insert_keyed(conn, plan)
        fresh = [ev for ev in plan.fresh if ev.id in inserted]
    else:  # no idempotency keys (the usual case): every event is new
        _insert_rows(conn, _INSERT_EVENT, list(map(_event_row, batch)))
        inserted, existing, fresh = None, {}, list(batch)
    if routing is not None:
        fresh = routing.to_route(fresh)
        mine = routing.deliveries_for(inserted)
        routing.created = len(mine)
        routing.leased = _insert_deliveries(conn, mine, routing.prelease, routing.lease_seconds)
    if route_token is None:
        jobs = [(ev.id, ev.project_id, ev.received_at, 0) for ev in fresh]
    else:  # leased to this process's router already
        jobs = [(ev.id, ev.project_id, route_token, 1) for ev in fresh]
    _insert_rows(conn, _INSERT_JOB, jobs)
    return plan.results(inserted or set(), existing)


def _insert_keyed(conn: sqlite3.Connection, plan: InsertPlan) -> tuple[set[str], dict[tuple[str, str], str]]:
    """Insert a batch holding idempotency keys; return the ids inserted, and the stored event id
    of each key that was already taken."""
    plain = [ev for ev in plan.fresh if ev.idempotency_key is None]
    _insert_rows(conn, _INSERT_EVENT, list(map(_event_row, plain)))
    inserted = {ev.id for ev in plain}
    for ev in plan.fresh:
        if ev.idempotency_key is not None and conn.execute(_INSERT_KEYED_EVENT, _event_row(ev)).rowcount == 1:
            inserted.add(ev.id)
    existing: dict[tuple[str, str], str] = {}
    for project_id, keys in plan.missing_keys(inserted).items():
        for key, eid in conn.execute(
            "SELECT idempotency_key, id FROM events WHERE project_id = ?"
            " AND idempotency_key IN (SELECT value FROM json_each(?))",
            (project_id, _ids_json(keys)),
        ):
            existing[(project_id, key)] = eid
    return inserted, existing


def lease_route_jobs(conn: sqlite3.Connection, limit: int, now: float, token: float) -> RouteLease:
    attempts = dict(
        conn.execute(
            "UPDATE route_jobs SET due_at = ?, attempts = attempts + 1, waiting = 0 WHERE event_id IN"
            " (SELECT event_id FROM route_jobs WHERE due_at <= ? ORDER BY due_at LIMIT ?)"
            " RETURNING event_id, attempts",
            (token, now, limit),
        ).fetchall()
    )
    if not attempts:
        return RouteLease(token, [])
    evs = [
        rowmap.stored_event(r)
        for r in conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM route_jobs j JOIN events e ON e.id = j.event_id"
            " WHERE j.due_at = ? ORDER BY e.id",
            (token,),
        )
    ]
    # The projects' config versions, read in the same transaction, so the router needs no
    # second query to know whether its compiled pipelines are current.
    versions = dict(
        conn.execute(
            "SELECT id, config_version FROM projects WHERE id IN (SELECT value FROM json_each(?))",
            (_ids_json(sorted({e.project_id for e in evs})),),
        ).fetchall()
    )
    return RouteLease(token, evs, attempts, versions)


_DELETE_LEASED_JOBS = (
    "DELETE FROM route_jobs WHERE due_at = ? AND event_id IN (SELECT value FROM json_each(?))"
)


def complete_routing(
    conn: sqlite3.Connection,
    lease: RouteLease,
    new_deliveries: Sequence[NewDelivery],
    traces: dict[str, list[dict[str, Any]]],
    prelease: int,
    lease_seconds: float,
) -> tuple[int, list[LeasedDelivery]]:
    owned: set[str] = set()
    for route_token, ids in lease.by_token([e.id for e in lease.events]).items():
        # Usually every job is still ours; RETURNING the ids would cost as much as the delete.
        conn.execute("SAVEPOINT route_jobs")
        params = (route_token, _ids_json(ids))
        if conn.execute(_DELETE_LEASED_JOBS, params).rowcount == len(ids):
            owned.update(ids)
        else:  # some leases expired and were taken over: find out which jobs were still ours
            conn.execute("ROLLBACK TO route_jobs")
            owned.update(r[0] for r in conn.execute(_DELETE_LEASED_JOBS + " RETURNING event_id", params))
        conn.execute("RELEASE route_jobs")
    mine = [d for d in new_deliveries if d.event_id in owned]
    leased = _insert_deliveries(conn, mine, prelease, lease_seconds)
    conn.executemany(
        "UPDATE events SET trace = ? WHERE id = ?",
        [(orjson.dumps(t).decode(), eid) for eid, t in traces.items() if eid in owned],
    )
    return len(mine), leased


def _insert_deliveries(
    conn: sqlite3.Connection, new: Sequence[NewDelivery], prelease: int, lease_seconds: float
) -> list[LeasedDelivery]:
    """Insert routed deliveries; the first ``prelease`` go straight to this process's
    dispatcher, inserted already leased, and are returned as such."""
    if not new:
        return []
    rows, leased, now = rowmap.new_delivery_rows(new, prelease, lease_seconds)
    conn.executemany(
        "INSERT INTO deliveries (id, project_id, event_id, event_type, pipeline_id, destination_id, status,"
        " due_at, lease_token, body, attempts, retry_base, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?)",
        [(*r, now, now) for r in rows],
    )
    return leased


# Where the project's configuration has moved on from the version the routing failed by, the job
# is due now rather than waiting (Store.defer_route_jobs).
_MOVED = (
    "(:version IS NOT NULL"
    " AND :version IS NOT (SELECT config_version FROM projects WHERE id = route_jobs.project_id))"
)
_DEFER_JOB = (
    f"UPDATE route_jobs SET due_at = CASE WHEN {_MOVED} THEN :now ELSE :due END,"
    f" attempts = max(attempts - :uncounted, 0), waiting = :uncounted = 0 AND NOT {_MOVED}"
    " WHERE event_id = :id AND due_at = :token"
)


def defer_route_jobs(
    conn: sqlite3.Connection,
    lease: RouteLease,
    delays: dict[str, float],
    uncounted: bool,
    traces: dict[str, list[dict[str, Any]]],
    routed_by: dict[str, int],
) -> None:
    now = clock.now()
    for token, ids in lease.by_token(list(delays)).items():
        for eid in ids:
            deferred = conn.execute(
                _DEFER_JOB,
                {
                    "due": now + delays[eid],
                    "now": now,
                    "uncounted": int(uncounted),
                    "version": routed_by.get(eid),
                    "id": eid,
                    "token": token,
                },
            ).rowcount
            if deferred and eid in traces:
                conn.execute(
                    "UPDATE events SET trace = ? WHERE id = ?", (orjson.dumps(traces[eid]).decode(), eid)
                )


def renew_route_leases(conn: sqlite3.Connection, tokens: dict[str, float], new_token: float) -> list[str]:
    by_token: dict[float, list[str]] = {}
    for eid, token in tokens.items():
        by_token.setdefault(token, []).append(eid)
    kept: list[str] = []
    for token, ids in by_token.items():
        kept.extend(
            r[0]
            for r in conn.execute(
                "UPDATE route_jobs SET due_at = ? WHERE due_at = ?"
                " AND event_id IN (SELECT value FROM json_each(?)) RETURNING event_id",
                (new_token, token, _ids_json(ids)),
            )
        )
    return kept


_DUE_WINDOW = f"SELECT id, destination_id FROM deliveries WHERE {DUE} AND due_at <= ? ORDER BY due_at LIMIT ?"
_OLDEST_DUE = (
    f"SELECT due_at, id FROM deliveries WHERE {DUE} AND destination_id = ? AND due_at <= ?"
    " ORDER BY due_at LIMIT ?"
)


def _due_ids(conn: sqlite3.Connection, now: float, limit: int, room: Room) -> list[str]:
    """The oldest ``limit`` due deliveries, each destination's up to its ``room``, without
    walking the backlog of destinations that have none (lease_window)."""
    size = limit + LEASE_WINDOW
    picked = from_window(conn.execute(_DUE_WINDOW, (now, size)).fetchall(), room, limit, size)
    if picked is not None:
        return picked
    open_ = destinations_with_room((row[0] for row in conn.execute(DUE_DESTINATIONS)), room)
    return oldest_first(
        (row for did, n in open_ for row in conn.execute(_OLDEST_DUE, (did, now, min(n, limit)))), limit
    )


def lease_deliveries(
    conn: sqlite3.Connection, limit: int, lease_seconds: float, room: Room | None = None
) -> list[LeasedDelivery]:
    now = clock.now()
    token = new_id("lse")
    until = now + lease_seconds
    update = "UPDATE deliveries SET status = 'delivering', due_at = ?, lease_token = ?, updated_at = ?"
    if room is None or not room.may_cut(limit):
        rows = conn.execute(
            f"{update} WHERE id IN (SELECT id FROM deliveries WHERE {DUE} AND due_at <= ?"
            f" ORDER BY due_at LIMIT ?) RETURNING {rowmap.DELIVERY_COLUMNS}",
            (until, token, now, now, limit),
        ).fetchall()
    else:
        ids = _due_ids(conn, now, limit, room)
        if not ids:
            return []
        rows = conn.execute(
            f"{update} WHERE id IN (SELECT value FROM json_each(?)) RETURNING {rowmap.DELIVERY_COLUMNS}",
            (until, token, now, _ids_json(ids)),
        ).fetchall()
    return [rowmap.leased_delivery(r, token, until) for r in rows]


_INSERT_ATTEMPT = (
    "INSERT INTO attempts (delivery_id, project_id, n, started_at, duration_ms, status_code, error,"
    " response_excerpt, next_retry_at, worker) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Recording again what may have been recorded already (see pg_hot): not logged twice.
_INSERT_ATTEMPT_AGAIN = (
    "INSERT INTO attempts (delivery_id, project_id, n, started_at, duration_ms, status_code, error,"
    " response_excerpt, next_retry_at, worker) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10"
    " WHERE NOT EXISTS (SELECT 1 FROM attempts WHERE delivery_id = ?1 AND n = ?3 AND started_at = ?4)"
)


def record_attempts(
    conn: sqlite3.Connection, results: Sequence[AttemptResult], again: bool = False, counted: bool = True
) -> None:
    now = clock.now()
    conn.executemany(
        _INSERT_ATTEMPT_AGAIN if again else _INSERT_ATTEMPT, [rowmap.attempt_row(r) for r in results]
    )
    # The state moves on only while the lease is still ours; the attempt is logged regardless.
    # An attempt that does not count toward the retry schedule moves retry_base along with it.
    conn.executemany(
        "UPDATE deliveries SET status = ?, attempts = ?, due_at = ?, lease_token = NULL,"
        " last_status_code = ?, last_error = ?, finished_at = ?, updated_at = ?, retry_base = retry_base + ?"
        " WHERE id = ? AND lease_token = ?",
        [
            (*state[2:], now, 0 if counted else 1, state[0], state[1])
            for state in (rowmap.finished_state(r, now) for r in results)
        ],
    )


def release_leases(conn: sqlite3.Connection, leased: Sequence[LeasedDelivery]) -> None:
    now = clock.now()
    conn.executemany(
        "UPDATE deliveries SET status = ?, due_at = ?, lease_token = NULL, updated_at = ?"
        " WHERE id = ? AND lease_token = ?",
        [("retrying" if d.attempts else "pending", now, now, d.id, d.lease_token) for d in leased],
    )


# The hand-editable columns as bytes, decoded by rows.destination: as text, one edited by hand
# into bytes that are not UTF-8 raised an OperationalError (an outage's class) for the whole
# lease, handed back and taken again every second, and no project's deliveries went out.
_DESTINATION_COLUMNS = (
    rowmap.DESTINATION_COLUMNS.replace("config", "CAST(config AS BLOB)")
    .replace("name", "CAST(name AS BLOB)")
    .replace("kind", "CAST(kind AS BLOB)")
)


def get_destinations(conn: sqlite3.Connection, ids: list[str]) -> dict[str, DestinationRow]:
    rows = conn.execute(
        f"SELECT {_DESTINATION_COLUMNS} FROM destinations WHERE id IN (SELECT value FROM json_each(?))",
        (_ids_json(ids),),
    )
    return {r[0]: rowmap.destination(r) for r in rows}


def route_jobs_due(conn: sqlite3.Connection, now: float) -> bool:
    return conn.execute("SELECT 1 FROM route_jobs WHERE due_at <= ? LIMIT 1", (now,)).fetchone() is not None


def deliveries_due(conn: sqlite3.Connection, now: float, room: Room | None = None) -> bool:
    if room is not None and room.may_cut(1):
        return bool(_due_ids(conn, now, 1, room))
    query = f"SELECT 1 FROM deliveries WHERE {DUE} AND due_at <= ? LIMIT 1"
    return conn.execute(query, (now,)).fetchone() is not None


def data_version(conn: sqlite3.Connection) -> int:
    """Moves whenever another connection commits to the database (this one's commits do not)."""
    return int(conn.execute("PRAGMA data_version").fetchone()[0])


def config_versions(conn: sqlite3.Connection, project_ids: list[str]) -> dict[str, int]:
    return dict(
        conn.execute(
            "SELECT id, config_version FROM projects WHERE id IN (SELECT value FROM json_each(?))",
            (_ids_json(project_ids),),
        ).fetchall()
    )


# ---- the async face the Store delegates to --------------------------------------------------


class SqliteHotPath:
    def __init__(self, path: str) -> None:
        self.db = LoopSqlite(path)

    async def close(self) -> None:
        await self.db.close()

    async def insert_events(
        self, batch: Sequence[NewEvent], route_token: float | None, routing: IngestRouting | None = None
    ) -> list[IngestResult]:
        return await self.db.write(insert_events, batch, route_token, routing)

    # A lease first looks whether anything is due: an idle poll must not take the write lock
    # many times a second while other connections may be writing.

    async def lease_route_jobs(self, limit: int, now: float, token: float) -> RouteLease:
        if not await self.db.read(route_jobs_due, now):
            return RouteLease(token, [])
        return await self.db.write(lease_route_jobs, limit, now, token, durable=False)

    async def complete_routing(
        self,
        lease: RouteLease,
        new_deliveries: Sequence[NewDelivery],
        traces: dict[str, list[dict[str, Any]]],
        prelease: int,
        lease_seconds: float,
    ) -> tuple[int, list[LeasedDelivery]]:
        return await self.db.write(complete_routing, lease, new_deliveries, traces, prelease, lease_seconds)

    async def defer_route_jobs(
        self,
        lease: RouteLease,
        delays: dict[str, float],
        uncounted: bool,
        traces: dict[str, list[dict[str, Any]]],
        routed_by: dict[str, int],
    ) -> None:
        await self.db.write(defer_route_jobs, lease, delays, uncounted, traces, routed_by)

    async def renew_route_leases(self, tokens: dict[str, float], new_token: float) -> list[str]:
        # Not synced: a renewal lost with the machine is a lease that ran out, as it would have.
        return await self.db.write(renew_route_leases, tokens, new_token, durable=False)

    async def lease_deliveries(
        self, limit: int, lease_seconds: float, room: Room | None = None
    ) -> list[LeasedDelivery]:
        if not await self.db.read(deliveries_due, clock.now(), room):
            return []
        return await self.db.write(lease_deliveries, limit, lease_seconds, room, durable=False)

    async def record_attempts(
        self, results: Sequence[AttemptResult], *, again: bool = False, counted: bool = True
    ) -> None:
        await self.db.write(record_attempts, results, again, counted)

    async def release_leases(self, leased: Sequence[LeasedDelivery]) -> None:
        await self.db.write(release_leases, leased)

    async def get_destinations(self, ids: list[str]) -> dict[str, DestinationRow]:
        return await self.db.read(get_destinations, ids)

    async def watch_commits(self, wake: Callable[[], None], stop: asyncio.Event) -> None:
        """Call ``wake`` soon after another connection commits: what LISTEN/NOTIFY does on
        PostgreSQL, for processes sharing the file. Reading ``data_version`` touches only the
        shared-memory index, no page. Measured between an ``api`` process and its ``worker``:
        ingest→delivery p50 37.6 → 6.0 ms, p99 62.8 → 16.1 ms at half load; an idle worker
        uses about 2 % of a core instead of 1 %."""
        last = await self.db.read(data_version)
        while not stop.is_set():
            await asyncio.sleep(COMMIT_WATCH_SECONDS)
            current = await self.db.read(data_version)
            if current != last:
                last = current
                wake()

    async def config_versions(self, project_ids: list[str]) -> dict[str, int]:
        return await self.db.read(config_versions, project_ids)
