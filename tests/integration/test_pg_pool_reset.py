"""The hot path's pooled PostgreSQL connections go back to the pool without a reset round trip
(asyncpg's default sends ``... RESET ALL`` at every release, one more round trip per ingest
group), yet a transaction left open is still rolled back before the connection is used again."""

from __future__ import annotations

import time

from ingestlayer.ids import new_id
from ingestlayer.records import NewEvent
from ingestlayer.store.pg_hot import PgHotPath
from ingestlayer.store.store import Store


async def test_an_ingest_sends_its_statement_and_nothing_on_release(pg_url: str) -> None:
    store = Store.from_url(pg_url)
    try:
        project_id, _, _ = await store.create_project("acme")
        hot = store._hot
        assert isinstance(hot, PgHotPath)
        now = time.time()
        # The first ingest on a connection prepares its statement (asyncpg's type lookups).
        await store.insert_events([NewEvent(new_id("evt"), project_id, "a.b", "{}", None, "sdk", now, now)])
        sent: list[str] = []
        # One connection in the pool while nothing runs at once: the ingest below gets this one.
        async with hot.connection() as conn:
            conn.add_query_logger(lambda record: sent.append(record.query))
            pid = conn.get_server_pid()
        event = NewEvent(new_id("evt"), project_id, "a.b", '{"n": 1}', None, "sdk", now, now)
        (result,) = await store.insert_events([event])
        assert not result.duplicate
        async with hot.connection() as conn:
            assert conn.get_server_pid() == pid, "the pool handed out another connection"
        assert len(sent) == 1, sent
        assert "INSERT INTO events" in sent[0]
        assert await store.get_event(project_id, event.id) is not None
    finally:
        await store.close()


async def test_a_transaction_left_open_is_rolled_back_when_handed_back(pg_url: str) -> None:
    store = Store.from_url(pg_url)
    try:
        project_id, _, _ = await store.create_project("acme")
        hot = store._hot
        assert isinstance(hot, PgHotPath)
        async with hot.connection() as conn:
            await conn.execute("BEGIN")
            await conn.execute("UPDATE projects SET name = 'changed' WHERE id = $1", project_id)
        async with hot.connection() as conn:
            assert not conn.is_in_transaction()
            name = await conn.fetchval("SELECT name FROM projects WHERE id = $1", project_id)
        assert name == "acme"
    finally:
        await store.close()
