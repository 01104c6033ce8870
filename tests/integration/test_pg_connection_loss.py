"""PostgreSQL ends a session just after an ingest committed: the events were stored, so the
request must be answered as stored, not with a 503 that makes the sender store them again."""

from __future__ import annotations

import time
from typing import Any

import asyncpg

from ingestlayer.ids import new_id
from ingestlayer.records import NewEvent
from ingestlayer.store.pg_hot import PgHotPath
from ingestlayer.store.store import Store


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
