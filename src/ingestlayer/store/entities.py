"""Entities (the traits that identify and group calls write, and steps look up) and the step
cache."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
from sqlalchemy import delete, or_, select, update

from ingestlayer import clock
from ingestlayer.store.base import StoreBase
from ingestlayer.store.schema import entities, step_cache


class EntitiesMixin(StoreBase):
    """Entities and the step cache."""

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
