"""Listings on a long history read the part of an index they list, not the project's whole
history: held by the plan (SQLite) and by the rows read (PostgreSQL), never by the clock."""

from __future__ import annotations

import secrets
import time

from ingestlayer.ids import encode_ulid, new_id
from ingestlayer.records import AttemptResult, NewDelivery, NewEvent
from ingestlayer.store.stats import DashboardStats
from ingestlayer.store.store import Store
from tests.support.query_plans import pg_rows_read, pg_rows_read_generic, sqlite_plan, statements_sent

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


async def test_the_delivery_logs_filtered_to_a_few_deliveries_read_their_attempts_only(db_url: str) -> None:
    # Dashboard → Webhooks → Logs filtered to "pending" (or "delivering", or a destination's
    # dead letters) walked the project's attempt log newest first, looking for attempts of such
    # deliveries: with none or few among them, every attempt the project keeps was read.
    store = Store.from_url(db_url)
    stats = DashboardStats(store.engines)
    try:
        pid = await _project_with_history(store, first_status="retrying")
        # Pending, never attempted: a tenth of the deliveries, so that a planner that counts
        # on their attempts being spread through the log expects a page within a few hundred.
        await _route(store, [_event_at(pid, time.time()) for _ in range(300)])
        if store.dialect == "postgresql":
            # As autovacuum keeps a real history: statistics, and no index entries left behind
            # by the updates that took the others from pending to delivered.
            async with store.engines.write.connect() as conn:
                auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await auto.exec_driver_sql("VACUUM ANALYZE")

        with statements_sent(store.engines.read) as sent:
            assert await stats.list_attempts(pid, status=["pending"]) == []
            retrying = await stats.list_attempts(pid, status=["retrying"], limit=600)
        assert sorted(a.delivery_id for a in retrying) == sorted(
            d["id"] for d in await store.list_deliveries(pid, status=["retrying"], limit=600)
        )
        assert [(a.started_at, a.id) for a in retrying] == sorted(
            ((a.started_at, a.id) for a in retrying), reverse=True
        )
        pending, _ = [s for s in sent if "FROM attempts JOIN deliveries" in s[0]]
        if store.dialect == "sqlite":
            plan = await sqlite_plan(store.engines.read, pending)
            assert not any("ix_attempts_project_started" in step for step in plan), plan
            assert any("ix_attempts_delivery_id_n (delivery_id=?)" in step for step in plan), plan
        else:
            # The 300 pending deliveries (twice: index, then table), not the 3,000 attempts.
            assert await pg_rows_read(store.engines.read, pending) <= 1000
        # Unfiltered, newest first as before.
        assert len(await stats.list_attempts(pid)) == 50
    finally:
        await store.close()


async def _route(store: Store, batch: list[NewEvent]) -> list[str]:
    await store.insert_events(batch)
    lease = await store.lease_route_jobs(len(batch), 60)
    deliveries = [
        NewDelivery(new_id("dlv"), e.project_id, e.id, e.type, "pip_x", "dst_x", "{}") for e in batch
    ]
    await store.complete_routing(lease, deliveries, {})
    return [d.id for d in deliveries]


async def _deliver(store: Store, batch: list[NewEvent], status: str) -> None:
    """Route the events to a delivery each and record one attempt each, ending in ``status``."""
    await _route(store, batch)
    leased = await store.lease_deliveries(len(batch), 60)
    assert len(leased) == len(batch)
    retry_at = time.time() + 3600 if status == "retrying" else None
    now = time.time()
    await store.record_attempts(
        [
            AttemptResult(d.id, d.project_id, d.lease_token, 1, now, 3.0, 500, "x", None, status, retry_at)
            for d in leased
        ]
    )


async def _project_with_history(store: Store, first_status: str = "delivered") -> str:
    """A project with destination ``dst_x`` and HISTORY events a minute apart, three days back,
    each delivered once (the first 500 ending ``first_status``); its id."""
    pid, _, _ = await store.create_project("acme")
    webhook = {"kind": "webhook.out", "config": {"settings": {"url": "https://example.com/h"}}}
    await store.apply_config(pid, [{"id": "dst_x", "name": "x", **webhook}], [])
    start = time.time() - 3 * 86400
    history = [_event_at(pid, start + 60 * i) for i in range(HISTORY)]
    for i in range(0, HISTORY, 500):
        await _deliver(store, history[i : i + 500], "delivered" if i else first_status)
    return pid


async def test_a_type_prefix_listing_walks_each_type_newest_first_on_sqlite(sqlite_url: str) -> None:
    # GET /v1/events?type=user.* (and `ingestlayer events --type 'user.*'`) read every event of
    # every matching type on SQLite and sorted them all for one page: a third of a project.
    store = Store.from_url(sqlite_url)
    try:
        pid, _, _ = await store.create_project("acme")
        start = time.time() - 3 * 86400
        kinds = ["user.signed_up", "page.viewed", "user.logged_in", "User.upper", "user_x"]
        history = [_event_at(pid, start + 60 * i) for i in range(HISTORY)]
        for i, e in enumerate(history):
            e.type = kinds[i % len(kinds)]
        for i in range(0, HISTORY, 500):
            await store.insert_events(history[i : i + 500])
        users = [e.id for e in reversed(history) if e.type.startswith("user.")]

        with statements_sent(store.engines.read) as sent:
            first = await store.list_events(pid, type_="user.*", limit=40)
        assert [e.id for e in first] == users[:40]
        for statement in sent:
            plan = await sqlite_plan(store.engines.read, statement)
            sorted_range = any("type>? AND type<?" in step for step in plan) and any(
                "TEMP B-TREE" in step for step in plan
            )
            assert not sorted_range, plan
        # Paged, and with a time window, as before.
        second = await store.list_events(pid, type_="user.*", before=first[-1].id, limit=40)
        assert [e.id for e in second] == users[40:80]
        since = history[1000].received_at
        window = await store.list_events(pid, type_="user.*", since=since, until=since + 600, limit=500)
        assert [e.id for e in window] == [
            e.id for e in reversed(history[1000:1010]) if e.type.startswith("user.")
        ]
        assert await store.list_events(pid, type_="nothing.*") == []
    finally:
        await store.close()


async def test_delivery_counts_read_an_index_range_per_status_on_a_reused_plan(pg_url: str) -> None:
    # The counts beside GET /v1/deliveries, the overview and the logs' and dead letters' filters:
    # on PostgreSQL, a prepared statement runs on one plan for any parameters from its sixth
    # execution on, and for "some status of some project" that plan read the whole deliveries
    # table, once per status counted (300 ms a page at 300,000 deliveries).
    store = Store.from_url(pg_url)
    try:
        pid = await _project_with_history(store)
        await _route(store, [_event_at(pid, time.time()) for _ in range(20)])
        async with store.engines.write.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await auto.exec_driver_sql("VACUUM ANALYZE")

        with statements_sent(store.engines.read) as sent:
            counts = await store.delivery_counts(pid, statuses=("pending", "dead"), destination_id="dst_x")
        assert counts == {"pending": 20}
        (counting,) = [s for s in sent if "count(*)" in s[0]]
        # The 20 pending (twice: index, then table), not the 3,020 deliveries.
        assert await pg_rows_read_generic(store.engines.read, counting) <= 100
    finally:
        await store.close()
