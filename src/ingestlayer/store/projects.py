"""Projects and their API keys, dashboard sign-outs, and the ingest rate buckets that every
process shares."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import delete, insert, select, update

from ingestlayer import clock
from ingestlayer.ids import new_id, new_key
from ingestlayer.store.base import Conflict, NotFound
from ingestlayer.store.notify import NotifyMixin
from ingestlayer.store.schema import api_keys, dashboard_signouts, projects, rate_buckets

# The column holds 200; a name is shown in tables, headings and log lines, where shorter is kinder.
MAX_PROJECT_NAME = 100


def project_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a project, or None. A name is how ``--project`` finds it and how
    the dashboard and the CLI show it: one line of visible text."""
    if not name.strip():
        return "must not be empty"
    if name != name.strip():
        return "must not start or end with spaces"
    if len(name) > MAX_PROJECT_NAME:
        return f"is {len(name)} characters; at most {MAX_PROJECT_NAME}"
    # C0 and C1 controls, DEL, and the Unicode line and paragraph separators.
    control = next((c for c in name if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in "\u2028\u2029"), None)
    if control is not None:
        return f"must be one line of text: it holds the control character U+{ord(control):04X}"
    return None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ProjectsMixin(NotifyMixin):
    """Projects and keys: who may use the store, and how fast."""

    async def create_project(self, name: str) -> tuple[str, str, str]:
        """Create a project; return (project_id, ingest_key, admin_key). Keys are shown once.
        A name :func:`project_name_problem` refuses is a ValueError."""
        problem = project_name_problem(name)
        if problem is not None:
            raise ValueError(f"the project name {problem}")
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
            await self._announce(conn, f"keys:{project_id}")

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
