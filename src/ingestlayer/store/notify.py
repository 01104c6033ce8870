"""Signals between the processes on one database: waking a router and dispatcher for work
another process committed, and telling every process to drop what it cached of a change."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from ingestlayer.store.base import StoreBase
from ingestlayer.store.pg_hot import CHANGES_CHANNEL, DELIVER_CHANNEL, ROUTE_CHANNEL, PgHotPath

# What ``on_change`` is told when changes may have been missed: drop every cached key and secret.
EVERYTHING_CHANGED = "*"


class NotifyMixin(StoreBase):
    """LISTEN/NOTIFY on PostgreSQL; on SQLite, watching other connections' commits."""

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

            def missed() -> None:
                # Listening again after a gap: work committed meanwhile is looked for now rather
                # than at the next poll, and every cached key and secret is read afresh, since a
                # revocation told during the gap was not heard.
                for callback in (on_route, on_deliver):
                    if callback is not None:
                        callback()
                if on_change is not None:
                    on_change(EVERYTHING_CHANGED)

            await self._hot.listen(channels, stop, on_reconnect=missed)
        elif watch_commits and on_route is not None and on_deliver is not None:

            def wake() -> None:
                on_route()
                on_deliver()

            await self._hot.watch_commits(wake, stop)

    async def _announce(self, conn: AsyncConnection, change: str) -> None:
        """Tell every process on this PostgreSQL database, when ``conn``'s transaction commits,
        to drop what it cached of ``change``: "keys:<project id>", or "secrets:<project id>". Processes on
        one SQLite file wait out their caches instead (seconds; docs/configuration.md)."""
        if self.dialect == "postgresql":
            await conn.execute(select(func.pg_notify(CHANGES_CHANNEL, change)))
