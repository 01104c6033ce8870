"""The store: every SQL statement the server runs lives in this package.

Callers ask for operations by name ("insert events", "lease due deliveries") and never build
queries. Each write operation is one transaction.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import and_, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ingestlayer.ids import new_id, new_key
from ingestlayer.records import (
    AttemptResult,
    DestinationRow,
    IngestResult,
    LeasedDelivery,
    NewDelivery,
    NewEvent,
    PipelineRow,
    ProjectConfig,
    RouteLease,
    SourceRow,
    StoredEvent,
)
from ingestlayer.store.db import Engines, create_engines
from ingestlayer.store.idempotency import InsertPlan
from ingestlayer.store.schema import (
    api_keys,
    attempts,
    deliveries,
    destinations,
    entities,
    events,
    pipelines,
    projects,
    route_jobs,
    secrets,
    sources,
    step_cache,
)
from ingestlayer.store.sqlite_hot import SqliteHotPath
from ingestlayer.timefmt import iso

DUE_STATUSES = ("pending", "retrying", "delivering")
_lease_counter = itertools.count(1)


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _event_from_row(row: Any) -> StoredEvent:
    return StoredEvent(
        id=row.id,
        project_id=row.project_id,
        type=row.type,
        payload_json=row.payload,
        idempotency_key=row.idempotency_key,
        source=row.source,
        occurred_at=row.occurred_at,
        received_at=row.received_at,
        trace=orjson.loads(row.trace) if row.trace else None,
    )


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


class Store:
    """Async access to the database. One instance per process."""

    def __init__(self, engines: Engines) -> None:
        self.engines = engines
        self.dialect = engines.dialect
        self.worker_id = f"{os.uname().nodename}:{os.getpid()}"
        # On a SQLite file, the hot statements run on plain sqlite3 threads (see sqlite_hot).
        self._sqlite: SqliteHotPath | None = None
        path = engines.write.url.database
        if self.dialect == "sqlite" and path and path != ":memory:":
            self._sqlite = SqliteHotPath(path)

    @classmethod
    def from_url(cls, url: str) -> Store:
        return cls(create_engines(url))

    async def close(self) -> None:
        if self._sqlite is not None:
            await self._sqlite.close()
        await self.engines.dispose()

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def _skip_locked(self, stmt: Any) -> Any:
        # SQLite has no row locks: its single writer (BEGIN IMMEDIATE) already serialises leases.
        return stmt.with_for_update(skip_locked=True) if self.dialect == "postgresql" else stmt

    async def ping(self) -> None:
        async with self.engines.read.connect() as conn:
            await conn.execute(select(1))

    # ---- projects and keys -------------------------------------------------------------------

    async def create_project(self, name: str) -> tuple[str, str, str]:
        """Create a project; return (project_id, ingest_key, admin_key). Keys are shown once."""
        now = time.time()
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
                    created_at=time.time(),
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
                .values(revoked_at=time.time())
            )
            if res.rowcount == 0:
                raise NotFound(f"no API key {key_id!r}")

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

    def route_token(self, lease_seconds: float) -> float:
        """A new route lease token: the lease's deadline, made unique within this process."""
        return time.time() + lease_seconds + next(_lease_counter) * 1e-6

    async def insert_events(
        self, batch: Sequence[NewEvent], route_token: float | None = None
    ) -> list[IngestResult]:
        """Store events and their route jobs in one transaction (the outbox).

        Idempotency is on (project, key): a key already stored, or repeated within this batch,
        yields the first event's id with ``duplicate=True`` and no second route job.
        With ``route_token`` the route jobs are stored already leased under it (a router in this
        process takes the events straight from ingest); otherwise they are due at once.
        """
        if self._sqlite is not None:
            return await self._sqlite.insert_events(batch, route_token)
        plan = InsertPlan(batch)
        async with self.engines.write.begin() as conn:
            rows = [
                {
                    "id": ev.id,
                    "project_id": ev.project_id,
                    "type": ev.type,
                    "payload": ev.payload_json,
                    "idempotency_key": ev.idempotency_key,
                    "source": ev.source,
                    "occurred_at": ev.occurred_at,
                    "received_at": ev.received_at,
                }
                for ev in plan.fresh
            ]
            inserted: set[str] = set()
            if rows:
                stmt = (
                    self._insert(events)
                    .on_conflict_do_nothing(index_elements=["project_id", "idempotency_key"])
                    .returning(events.c.id)
                )
                res = await conn.execute(stmt, rows)
                inserted = set(res.scalars().all())
            # Keys that were already stored (by an earlier request or a concurrent one).
            existing: dict[tuple[str, str], str] = {}
            for project_id, keys in plan.missing_keys(inserted).items():
                found = await conn.execute(
                    select(events.c.idempotency_key, events.c.id).where(
                        events.c.project_id == project_id, events.c.idempotency_key.in_(keys)
                    )
                )
                for key, eid in found:
                    existing[(project_id, key)] = eid
            jobs = [
                {
                    "event_id": ev.id,
                    "project_id": ev.project_id,
                    "due_at": ev.received_at if route_token is None else route_token,
                    "attempts": 0 if route_token is None else 1,
                }
                for ev in plan.fresh
                if ev.id in inserted
            ]
            if jobs:
                await conn.execute(insert(route_jobs), jobs)
        return plan.results(inserted, existing)

    # ---- routing -----------------------------------------------------------------------------

    async def _any_due(self, query: Any) -> bool:
        """A cheap indexed read before a lease: idle polling must not take the write lock (and,
        on SQLite, an fsync) many times a second."""
        async with self.engines.read.connect() as conn:
            return (await conn.execute(query.limit(1))).first() is not None

    async def lease_route_jobs(self, limit: int, lease_seconds: float) -> RouteLease:
        now = time.time()
        # A distinct lease deadline per call doubles as the lease token.
        token = self.route_token(lease_seconds)
        if self._sqlite is not None:
            return await self._sqlite.lease_route_jobs(limit, now, token)
        if not await self._any_due(select(route_jobs.c.event_id).where(route_jobs.c.due_at <= now)):
            return RouteLease(token, [])
        async with self.engines.write.begin() as conn:
            due = self._skip_locked(
                select(route_jobs.c.event_id)
                .where(route_jobs.c.due_at <= now)
                .order_by(route_jobs.c.due_at)
                .limit(limit)
            )
            res = await conn.execute(
                update(route_jobs)
                .where(route_jobs.c.event_id.in_(due.scalar_subquery()))
                .values(due_at=token, attempts=route_jobs.c.attempts + 1)
                .returning(route_jobs.c.event_id, route_jobs.c.attempts)
            )
            attempts = {r.event_id: r.attempts for r in res}
            if not attempts:
                return RouteLease(token, [])
            rows = await conn.execute(
                select(events).where(events.c.id.in_(list(attempts))).order_by(events.c.id)
            )
            evs = [_event_from_row(r) for r in rows]
            versions = await conn.execute(
                select(projects.c.id, projects.c.config_version).where(
                    projects.c.id.in_(sorted({e.project_id for e in evs}))
                )
            )
            return RouteLease(token, evs, attempts, {r.id: r.config_version for r in versions})

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
        if self._sqlite is not None:
            return await self._sqlite.complete_routing(lease, new_deliveries, traces, prelease, lease_seconds)
        now = time.time()
        token = new_id("lse")
        async with self.engines.write.begin() as conn:
            owned: set[str] = set()
            for lease_token, ids in lease.by_token([e.id for e in lease.events]).items():
                res = await conn.execute(
                    delete(route_jobs)
                    .where(route_jobs.c.event_id.in_(ids), route_jobs.c.due_at == lease_token)
                    .returning(route_jobs.c.event_id)
                )
                owned.update(res.scalars().all())
            rows = [
                {
                    "id": d.id,
                    "project_id": d.project_id,
                    "event_id": d.event_id,
                    "event_type": d.event_type,
                    "pipeline_id": d.pipeline_id,
                    "destination_id": d.destination_id,
                    "status": "pending",
                    "attempts": 0,
                    "retry_base": 0,
                    "due_at": now,
                    "lease_token": None,
                    "body": d.body,
                    "created_at": now,
                    "updated_at": now,
                }
                for d in new_deliveries
                if d.event_id in owned
            ]
            # The first `prelease` go straight to this process's dispatcher, already leased.
            kept = [d for d in new_deliveries if d.event_id in owned][:prelease]
            for row in rows[: len(kept)]:
                row.update(status="delivering", due_at=now + lease_seconds, lease_token=token)
            leased = [
                LeasedDelivery(
                    id=d.id,
                    project_id=d.project_id,
                    event_id=d.event_id,
                    event_type=d.event_type,
                    destination_id=d.destination_id,
                    attempts=0,
                    retry_base=0,
                    body=d.body,
                    lease_token=token,
                )
                for d in kept
            ]
            if rows:
                await conn.execute(insert(deliveries), rows)
            trace_rows = [
                {"b_id": eid, "b_trace": orjson.dumps(t).decode()}
                for eid, t in traces.items()
                if eid in owned
            ]
            if trace_rows:
                await conn.execute(
                    update(events).where(events.c.id == bindparam("b_id")).values(trace=bindparam("b_trace")),
                    trace_rows,
                )
            return len(rows), leased

    async def defer_route_jobs(self, lease: RouteLease, delays: dict[str, float]) -> None:
        """Give leased jobs back to the queue after a failure, each due again after its delay."""
        if self._sqlite is not None:
            return await self._sqlite.defer_route_jobs(lease, delays)
        now = time.time()
        async with self.engines.write.begin() as conn:
            await conn.execute(
                update(route_jobs)
                .where(
                    route_jobs.c.event_id == bindparam("b_id"), route_jobs.c.due_at == bindparam("b_token")
                )
                .values(due_at=bindparam("b_due")),
                [
                    {"b_id": eid, "b_token": token, "b_due": now + delays[eid]}
                    for token, ids in lease.by_token(list(delays)).items()
                    for eid in ids
                ],
            )

    async def create_test_delivery(self, event: NewEvent, destination_id: str) -> str:
        """Store a test event and one delivery of it to ``destination_id``, bypassing pipelines."""
        now = time.time()
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
        if self._sqlite is not None:
            return await self._sqlite.config_versions(list(project_ids))
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(
                select(projects.c.id, projects.c.config_version).where(projects.c.id.in_(list(project_ids)))
            )
            return {r.id: r.config_version for r in rows}

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

    async def _bump_config(self, conn: AsyncConnection, project_id: str) -> None:
        await conn.execute(
            update(projects)
            .where(projects.c.id == project_id)
            .values(config_version=projects.c.config_version + 1)
        )

    async def apply_config(
        self,
        project_id: str,
        upsert_destinations: Sequence[dict[str, Any]],
        upsert_pipelines: Sequence[dict[str, Any]],
        delete_pipeline_ids: Sequence[str] = (),
        delete_destination_ids: Sequence[str] = (),
        upsert_sources: Sequence[dict[str, Any]] = (),
        delete_source_ids: Sequence[str] = (),
    ) -> None:
        """Create/update/delete pipelines and destinations in one transaction.

        Each upsert dict carries ``id`` (existing or new), ``name``, ``config`` and, for
        destinations, ``kind``; pipelines may carry ``endpoint`` and ``enabled``.
        """
        now = time.time()
        async with self.engines.write.begin() as conn:
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
            await self._bump_config(conn, project_id)

    async def set_secret(self, project_id: str, name: str, ciphertext: bytes) -> bool:
        """Store an encrypted secret; return True when it replaced an existing one."""
        now = time.time()
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
            return replaced

    async def get_secret(self, project_id: str, name: str) -> bytes | None:
        async with self.engines.read.connect() as conn:
            value = await conn.scalar(
                select(secrets.c.ciphertext).where(secrets.c.project_id == project_id, secrets.c.name == name)
            )
            return bytes(value) if value is not None else None

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

    async def get_destinations(self, ids: Iterable[str]) -> dict[str, DestinationRow]:
        if self._sqlite is not None:
            return await self._sqlite.get_destinations(list(ids))
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(select(destinations).where(destinations.c.id.in_(list(ids))))
            return {r.id: _destination_from_row(r) for r in rows}

    # ---- delivery ------------------------------------------------------------------------------

    async def lease_deliveries(self, limit: int, lease_seconds: float) -> list[LeasedDelivery]:
        """Lease up to ``limit`` due deliveries (including ones whose lease has expired)."""
        now = time.time()
        # Unique per lease and always 30 characters: the column is VARCHAR(40), and a token built
        # from the host name overflowed it on PostgreSQL for long host names (EC2, Kubernetes).
        token = new_id("lse")
        if self._sqlite is not None:
            return await self._sqlite.lease_deliveries(limit, lease_seconds)
        if not await self._any_due(
            select(deliveries.c.id).where(deliveries.c.status.in_(DUE_STATUSES), deliveries.c.due_at <= now)
        ):
            return []
        async with self.engines.write.begin() as conn:
            due = self._skip_locked(
                select(deliveries.c.id)
                .where(deliveries.c.status.in_(DUE_STATUSES), deliveries.c.due_at <= now)
                .order_by(deliveries.c.due_at)
                .limit(limit)
            )
            res = await conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(due.scalar_subquery()))
                .values(status="delivering", due_at=now + lease_seconds, lease_token=token, updated_at=now)
                .returning(
                    deliveries.c.id,
                    deliveries.c.project_id,
                    deliveries.c.event_id,
                    deliveries.c.event_type,
                    deliveries.c.destination_id,
                    deliveries.c.attempts,
                    deliveries.c.retry_base,
                    deliveries.c.body,
                )
            )
            return [
                LeasedDelivery(
                    id=r.id,
                    project_id=r.project_id,
                    event_id=r.event_id,
                    event_type=r.event_type,
                    destination_id=r.destination_id,
                    attempts=r.attempts,
                    retry_base=r.retry_base,
                    body=r.body,
                    lease_token=token,
                )
                for r in res
            ]

    async def record_attempts(self, results: Sequence[AttemptResult]) -> None:
        """Log attempts and move their deliveries on, in one transaction.

        The state change applies only while the lease is still ours; the attempt itself is always
        logged, because the request was made.
        """
        if not results:
            return
        if self._sqlite is not None:
            return await self._sqlite.record_attempts(results)
        now = time.time()
        async with self.engines.write.begin() as conn:
            await conn.execute(
                insert(attempts),
                [
                    {
                        "delivery_id": r.delivery_id,
                        "project_id": r.project_id,
                        "n": r.n,
                        "started_at": r.started_at,
                        "duration_ms": r.duration_ms,
                        "status_code": r.status_code,
                        "error": r.error,
                        "response_excerpt": r.response_excerpt,
                        "next_retry_at": r.next_retry_at,
                        "worker": r.worker,
                    }
                    for r in results
                ],
            )
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == bindparam("b_id"), deliveries.c.lease_token == bindparam("b_token"))
                .values(
                    status=bindparam("b_status"),
                    attempts=bindparam("b_n"),
                    due_at=bindparam("b_due"),
                    lease_token=None,
                    last_status_code=bindparam("b_code"),
                    last_error=bindparam("b_error"),
                    updated_at=now,
                    finished_at=bindparam("b_finished"),
                ),
                [
                    {
                        "b_id": r.delivery_id,
                        "b_token": r.lease_token,
                        "b_status": r.status,
                        "b_n": r.n,
                        "b_due": r.next_retry_at if r.status == "retrying" else None,
                        "b_code": r.status_code,
                        "b_error": r.error,
                        "b_finished": now if r.status in ("delivered", "dead") else None,
                    }
                    for r in results
                ],
            )

    async def release_leases(self, leased: Sequence[LeasedDelivery]) -> None:
        """Hand back leases that were never attempted (shutdown), due again right away."""
        if not leased:
            return
        if self._sqlite is not None:
            return await self._sqlite.release_leases(leased)
        now = time.time()
        async with self.engines.write.begin() as conn:
            await conn.execute(
                update(deliveries)
                .where(deliveries.c.id == bindparam("b_id"), deliveries.c.lease_token == bindparam("b_token"))
                .values(
                    status=bindparam("b_status"),
                    due_at=now,
                    lease_token=None,
                    updated_at=now,
                ),
                [
                    {
                        "b_id": d.id,
                        "b_token": d.lease_token,
                        "b_status": "retrying" if d.attempts else "pending",
                    }
                    for d in leased
                ],
            )

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
    ) -> list[str]:
        """Make deliveries due again on the same ids, starting the retry schedule afresh.

        A delivery that is being attempted right now is left alone. Returns the ids replayed.
        """
        now = time.time()
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
        async with self.engines.write.begin() as conn:
            picked = select(deliveries.c.id).where(and_(*conds)).order_by(deliveries.c.id).limit(limit)
            res = await conn.execute(
                update(deliveries)
                .where(deliveries.c.id.in_(picked.scalar_subquery()))
                .values(
                    status="pending",
                    due_at=now,
                    retry_base=deliveries.c.attempts,
                    finished_at=None,
                    updated_at=now,
                )
                .returning(deliveries.c.id)
            )
            return sorted(res.scalars().all())

    # ---- reading events and deliveries (API, CLI, dashboard) -------------------------------

    async def get_event(self, project_id: str, event_id: str) -> StoredEvent | None:
        async with self.engines.read.connect() as conn:
            row = (
                await conn.execute(
                    select(events).where(events.c.project_id == project_id, events.c.id == event_id)
                )
            ).first()
            return _event_from_row(row) if row else None

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
            rows = await conn.execute(select(events).where(*conds).order_by(events.c.id.desc()).limit(limit))
            return [_event_from_row(r) for r in rows]

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

    async def delivery_counts(self, project_id: str) -> dict[str, int]:
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(
                select(deliveries.c.status, func.count())
                .where(deliveries.c.project_id == project_id)
                .group_by(deliveries.c.status)
            )
            return {r[0]: int(r[1]) for r in rows}

    async def purge_older_than(self, cutoff: float, batch: int = 5000) -> int:
        """Retention: delete finished deliveries, their attempts and events older than ``cutoff``."""
        removed = 0
        while True:
            async with self.engines.write.begin() as conn:
                old = await conn.execute(
                    select(events.c.id)
                    .where(events.c.received_at < cutoff)
                    .order_by(events.c.id)
                    .limit(batch)
                )
                ids = list(old.scalars().all())
                if not ids:
                    return removed
                busy = await conn.execute(
                    select(deliveries.c.event_id).where(
                        deliveries.c.event_id.in_(ids),
                        or_(deliveries.c.status.in_(DUE_STATUSES)),
                    )
                )
                keep = set(busy.scalars().all()) | set(
                    (await conn.execute(select(route_jobs.c.event_id).where(route_jobs.c.event_id.in_(ids))))
                    .scalars()
                    .all()
                )
                gone = [i for i in ids if i not in keep]
                if not gone:
                    return removed
                dids = select(deliveries.c.id).where(deliveries.c.event_id.in_(gone)).scalar_subquery()
                await conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(dids)))
                await conn.execute(delete(deliveries).where(deliveries.c.event_id.in_(gone)))
                await conn.execute(delete(events).where(events.c.id.in_(gone)))
                removed += len(gone)

    # ---- entities ------------------------------------------------------------------------------

    async def upsert_entities(
        self, project_id: str, items: Sequence[tuple[str, str, dict[str, Any], bool]]
    ) -> None:
        """Write entities in one transaction: (kind, id, traits, merge). Merge keeps other traits;
        a trait set to null is removed."""
        now = time.time()
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
        if row is None or (row.expires_at is not None and row.expires_at < time.time()):
            return None
        return str(row.value)

    async def cache_put(self, project_id: str, key: str, value: str, ttl: float | None) -> None:
        key = hashlib.sha256(key.encode()).hexdigest()
        now = time.time()
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
