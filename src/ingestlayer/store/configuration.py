"""Each project's configuration: pipelines, destinations, sources and secrets."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import orjson
from sqlalchemy import LargeBinary, Select, Table, bindparam, cast, delete, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ingestlayer import clock
from ingestlayer.records import DestinationRow, PipelineRow, ProjectConfig, SourceRow
from ingestlayer.store import rows as rowmap
from ingestlayer.store.base import Conflict, NotFound
from ingestlayer.store.ending import DELETED_DESTINATION_ERROR, EndingMixin
from ingestlayer.store.notify import NotifyMixin
from ingestlayer.store.pg_hot import ROUTE_CHANNEL
from ingestlayer.store.schema import (
    destinations,
    master_key_check,
    pipelines,
    projects,
    route_jobs,
    secrets,
    sources,
)


class StoredSecret(NamedTuple):
    """A secret as the master key check sees it: where it is, and its ciphertext."""

    project: str  # the project's name
    name: str
    ciphertext: bytes


def _pipeline_from_row(row: Any) -> PipelineRow:
    config, unreadable = rowmap.stored_config(row.config, rowmap.empty_pipeline)
    return PipelineRow(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        config=config,
        endpoint=bool(row.endpoint),
        enabled=bool(row.enabled),
        created_at=row.created_at,
        updated_at=row.updated_at,
        unreadable=unreadable,
    )


def _source_from_row(row: Any) -> SourceRow:
    config, unreadable = rowmap.stored_config(row.config, rowmap.empty_source)
    return SourceRow(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        config=config,
        enabled=bool(row.enabled),
        updated_at=row.updated_at,
        unreadable=unreadable,
    )


def _destination_from_row(row: Any) -> DestinationRow:
    config, unreadable = rowmap.stored_config(row.config, rowmap.empty_destination)
    return DestinationRow(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        kind=row.kind,
        config=config,
        enabled=bool(row.enabled),
        updated_at=row.updated_at,
        unreadable=unreadable,
    )


class ConfigMixin(NotifyMixin, EndingMixin):
    """Reading and changing configuration (pipelines, destinations, sources, secrets)."""

    async def config_versions(self, project_ids: Iterable[str]) -> dict[str, int]:
        return await self._hot.config_versions(list(project_ids))

    def _rows(self, table: Table) -> Select[Any]:
        """A SELECT of ``table``'s rows, their ``config`` read as bytes on SQLite and decoded by
        rows.stored_config. As text, a row edited by hand into bytes that are not UTF-8 made the
        driver raise an OperationalError, the class of an outage, for the whole read: every
        router pass failed as if the database were down, every project's events held with it,
        and the API answered 503 to what would fix it. PostgreSQL stores valid text only."""
        if self.dialect != "sqlite":
            return select(table)
        return select(*(cast(c, LargeBinary).label(c.name) if c.name == "config" else c for c in table.c))

    async def load_project_config(self, project_id: str) -> ProjectConfig:
        async with self.engines.read.begin() as conn:
            version = await conn.scalar(select(projects.c.config_version).where(projects.c.id == project_id))
            if version is None:
                raise NotFound(f"no project {project_id!r}")
            prow = await conn.execute(
                self._rows(pipelines).where(pipelines.c.project_id == project_id).order_by(pipelines.c.name)
            )
            drow = await conn.execute(self._rows(destinations).where(destinations.c.project_id == project_id))
            srow = await conn.execute(self._rows(sources).where(sources.c.project_id == project_id))
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
            row = (await conn.execute(self._rows(sources).where(sources.c.id == source_id))).first()
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
        await self._wake_waiting_routes(conn, project_id)

    async def _wake_waiting_routes(self, conn: AsyncConnection, project_id: str) -> None:
        """Make the project's route jobs that wait on a routing back-off due now, with the change
        that is committed with them: it may be the fix (a pipeline that could not be compiled, a
        step's credentials), and the back-off up to half an hour. Jobs leased by a router are not
        marked waiting (their due_at is the lease's token) and are left alone."""
        res = await conn.execute(
            update(route_jobs)
            # As the partial index ix_route_jobs_waiting is written, for both databases to use it.
            .where(route_jobs.c.project_id == project_id, text("waiting"))
            .values(due_at=clock.now(), waiting=False)
        )
        if res.rowcount > 0 and self.dialect == "postgresql":
            await conn.execute(select(func.pg_notify(ROUTE_CHANNEL, "")))

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
        set_secrets: Mapping[str, bytes] | None = None,
        delete_secrets: Collection[str] = (),
    ) -> list[str]:
        """Create/update/delete pipelines and destinations in one transaction.

        Each upsert dict carries ``id`` (existing or new), ``name``, ``config`` and, for
        destinations, ``kind``; pipelines may carry ``endpoint`` and ``enabled``.

        With ``expect_version`` (the config_version the changes were planned at) it raises
        :class:`Conflict` and changes nothing when another change committed since: two applies
        planned at once would otherwise each write what it found different, leaving a mix.

        ``set_secrets`` (name: ciphertext) and ``delete_secrets`` are written in the same
        transaction: secrets that a configuration refers to (an endpoint's signing secrets) change
        with it or not at all, never one without the other.

        A deleted destination's deliveries that wait for an attempt end ``dead`` right after
        (see :meth:`end_waiting_deliveries`); returns their ids.
        """
        now = clock.now()
        async with self.engines.write.begin() as conn:
            # First, so that the project's row is locked while the rows are written.
            await self._bump_config(conn, project_id, expect_version)
            for name, ciphertext in (set_secrets or {}).items():
                await self._put_secret(conn, project_id, name, ciphertext, now)
            if delete_secrets:
                await conn.execute(
                    delete(secrets).where(
                        secrets.c.project_id == project_id, secrets.c.name.in_(list(delete_secrets))
                    )
                )
            if set_secrets or delete_secrets:
                await self._announce(conn, f"secrets:{project_id}")
            # Each row's own columns beside id, name, config and enabled, with their defaults.
            for table, items, own in (
                (destinations, upsert_destinations, {"kind": None}),
                (pipelines, upsert_pipelines, {"endpoint": False}),
                (sources, upsert_sources, {}),
            ):
                await _upsert(conn, table, project_id, now, [_row(item, own) for item in items])
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
        async with self.engines.write.begin() as conn:
            replaced = await self._put_secret(conn, project_id, name, ciphertext, clock.now())
            await self._bump_config(conn, project_id)
            await self._announce(conn, f"secrets:{project_id}")
            return replaced

    async def _put_secret(
        self, conn: AsyncConnection, project_id: str, name: str, ciphertext: bytes, now: float
    ) -> bool:
        res = await conn.execute(
            update(secrets)
            .where(secrets.c.project_id == project_id, secrets.c.name == name)
            .values(ciphertext=ciphertext, updated_at=now)
        )
        if res.rowcount > 0:
            return True
        await conn.execute(
            insert(secrets).values(
                project_id=project_id, name=name, ciphertext=ciphertext, created_at=now, updated_at=now
            )
        )
        return False

    async def get_secret(self, project_id: str, name: str) -> bytes | None:
        async with self.engines.read.connect() as conn:
            value = await conn.scalar(
                select(secrets.c.ciphertext).where(secrets.c.project_id == project_id, secrets.c.name == name)
            )
            return bytes(value) if value is not None else None

    async def newest_secrets(self, limit: int = 20) -> list[StoredSecret]:
        """The secrets stored last, in any project, newest first."""
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(
                select(projects.c.name.label("project"), secrets.c.name, secrets.c.ciphertext)
                .join(projects, projects.c.id == secrets.c.project_id)
                .order_by(secrets.c.updated_at.desc())
                .limit(limit)
            )
            return [StoredSecret(r.project, r.name, bytes(r.ciphertext)) for r in rows]

    async def master_key_check(self) -> bytes | None:
        """The token the database's master key was checked with (see :mod:`ingestlayer.secretbox`),
        or None before a process first used a key with it."""
        async with self.engines.read.connect() as conn:
            value = await conn.scalar(select(master_key_check.c.token).where(master_key_check.c.id == 1))
            return bytes(value) if value is not None else None

    async def keep_master_key_check(self, token: bytes) -> bytes:
        """Store ``token`` unless a check value is stored already, and return the one stored.

        Insert-if-absent, then read back in the same transaction: of two processes starting at
        once on a new database with different keys, one writes and both read the same value
        (PostgreSQL's ON CONFLICT waits for the other's insert to commit; SQLite's writes take
        turns), so the second finds its key is not the database's rather than writing its own."""
        t = master_key_check
        async with self.engines.write.begin() as conn:
            first = self._insert(t).values(id=1, token=token, created_at=clock.now())
            await conn.execute(first.on_conflict_do_nothing())
            stored = await conn.scalar(select(t.c.token).where(t.c.id == 1))
            assert stored is not None  # inserted, or there already
            return bytes(stored)

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


# Ids looked up at once when a change updates or inserts rows: well under every database's limit
# on bound parameters in one statement.
_IDS_PER_LOOKUP = 1000


def _row(item: Mapping[str, Any], own: Mapping[str, Any]) -> dict[str, Any]:
    """A destination, pipeline or source of a change as its table's columns."""
    return {
        "id": item["id"],
        "name": item["name"],
        "config": orjson.dumps(item["config"], option=orjson.OPT_SORT_KEYS).decode(),
        "enabled": item.get("enabled", True),
        **{column: item.get(column, default) for column, default in own.items()},
    }


async def _upsert(
    conn: AsyncConnection, table: Table, project_id: str, now: float, rows: list[dict[str, Any]]
) -> None:
    """Update the project's rows of ``table`` that exist, insert the others: two statements run
    for many rows each, not two per row. A change of 2,000 pipelines wrote them one at a time,
    holding SQLite's only write lock (and with it every project's ingest) for 2.6-5.3 s."""
    if not rows:
        return
    existing: set[str] = set()
    ids = [r["id"] for r in rows]
    for i in range(0, len(ids), _IDS_PER_LOOKUP):
        chunk = ids[i : i + _IDS_PER_LOOKUP]
        found = await conn.execute(
            select(table.c.id).where(table.c.project_id == project_id, table.c.id.in_(chunk))
        )
        existing.update(found.scalars())
    updates = [
        {
            **{k: v for k, v in r.items() if k != "id"},
            "b_project": project_id,
            "b_id": r["id"],
            "updated_at": now,
        }
        for r in rows
        if r["id"] in existing
    ]
    inserts = [
        {**r, "project_id": project_id, "created_at": now, "updated_at": now}
        for r in rows
        if r["id"] not in existing
    ]
    if updates:
        # In the order given, as one statement per row did: a rename onto a name another row
        # gives up in the same change still finds it given up.
        stmt = update(table).where(
            table.c.project_id == bindparam("b_project"), table.c.id == bindparam("b_id")
        )
        await conn.execute(stmt, updates)
    if inserts:
        await conn.execute(insert(table), inserts)
