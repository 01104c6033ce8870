"""Listings on a long history read the part of an index they list, not the project's whole
history: held by the plan (SQLite) and by the rows read (PostgreSQL), never by the clock."""

from __future__ import annotations

import secrets
import time

from ingestlayer.ids import encode_ulid
from ingestlayer.records import NewEvent
from ingestlayer.store.store import Store
from tests.support.query_plans import pg_rows_read, sqlite_plan, statements_sent

HISTORY = 3000  # events, one a minute: two days of history


def _event_at(project_id: str, t: float) -> NewEvent:
    """An event as ingest stores it: its id is the ULID of when it was received."""
    eid = f"evt_{encode_ulid((int(t * 1000) << 80) | secrets.randbits(79))}"
    return NewEvent(eid, project_id, "page.viewed", "{}", None, "api", t, t)


async def test_an_event_time_window_reads_only_its_stretch_of_the_project(db_url: str) -> None:
    # GET /v1/events?since=…&until=… (and `ingestlayer events --since/--until`) walked the
    # project's events newest first, checking received_at, which has no index: a window days
    # back, or one with nothing in it, read every event the project keeps.
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("acme")
        start = time.time() - 3 * 86400
        history = [_event_at(pid, start + 60 * i) for i in range(HISTORY)]
        for i in range(0, HISTORY, 500):
            await store.insert_events(history[i : i + 500])
        # A stretch an hour long, a day back: exactly its events, newest first.
        since, until = start + 60 * 1000 - 0.5, start + 60 * 1060 - 0.5
        window = await store.list_events(pid, since=since, until=until, limit=500)
        assert [e.id for e in window] == [e.id for e in reversed(history[1000:1060])]

        with statements_sent(store.engines.read) as sent:
            assert await store.list_events(pid, since=time.time() + 3600) == []
            assert len(await store.list_events(pid, until=start + 60 * 100 - 0.5)) == 50
        future, old = [s for s in sent if "FROM events" in s[0]]
        if store.dialect == "sqlite":
            for statement in (future, old):
                plan = await sqlite_plan(store.engines.read, statement)
                assert any("ix_events_project_id_id (project_id=? AND id" in step for step in plan), plan
        else:
            # Nothing after "since": no more than the events received in the margin around it.
            assert await pg_rows_read(store.engines.read, future) <= 10
            # 50 before "until", 100 minutes in: those 50, not the 2,900 received after.
            assert await pg_rows_read(store.engines.read, old) <= 100
    finally:
        await store.close()
