"""PostgreSQL ends a session just after an ingest committed: the events were stored, so the
request must be answered as stored, not with a 503 that makes the sender store them again."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg

from ingestlayer.ids import new_id
from ingestlayer.records import NewEvent
from ingestlayer.store.pg_hot import PgHotPath
from ingestlayer.store.store import Store
from tests.support.freezing_proxy import FreezingProxy
from tests.support.server import wait_for


async def test_a_session_ended_after_the_commit_does_not_fail_the_ingest(pg_url: str) -> None:
    store = Store.from_url(pg_url)
    killer = await asyncpg.connect(pg_url)
    try:
        project_id, _, _ = await store.create_project("acme")
        hot = store._hot
        assert isinstance(hot, PgHotPath)
        pool = await hot.pool()
        ended: list[int] = []

        class EndedAfterCommit:
            """The pool, but the server ends each session just before it is handed back: what an
            operator's pg_terminate_backend (or a failover) does between our COMMIT and
            asyncpg's reset of the connection."""

            async def acquire(self) -> Any:
                return await pool.acquire()

            async def release(self, conn: Any) -> None:
                pid = conn.get_server_pid()
                await killer.execute("SELECT pg_terminate_backend($1)", pid)
                ended.append(pid)
                await pool.release(conn)

        real_pool = hot.pool

        async def ending_pool() -> Any:
            return EndedAfterCommit()

        hot.pool = ending_pool  # type: ignore[method-assign]
        now = time.time()
        events = [
            NewEvent(new_id("evt"), project_id, "a.b", f'{{"n": {i}}}', None, "sdk", now, now)
            for i in range(3)
        ]
        results = await store.insert_events(events)
        hot.pool = real_pool  # type: ignore[method-assign]
        assert ended, "the session was not ended"
        assert [r.id for r in results] == [e.id for e in events]
        assert not any(r.duplicate for r in results)
        for e in events:
            assert await store.get_event(project_id, e.id) is not None
        # The pool goes on with fresh connections.
        (again,) = await store.insert_events(
            [NewEvent(new_id("evt"), project_id, "a.b", "{}", None, "sdk", now, now)]
        )
        assert await store.get_event(project_id, again.id) is not None
    finally:
        await killer.close()
        await store.close()


async def test_a_session_ended_while_idle_in_the_pool_does_not_fail_the_next_ingest(pg_url: str) -> None:
    """The server ends a pooled session while it is idle (an operator's pg_terminate_backend, a
    restart): its FATAL message has arrived, its socket is not yet closed, and the pool hands it
    out to the next ingest. The proxy holds that moment still."""
    proxy = await FreezingProxy.to(pg_url)
    store = Store.from_url(proxy.url(pg_url))
    killer = await asyncpg.connect(pg_url)
    try:
        project_id, _, _ = await store.create_project("acme")
        now = time.time()

        def event() -> NewEvent:
            return NewEvent(new_id("evt"), project_id, "a.b", "{}", None, "sdk", now, now)

        await store.insert_events([event()])
        hot = store._hot
        assert isinstance(hot, PgHotPath)
        async with hot.connection() as conn:  # the pool's idle connection: the one just used
            pid = conn.get_server_pid()
        proxy.hold_closes()
        accepted = proxy.accepted
        await killer.execute("SELECT pg_terminate_backend($1)", pid)

        async def server_closed() -> bool:
            return proxy.closed_by_server == 1

        await wait_for(server_closed)
        await asyncio.sleep(0.2)  # the client reads the FATAL; its socket stays open

        (stored,) = await store.insert_events([event()])

        assert await store.get_event(project_id, stored.id) is not None
        assert not stored.duplicate
        assert proxy.accepted == accepted + 1, "the ingest did not open a connection in its place"
    finally:
        proxy.release_closes()
        await killer.close()
        await store.close()
        await proxy.close()
