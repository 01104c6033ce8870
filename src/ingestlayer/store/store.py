"""The store: every SQL statement the server runs lives in this package.

Callers ask for operations by name ("insert events", "lease due deliveries") and never build
queries. Each write operation is one transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ingestlayer import clock, metrics
from ingestlayer.ids import new_id, new_key
from ingestlayer.records import (
    AttemptResult,
    DestinationRow,
    IngestResult,
    IngestRouting,
    LeasedDelivery,
    NewDelivery,
    NewEvent,
    PipelineRow,
    ProjectConfig,
    RouteLease,
    SourceRow,
    StoredEvent,
)
from ingestlayer.store import rows as rowmap
from ingestlayer.store.db import DATABASE_TIMEOUT_SECONDS, Engines, create_engines
from ingestlayer.store.lease_window import Room
from ingestlayer.store.pg_hot import CHANGES_CHANNEL, DELIVER_CHANNEL, ROUTE_CHANNEL, PgHotPath
from ingestlayer.store.schema import (
    api_keys,
    attempts,
    dashboard_signouts,
    deliveries,
    destinations,
    entities,
    events,
    pipelines,
    projects,
    rate_buckets,
    route_jobs,
    secrets,
    sources,
    step_cache,
)
from ingestlayer.store.sqlite_hot import SqliteHotPath
from ingestlayer.timefmt import iso

log = logging.getLogger("ingestlayer.store")

DUE_STATUSES = ("pending", "retrying", "delivering")
DELIVERY_STATUSES = ("pending", "delivering", "retrying", "delivered", "dead")
# Counting deliveries walks the (project_id, status, id) index, about 100 ms per million entries
# on PostgreSQL and 50 on SQLite, and a busy project keeps millions of delivered ones: each
# status is counted up to this many, and a count that reaches it is reported as "at least".
DELIVERY_COUNT_CAP = 100_000
# What a delivery to a destination that no longer exists, or is disabled, ends with (the
# dispatcher's words too).
DELETED_DESTINATION_ERROR = "destination was deleted"
DISABLED_DESTINATION_ERROR = "destination is disabled"
# Retention purges (and bulk replays) run in short transactions beside ingest: on SQLite each
# one holds the only writer. 500 events with a delivery and an attempt each are about 10 ms.
PURGE_BATCH = 500
PURGE_TARGET_SECONDS = 0.025
PURGE_PAUSE_SECONDS = 0.01
REPLAY_BATCH = 1000
# Ingest transactions in flight at once on PostgreSQL (its pool holds more connections).
PG_CONCURRENT_WRITERS = 4
_lease_counter = itertools.count(1)


class NotFound(LookupError):
    pass


class AtLeast(int):
    """A count that stopped at its cap: there are this many or more. Formats with a ``+``."""

    def __format__(self, spec: str) -> str:
        return format(int(self), spec) + "+"

    def __repr__(self) -> str:
        return f"AtLeast({int(self)})"


class Conflict(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# The columns rows.stored_event reads, in its order.
_EVENT_SELECT = [events.c[name] for name in rowmap.EVENT_COLUMNS.split(", ")]


def _pipeline_from_row(row: Any) -> PipelineRow:
    return PipelineRow(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        config=orjson.loads(row.config),
        endpoint=bool(row.endpoint),
        enabled=bool(row.enabled),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def _source_from_row(row: Any) -> SourceRow:
    return SourceRow(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        config=orjson.loads(row.config),
        enabled=bool(row.enabled),
        updated_at=row.updated_at,
    )


def _destination_from_row(row: Any) -> DestinationRow:
    return DestinationRow(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        kind=row.kind,
        config=orjson.loads(row.config),
        enabled=bool(row.enabled),
        updated_at=row.updated_at,
    )


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


class Store:
    """Async access to the database. One instance per process."""

    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        self.dialect = engines.dialect
        self.worker_id = f"{os.uname().nodename}:{os.getpid()}"
        # The statements run for every event and attempt bypass SQLAlchemy: plain sqlite3 on
        # the store's own threads, or an asyncpg pool (see sqlite_hot and pg_hot).
        url = engines.write.url
        self._hot: SqliteHotPath | PgHotPath
        if self.dialect == "sqlite":
            if not url.database or url.database == ":memory:":
                raise ValueError("SQLite needs a database file (an in-memory database is one per connection)")
            self._hot = SqliteHotPath(url.database)
        else:
            dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
            self._hot = PgHotPath(dsn, engines.command_timeout)

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
    def from_url(cls, url: str, command_timeout: float = DATABASE_TIMEOUT_SECONDS) -> Store:
        return cls(create_engines(url, command_timeout))

    async def close(self) -> None:
        await self._hot.close()
        await self.engines.dispose()

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    async def ping(self) -> None:
        async with self.engines.read.connect() as conn:
            await conn.execute(select(1))

    # ---- projects and keys -------------------------------------------------------------------

    async def create_project(self, name: str) -> tuple[str, str, str]:
        """Create a project; return (project_id, ingest_key, admin_key). Keys are shown once."""
        now = clock.now()
        pid = new_id("prj")
        ingest_key, admin_key = new_key("ingest"), new_key("admin")
        async with self.engines.write.begin() as conn:
            exists = await conn.scalar(select(projects.c.id).where(projects.c.name == name))
            if exists:
                raise Conflict(f"a project named {name!r} already exists")
            await conn.execute(insert(projects).values(id=pid, name=name, created_at=now))
            for kind, key in (("ingest", ingest_key), ("admin", admin_key)):
                await conn.execute(
                    insert(api_keys).values(
                        id=new_id("key"),
                        project_id=pid,
                        kind=kind,
                        key_hash=hash_key(key),
                        prefix=key[:16],
                        created_at=now,
                    )
                )
        return pid, ingest_key, admin_key

    async def create_key(self, project_id: str, kind: str, name: str | None = None) -> tuple[str, str]:
        key = new_key(kind)
        kid = new_id("key")
        async with self.engines.write.begin() as conn:
            await conn.execute(
                insert(api_keys).values(
                    id=kid,
                    project_id=project_id,
                    kind=kind,
                    key_hash=hash_key(key),
                    prefix=key[:16],
                    name=name,
                    created_at=clock.now(),
                )
            )
        return kid, key

    async def list_keys(self, project_id: str) -> list[dict[str, Any]]:
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(
                select(
                    api_keys.c.id,
                    api_keys.c.kind,
                    api_keys.c.prefix,
                    api_keys.c.name,
                    api_keys.c.created_at,
                    api_keys.c.revoked_at,
                )
                .where(api_keys.c.project_id == project_id)
                .order_by(api_keys.c.created_at)
            )
            return [dict(r._mapping) for r in rows]

    async def revoke_key(self, project_id: str, key_id: str) -> None:
        async with self.engines.write.begin() as conn:
            res = await conn.execute(
                update(api_keys)
                .where(api_keys.c.project_id == project_id, api_keys.c.id == key_id)
                .values(revoked_at=clock.now())
            )
            if res.rowcount == 0:
                raise NotFound(f"no API key {key_id!r}")
            await self._announce(conn, "keys")

    async def sign_out(self, session_hash: str, expires_at: float) -> None:
        """Refuse a dashboard session from now until it would have expired. Sign-outs whose
        sessions have expired anyway are removed at the same time."""
        t = dashboard_signouts
        async with self.engines.write.begin() as conn:
            await conn.execute(delete(t).where(t.c.expires_at < clock.now()))
            known = await conn.execute(select(t.c.session_hash).where(t.c.session_hash == session_hash))
            if known.first() is None:
                await conn.execute(insert(t).values(session_hash=session_hash, expires_at=expires_at))

    async def take_rate_tokens(
        self, project_id: str, rate: float, deficit: float, want: float
    ) -> tuple[float, float | None]:
        """Take tokens from the project's ingest bucket that every process shares (it fills at
        ``rate`` a second, up to ``rate``): ``deficit`` at least, up to ``want`` where the bucket
        holds them. Returns (tokens taken, None), or (0, seconds until there is enough).

        As the per-process bucket does, a deficit larger than the whole bucket is taken once
        the bucket is full, leaving a debt that later takers wait out."""
        t = rate_buckets
        async with self.engines.write.begin() as conn:
            now = clock.now()
            first = self._insert(t).values(project_id=project_id, tokens=rate, updated_at=now)
            await conn.execute(first.on_conflict_do_nothing())
            row = (
                await conn.execute(
                    select(t.c.tokens, t.c.updated_at).where(t.c.project_id == project_id).with_for_update()
                )
            ).one()
            tokens = min(rate, row.tokens + max(0.0, now - row.updated_at) * rate)
            need = min(deficit, rate)
            taken: float
            wait: float | None
            if tokens < need:
                taken, wait = 0.0, (need - tokens) / rate
            else:
                taken, wait = max(deficit, min(want, tokens)), None
            await conn.execute(
                update(t)
                .where(t.c.project_id == project_id)
                .values(tokens=tokens - taken, updated_at=max(now, row.updated_at))
            )
        return taken, wait

    async def signed_out(self, session_hash: str) -> bool:
        t = dashboard_signouts
        async with self.engines.read.connect() as conn:
            row = await conn.execute(select(t.c.session_hash).where(t.c.session_hash == session_hash))
            return row.first() is not None

    async def resolve_key(self, key: str) -> tuple[str, str] | None:
        """Return (project_id, kind) for a live key, else None."""
        async with self.engines.read.connect() as conn:
            row = (
                await conn.execute(
                    select(api_keys.c.project_id, api_keys.c.kind).where(
                        api_keys.c.key_hash == hash_key(key), api_keys.c.revoked_at.is_(None)
                    )
                )
            ).first()
        return (row.project_id, row.kind) if row else None

    async def list_projects(self) -> list[dict[str, Any]]:
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(select(projects.c.id, projects.c.name).order_by(projects.c.created_at))
            return [dict(r._mapping) for r in rows]

    # ---- ingest ------------------------------------------------------------------------------

    async def listen_for_work(
        self,
        on_route: Callable[[], None] | None,
        on_deliver: Callable[[], None] | None,
        stop: asyncio.Event,
        *,
        watch_commits: bool = False,
        on_change: Callable[[str], None] | None = None,
    ) -> None:
        """Wake this process's router and dispatcher when another process commits work for
        them, and call ``on_change`` when another process revoked a key or changed a project's
        secrets (see :meth:`_announce`). PostgreSQL says so (LISTEN/NOTIFY). SQLite has no such
        signal: with ``watch_commits`` (a worker with no ingest of its own) any other
        connection's commit wakes both, and they look for due work; otherwise they poll, and
        caches run out."""
        if isinstance(self._hot, PgHotPath):
            channels: dict[str, Callable[[str], None]] = {}
            if on_route is not None:
                channels[ROUTE_CHANNEL] = lambda _payload: on_route()
            if on_deliver is not None:
                channels[DELIVER_CHANNEL] = lambda _payload: on_deliver()
            if on_change is not None:
                channels[CHANGES_CHANNEL] = on_change
            await self._hot.listen(channels, stop)
        elif watch_commits and on_route is not None and on_deliver is not None:

            def wake() -> None:
                on_route()
                on_deliver()

            await self._hot.watch_commits(wake, stop)

    async def _announce(self, conn: AsyncConnection, change: str) -> None:
        """Tell every process on this PostgreSQL database, when ``conn``'s transaction commits,
        to drop what it cached of ``change``: "keys", or "secrets:<project id>". Processes on
        one SQLite file wait out their caches instead (seconds; docs/configuration.md)."""
        if self.dialect == "postgresql":
            await conn.execute(select(func.pg_notify(CHANGES_CHANNEL, change)))

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
        self, lease: RouteLease, delays: dict[str, float], *, uncounted: bool = False
    ) -> None:
        """Give leased jobs back to the queue after a failure, each due again after its delay.
        ``uncounted``: the routing was not attempted (put off, or cut short by a shutdown), so
        the lease does not count as one of the event's routing attempts."""
        await self._hot.defer_route_jobs(lease, delays, uncounted)

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

    # ---- configuration (pipelines, destinations, secrets) -----------------------------------

    async def config_versions(self, project_ids: Iterable[str]) -> dict[str, int]:
        return await self._hot.config_versions(list(project_ids))

    async def load_project_config(self, project_id: str) -> ProjectConfig:
        async with self.engines.read.begin() as conn:
            version = await conn.scalar(select(projects.c.config_version).where(projects.c.id == project_id))
            if version is None:
                raise NotFound(f"no project {project_id!r}")
            prow = await conn.execute(
                select(pipelines).where(pipelines.c.project_id == project_id).order_by(pipelines.c.name)
            )
            drow = await conn.execute(select(destinations).where(destinations.c.project_id == project_id))
            srow = await conn.execute(select(sources).where(sources.c.project_id == project_id))
            return ProjectConfig(
                project_id=project_id,
                version=int(version),
                pipelines=[_pipeline_from_row(r) for r in prow],
                destinations={r.id: _destination_from_row(r) for r in drow},
                sources={r.id: _source_from_row(r) for r in srow},
            )

    async def get_source(self, source_id: str) -> SourceRow | None:
        """A source by its global id (the ingress URL carries no key)."""
        async with self.engines.read.connect() as conn:
            row = (await conn.execute(select(sources).where(sources.c.id == source_id))).first()
            return _source_from_row(row) if row else None

    async def _bump_config(
        self, conn: AsyncConnection, project_id: str, expect_version: int | None = None
    ) -> None:
        """Move the project's config_version on; with ``expect_version``, only from that one
        (:class:`Conflict` if another change committed since)."""
        conds = [projects.c.id == project_id]
        if expect_version is not None:
            conds.append(projects.c.config_version == expect_version)
        res = await conn.execute(
            update(projects).where(*conds).values(config_version=projects.c.config_version + 1)
        )
        if expect_version is not None and res.rowcount == 0:
            raise Conflict("the configuration changed while this change was planned")

    async def apply_config(
        self,
        project_id: str,
        upsert_destinations: Sequence[dict[str, Any]],
        upsert_pipelines: Sequence[dict[str, Any]],
        delete_pipeline_ids: Sequence[str] = (),
        delete_destination_ids: Sequence[str] = (),
        upsert_sources: Sequence[dict[str, Any]] = (),
        delete_source_ids: Sequence[str] = (),
        *,
        expect_version: int | None = None,
    ) -> list[str]:
        """Create/update/delete pipelines and destinations in one transaction.

        Each upsert dict carries ``id`` (existing or new), ``name``, ``config`` and, for
        destinations, ``kind``; pipelines may carry ``endpoint`` and ``enabled``.

        With ``expect_version`` (the config_version the changes were planned at) it raises
        :class:`Conflict` and changes nothing when another change committed since: two applies
        planned at once would otherwise each write what it found different, leaving a mix.

        A deleted destination's deliveries that wait for an attempt end ``dead`` right after
        (see :meth:`end_waiting_deliveries`); returns their ids.
        """
        now = clock.now()
        async with self.engines.write.begin() as conn:
            # First, so that the project's row is locked while the rows are written.
            await self._bump_config(conn, project_id, expect_version)
            for d in upsert_destinations:
                cfg = orjson.dumps(d["config"], option=orjson.OPT_SORT_KEYS).decode()
                res = await conn.execute(
                    update(destinations)
                    .where(destinations.c.project_id == project_id, destinations.c.id == d["id"])
                    .values(
                        name=d["name"],
                        kind=d["kind"],
                        config=cfg,
                        enabled=d.get("enabled", True),
                        updated_at=now,
                    )
                )
                if res.rowcount == 0:
                    await conn.execute(
                        insert(destinations).values(
                            id=d["id"],
                            project_id=project_id,
                            name=d["name"],
                            kind=d["kind"],
                            config=cfg,
                            enabled=d.get("enabled", True),
                            created_at=now,
                            updated_at=now,
                        )
                    )
            for p in upsert_pipelines:
                cfg = orjson.dumps(p["config"], option=orjson.OPT_SORT_KEYS).decode()
                res = await conn.execute(
                    update(pipelines)
                    .where(pipelines.c.project_id == project_id, pipelines.c.id == p["id"])
                    .values(
                        name=p["name"],
                        config=cfg,
                        enabled=p.get("enabled", True),
                        endpoint=p.get("endpoint", False),
                        updated_at=now,
                    )
                )
                if res.rowcount == 0:
                    await conn.execute(
                        insert(pipelines).values(
                            id=p["id"],
                            project_id=project_id,
                            name=p["name"],
                            config=cfg,
                            enabled=p.get("enabled", True),
                            endpoint=p.get("endpoint", False),
                            created_at=now,
                            updated_at=now,
                        )
                    )
            for src in upsert_sources:
                cfg = orjson.dumps(src["config"], option=orjson.OPT_SORT_KEYS).decode()
                res = await conn.execute(
                    update(sources)
                    .where(sources.c.project_id == project_id, sources.c.id == src["id"])
                    .values(name=src["name"], config=cfg, enabled=src.get("enabled", True), updated_at=now)
                )
                if res.rowcount == 0:
                    await conn.execute(
                        insert(sources).values(
                            id=src["id"],
                            project_id=project_id,
                            name=src["name"],
                            config=cfg,
                            enabled=src.get("enabled", True),
                            created_at=now,
                            updated_at=now,
                        )
                    )
            if delete_source_ids:
                await conn.execute(
                    delete(sources).where(
                        sources.c.project_id == project_id, sources.c.id.in_(list(delete_source_ids))
                    )
                )
            if delete_pipeline_ids:
                await conn.execute(
                    delete(pipelines).where(
                        pipelines.c.project_id == project_id, pipelines.c.id.in_(list(delete_pipeline_ids))
                    )
                )
            if delete_destination_ids:
                await conn.execute(
                    delete(destinations).where(
                        destinations.c.project_id == project_id,
                        destinations.c.id.in_(list(delete_destination_ids)),
                    )
                )
        # The dispatcher would end each of them at its next attempt, but a retry may be hours
        # away: meanwhile it was listed "retrying" for a destination that no longer exists, and
        # its event was kept from retention. After the commit, in batches, like a disable.
        ended: list[str] = []
        for destination_id in delete_destination_ids:
            ended += await self.end_waiting_deliveries(project_id, destination_id, DELETED_DESTINATION_ERROR)
        return ended

    async def set_secret(self, project_id: str, name: str, ciphertext: bytes) -> bool:
        """Store an encrypted secret; return True when it replaced an existing one."""
        now = clock.now()
        async with self.engines.write.begin() as conn:
            res = await conn.execute(
                update(secrets)
                .where(secrets.c.project_id == project_id, secrets.c.name == name)
                .values(ciphertext=ciphertext, updated_at=now)
            )
            replaced = res.rowcount > 0
            if not replaced:
                await conn.execute(
                    insert(secrets).values(
                        project_id=project_id,
                        name=name,
                        ciphertext=ciphertext,
                        created_at=now,
                        updated_at=now,
                    )
                )
            await self._bump_config(conn, project_id)
            await self._announce(conn, f"secrets:{project_id}")
            return replaced

    async def get_secret(self, project_id: str, name: str) -> bytes | None:
        async with self.engines.read.connect() as conn:
            value = await conn.scalar(
                select(secrets.c.ciphertext).where(secrets.c.project_id == project_id, secrets.c.name == name)
            )
            return bytes(value) if value is not None else None

    async def newest_secrets(self, limit: int = 20) -> list[bytes]:
        """The ciphertexts of the secrets stored last, in any project, newest first."""
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(
                select(secrets.c.ciphertext).order_by(secrets.c.updated_at.desc()).limit(limit)
            )
            return [bytes(value) for value in rows.scalars()]

    async def list_secrets(self, project_id: str) -> list[dict[str, Any]]:
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(
                select(secrets.c.name, secrets.c.created_at, secrets.c.updated_at)
                .where(secrets.c.project_id == project_id)
                .order_by(secrets.c.name)
            )
            return [dict(r._mapping) for r in rows]

    async def delete_secret(self, project_id: str, name: str) -> None:
        async with self.engines.write.begin() as conn:
            res = await conn.execute(
                delete(secrets).where(secrets.c.project_id == project_id, secrets.c.name == name)
            )
            if res.rowcount == 0:
                raise NotFound(f"no secret named {name!r}")
            await self._bump_config(conn, project_id)
            await self._announce(conn, f"secrets:{project_id}")

    async def get_destinations(self, ids: Iterable[str]) -> dict[str, DestinationRow]:
        return await self._hot.get_destinations(list(ids))

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

    async def end_waiting_deliveries(
        self, project_id: str, destination_id: str, error: str, *, batch: int = 1000
    ) -> list[str]:
        """End a destination's deliveries that wait for an attempt (``pending`` or ``retrying``)
        as ``dead`` now, as the dispatcher ends one it finds the destination disabled for: one
        more attempt logged with ``error`` and no status code, ``last_error`` set, finished.

        Deliveries being attempted right now (``delivering``) are left to their attempt, whose
        record ends them if it fails (:meth:`end_stranded_retries`). Each
        batch is one transaction, so a long backlog does not hold SQLite's writer for long.
        The ended deliveries stay listed and can be replayed, and are counted in the
        ``dead`` attempts metric. Returns their ids.
        """
        ended: list[str] = []
        waiting = ("pending", "retrying")
        while True:
            async with self.engines.write.begin() as conn:
                picked = (
                    select(deliveries.c.id)
                    .where(
                        deliveries.c.project_id == project_id,
                        deliveries.c.destination_id == destination_id,
                        deliveries.c.status.in_(waiting),
                    )
                    .order_by(deliveries.c.id)
                    .limit(batch)
                )
                ids = list((await conn.execute(picked)).scalars().all())
                if not ids:
                    return ended
                ended += await self._end_dead(conn, ids, waiting, error)
            if len(ids) < batch:
                return ended

    async def end_stranded_retries(self, delivery_ids: Sequence[str]) -> list[str]:
        """End ``dead`` now the deliveries among these that wait for a retry of a destination
        deleted or disabled while their attempt ran, as :meth:`end_waiting_deliveries` ends the
        ones that were waiting then. That call leaves the attempts in flight alone, so without
        this one such a delivery stayed "retrying" until its next attempt (hours away on the
        default schedule). Returns their ids."""
        # Read first: a write transaction would take SQLite's write lock from ingest for every
        # batch holding a retry, and almost always find nothing to end. By primary keys only: with
        # the status in the query, PostgreSQL walked the index of due deliveries for a few hundred
        # ids (26-38 ms on a large backlog, for every batch).
        async with self.engines.read.connect() as conn:
            waiting = {
                did: dest
                for did, dest, status in await conn.execute(
                    select(deliveries.c.id, deliveries.c.destination_id, deliveries.c.status).where(
                        deliveries.c.id.in_(list(delivery_ids))
                    )
                )
                if status == "retrying"
            }
            if not waiting:
                return []
            live = {
                dest: enabled
                for dest, enabled in await conn.execute(
                    select(destinations.c.id, destinations.c.enabled).where(
                        destinations.c.id.in_(set(waiting.values()))
                    )
                )
            }
        by_error: dict[str, list[str]] = {}
        for did, dest in waiting.items():
            if dest not in live:
                by_error.setdefault(DELETED_DESTINATION_ERROR, []).append(did)
            elif not live[dest]:
                by_error.setdefault(DISABLED_DESTINATION_ERROR, []).append(did)
        ended: list[str] = []
        if by_error:
            async with self.engines.write.begin() as conn:
                for error, ids in by_error.items():
                    ended += await self._end_dead(conn, ids, ("retrying",), error)
        return ended

    async def _end_dead(
        self, conn: AsyncConnection, ids: Sequence[str], statuses: Sequence[str], error: str
    ) -> list[str]:
        """End these deliveries ``dead`` with ``error`` where their status is still one of
        ``statuses``: one more attempt logged with ``error`` and no status code, ``last_error``
        set, finished. Returns the ids ended."""
        now = clock.now()
        # The status is checked again by the update: a delivery leased meanwhile (PostgreSQL
        # re-reads a row another transaction changed) is left to its attempt.
        res = await conn.execute(
            update(deliveries)
            .where(deliveries.c.id.in_(list(ids)), deliveries.c.status.in_(list(statuses)))
            .values(
                status="dead",
                attempts=deliveries.c.attempts + 1,
                due_at=None,
                lease_token=None,
                last_status_code=None,
                last_error=error,
                finished_at=now,
                updated_at=now,
            )
            .returning(deliveries.c.id, deliveries.c.project_id, deliveries.c.attempts)
        )
        done = res.all()
        if done:
            await conn.execute(
                insert(attempts),
                [
                    {
                        "delivery_id": did,
                        "project_id": project_id,
                        "n": n,
                        "started_at": now,
                        "duration_ms": 0.0,
                        "status_code": None,
                        "error": error,
                        "response_excerpt": None,
                        "next_retry_at": None,
                        "worker": self.worker_id,
                    }
                    for did, project_id, n in done
                ],
            )
        # Counted as the dispatcher counts an attempt that ends a delivery dead.
        metrics.ATTEMPTS.labels(result="dead").inc(len(done))
        return [did for did, _, _ in done]

    async def replay(
        self,
        project_id: str,
        delivery_ids: Sequence[str] | None = None,
        *,
        status: Sequence[str] | None = None,
        destination_id: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 10_000,
        batch: int = REPLAY_BATCH,
        pause: float = PURGE_PAUSE_SECONDS,
    ) -> list[str]:
        """Make deliveries due again on the same ids, starting the retry schedule afresh.

        A delivery that is being attempted right now is left alone. Returns the ids replayed:
        the first ``limit`` that match, in id order.

        They are replayed ``batch`` per transaction, with ``pause`` (or as long as the last
        transaction took, if longer) between: on SQLite a transaction holds the only writer,
        and 100,000 in one stalled ingest for 0.7 s. The matching deliveries are found on a
        reader, walking ids upward, and checked again as they are updated; one replayed by an
        earlier batch is never picked again, even if it has ended again meanwhile.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        conds = [deliveries.c.project_id == project_id, deliveries.c.status != "delivering"]
        if delivery_ids is not None:
            conds.append(deliveries.c.id.in_(list(delivery_ids)))
        if status:
            conds.append(deliveries.c.status.in_(list(status)))
        if destination_id:
            conds.append(deliveries.c.destination_id == destination_id)
        if since is not None:
            conds.append(deliveries.c.created_at >= since)
        if until is not None:
            conds.append(deliveries.c.created_at < until)
        replayed: list[str] = []
        after: str | None = None  # keyset cursor: the last delivery id looked at
        while len(replayed) < limit:
            size = min(batch, limit - len(replayed))
            query = select(deliveries.c.id).where(*conds)
            if after is not None:
                query = query.where(deliveries.c.id > after)
            async with self.engines.read.connect() as conn:
                picked = list((await conn.execute(query.order_by(deliveries.c.id).limit(size))).scalars())
            if not picked:
                break
            started = time.monotonic()
            now = clock.now()
            async with self.engines.write.begin() as conn:
                res = await conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(picked), *conds)
                    .values(
                        status="pending",
                        due_at=now,
                        retry_base=deliveries.c.attempts,
                        finished_at=None,
                        updated_at=now,
                    )
                    .returning(deliveries.c.id)
                )
                replayed.extend(sorted(res.scalars().all()))
            held = time.monotonic() - started
            if len(picked) < size:
                break
            after = picked[-1]
            if len(replayed) < limit:
                await asyncio.sleep(max(pause, held))
        return replayed

    # ---- reading events and deliveries (API, CLI, dashboard) -------------------------------

    async def get_event(self, project_id: str, event_id: str) -> StoredEvent | None:
        async with self.engines.read.connect() as conn:
            row = (
                await conn.execute(
                    select(*_EVENT_SELECT).where(events.c.project_id == project_id, events.c.id == event_id)
                )
            ).first()
            return rowmap.stored_event(row) if row else None

    async def list_events(
        self,
        project_id: str,
        *,
        type_: str | None = None,
        before: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
    ) -> list[StoredEvent]:
        conds = [events.c.project_id == project_id]
        if type_:
            if type_.endswith("*"):
                conds.append(events.c.type.startswith(type_[:-1], autoescape=True))
            else:
                conds.append(events.c.type == type_)
        if before:
            conds.append(events.c.id < before)
        if since is not None:
            conds.append(events.c.received_at >= since)
        if until is not None:
            conds.append(events.c.received_at < until)
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(
                select(*_EVENT_SELECT).where(*conds).order_by(events.c.id.desc()).limit(limit)
            )
            return [rowmap.stored_event(r) for r in rows]

    async def list_deliveries(
        self,
        project_id: str,
        *,
        status: Sequence[str] | None = None,
        destination_id: str | None = None,
        event_id: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        conds = [deliveries.c.project_id == project_id]
        if event_id:
            # An event has few deliveries: find them by event id alone (that index), and check
            # the project after; with both in SQL, SQLite walks the project's whole index.
            conds = [deliveries.c.event_id == event_id]
        if status:
            conds.append(deliveries.c.status.in_(list(status)))
        if destination_id:
            conds.append(deliveries.c.destination_id == destination_id)
        if before:
            conds.append(deliveries.c.id < before)
        cols = [c for c in deliveries.c if c.name not in ("body", "lease_token")]
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(
                select(*cols).where(*conds).order_by(deliveries.c.id.desc()).limit(limit)
            )
            return [dict(r._mapping) for r in rows if r.project_id == project_id]

    async def get_delivery(self, project_id: str, delivery_id: str) -> dict[str, Any] | None:
        async with self.engines.read.connect() as conn:
            row = (
                await conn.execute(
                    select(deliveries).where(
                        deliveries.c.project_id == project_id, deliveries.c.id == delivery_id
                    )
                )
            ).first()
            if row is None:
                return None
            found = dict(row._mapping)
            found.pop("lease_token", None)
            arows = await conn.execute(
                select(attempts).where(attempts.c.delivery_id == delivery_id).order_by(attempts.c.id)
            )
            found["attempt_log"] = [dict(a._mapping) for a in arows]
            return found

    async def delivery_counts(
        self,
        project_id: str,
        *,
        statuses: Sequence[str] = DELIVERY_STATUSES,
        since_id: str | None = None,
        cap: int | None = None,
        zeros: bool = False,
    ) -> dict[str, int]:
        """Deliveries per status (those with an id >= ``since_id`` if given), each up to ``cap``
        (:data:`DELIVERY_COUNT_CAP` by default).

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
            conds = [deliveries.c.project_id == project_id, deliveries.c.status == status]
            if since_id is not None:
                conds.append(deliveries.c.id >= since_id)
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

    async def purge_older_than(
        self,
        cutoff: float,
        batch: int = PURGE_BATCH,
        *,
        target_seconds: float = PURGE_TARGET_SECONDS,
        pause: float = PURGE_PAUSE_SECONDS,
    ) -> int:
        """Retention: delete finished deliveries, their attempts and events older than ``cutoff``.

        Old events are walked in id order, at most ``batch`` per transaction. One still owed work
        (an unfinished delivery or a route job) is kept and stepped over, so the purgeable events
        behind it still go however many kept ones come first. Returns how many events went.

        SQLite has one writer, so every transaction here stalls ingest while it is open: the
        walk itself (past kept events, and past every recent one at the end) reads on a reader
        connection, a transaction that took longer than ``target_seconds`` halves the next
        batch (events with many deliveries and attempts cost more), and the writer is left to
        others for ``pause`` (or as long as the transaction took, if longer) between batches.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        removed = 0
        size = batch
        after: str | None = None  # keyset cursor: the last event id looked at
        while True:
            async with self.engines.read.connect() as conn:
                query = select(events.c.id).where(events.c.received_at < cutoff)
                if after is not None:
                    query = query.where(events.c.id > after)
                old = await conn.execute(query.order_by(events.c.id).limit(size))
                ids = list(old.scalars().all())
            if not ids:
                return removed
            started = time.monotonic()
            async with self.engines.write.begin() as conn:
                # Every delivery of the batch is locked (PostgreSQL; SQLite's writer holds the
                # database): a replay that turns a finished one back to pending meanwhile either
                # commits first and is seen here, or waits and finds it gone.
                owned = await conn.execute(
                    select(deliveries.c.event_id, deliveries.c.status)
                    .where(deliveries.c.event_id.in_(ids))
                    .with_for_update()
                )
                keep = {event_id for event_id, status in owned if status in DUE_STATUSES} | set(
                    (await conn.execute(select(route_jobs.c.event_id).where(route_jobs.c.event_id.in_(ids))))
                    .scalars()
                    .all()
                )
                gone = [i for i in ids if i not in keep]
                if gone:
                    dids = select(deliveries.c.id).where(deliveries.c.event_id.in_(gone)).scalar_subquery()
                    await conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(dids)))
                    await conn.execute(delete(deliveries).where(deliveries.c.event_id.in_(gone)))
                    res = await conn.execute(delete(events).where(events.c.id.in_(gone)))
                    # Another process's purge may have taken some since they were read.
                    removed += res.rowcount
            held = time.monotonic() - started
            # A short batch was the last of the old events; otherwise go on after it (past the
            # kept ones too: they stay, and the cursor still moves, so the walk ends).
            if len(ids) < size:
                return removed
            after = ids[-1]
            if held > target_seconds:
                size = max(1, size // 2)
            elif held < target_seconds / 2:
                size = min(batch, size * 2)
            await asyncio.sleep(max(pause, held))

    # ---- entities ------------------------------------------------------------------------------

    async def upsert_entities(
        self, project_id: str, items: Sequence[tuple[str, str, dict[str, Any], bool]]
    ) -> None:
        """Write entities in one transaction: (kind, id, traits, merge). Merge keeps other traits;
        a trait set to null is removed."""
        now = clock.now()
        async with self.engines.write.begin() as conn:
            keys = {(k, i) for k, i, _, merge in items if merge}
            existing: dict[tuple[str, str], dict[str, Any]] = {}
            for kind, group in itertools.groupby(sorted(keys), key=lambda k: k[0]):
                ids = [i for _, i in group]
                stmt = self._skip_locked_for_update(
                    select(entities.c.kind, entities.c.id, entities.c.traits).where(
                        entities.c.project_id == project_id, entities.c.kind == kind, entities.c.id.in_(ids)
                    )
                )
                for row in await conn.execute(stmt):
                    existing[(row.kind, row.id)] = orjson.loads(row.traits)
            final: dict[tuple[str, str], dict[str, Any]] = {}
            for kind, eid, traits, merge in items:
                base = (final.get((kind, eid)) or existing.get((kind, eid)) or {}) if merge else {}
                merged = {**base, **traits}
                final[(kind, eid)] = {k: v for k, v in merged.items() if v is not None}
            rows = [
                {
                    "project_id": project_id,
                    "kind": k,
                    "id": i,
                    "traits": orjson.dumps(t).decode(),
                    "updated_at": now,
                }
                for (k, i), t in final.items()
            ]
            stmt = self._insert(entities)
            stmt = stmt.on_conflict_do_update(
                index_elements=["project_id", "kind", "id"],
                set_={"traits": stmt.excluded.traits, "updated_at": stmt.excluded.updated_at},
            )
            await conn.execute(stmt, rows)

    def _skip_locked_for_update(self, stmt: Any) -> Any:
        # Read-modify-write of traits: lock the rows on PostgreSQL (SQLite's writer lock suffices).
        return stmt.with_for_update() if self.dialect == "postgresql" else stmt

    async def get_entities(
        self, project_id: str, keys: Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], dict[str, Any]]:
        wanted = sorted(set(keys))
        out: dict[tuple[str, str], dict[str, Any]] = {}
        if not wanted:
            return out
        async with self.engines.read.connect() as conn:
            for kind, group in itertools.groupby(wanted, key=lambda k: k[0]):
                ids = [i for _, i in group]
                rows = await conn.execute(
                    select(entities.c.kind, entities.c.id, entities.c.traits).where(
                        entities.c.project_id == project_id, entities.c.kind == kind, entities.c.id.in_(ids)
                    )
                )
                for row in rows:
                    out[(row.kind, row.id)] = orjson.loads(row.traits)
        return out

    async def delete_entity(self, project_id: str, kind: str, entity_id: str) -> bool:
        async with self.engines.write.begin() as conn:
            res = await conn.execute(
                delete(entities).where(
                    entities.c.project_id == project_id, entities.c.kind == kind, entities.c.id == entity_id
                )
            )
            return bool(res.rowcount)

    # ---- step cache ----------------------------------------------------------------------------

    async def cache_get(self, project_id: str, key: str) -> str | None:
        key = hashlib.sha256(key.encode()).hexdigest()  # any caller key fits the column
        async with self.engines.read.connect() as conn:
            row = (
                await conn.execute(
                    select(step_cache.c.value, step_cache.c.expires_at).where(
                        step_cache.c.project_id == project_id, step_cache.c.key == key
                    )
                )
            ).first()
        if row is None or (row.expires_at is not None and row.expires_at < clock.now()):
            return None
        return str(row.value)

    async def cache_swap(
        self, project_id: str, key: str, expected: str, value: str, ttl: float | None
    ) -> bool:
        """Set a live entry to ``value`` only while it still holds ``expected``; True for the one
        caller that did. A compare-and-set in one statement, so of several callers, in as many
        processes, exactly one wins (PostgreSQL re-checks the condition after a concurrent
        update commits; SQLite has one writer)."""
        key = hashlib.sha256(key.encode()).hexdigest()
        now = clock.now()
        async with self.engines.write.begin() as conn:
            result = await conn.execute(
                update(step_cache)
                .where(
                    step_cache.c.project_id == project_id,
                    step_cache.c.key == key,
                    step_cache.c.value == expected,
                    or_(step_cache.c.expires_at.is_(None), step_cache.c.expires_at >= now),
                )
                .values(value=value, expires_at=now + ttl if ttl else None, created_at=now)
            )
        return bool(result.rowcount == 1)

    async def cache_put(self, project_id: str, key: str, value: str, ttl: float | None) -> None:
        key = hashlib.sha256(key.encode()).hexdigest()
        now = clock.now()
        async with self.engines.write.begin() as conn:
            stmt = self._insert(step_cache).values(
                project_id=project_id,
                key=key,
                value=value,
                expires_at=now + ttl if ttl else None,
                created_at=now,
            )
            await conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["project_id", "key"],
                    set_={
                        "value": stmt.excluded.value,
                        "expires_at": stmt.excluded.expires_at,
                        "created_at": stmt.excluded.created_at,
                    },
                )
            )
