"""What clients get while the database is unavailable: a 503 in the usual JSON shape with
``Retry-After``, never a plain-text 500 (seen while PostgreSQL was stopped: once the key cache
expired, every ingest request was a 500, and every admin route too). The outage is injected at
the store; the server, its routes and the HTTP client are real."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc

from ingestlayer import metrics
from ingestlayer.api.errors import DATABASE_UNAVAILABLE, unavailable_error
from ingestlayer.store.conditions import storage_condition
from ingestlayer.store.group_commit import SHUTTING_DOWN
from ingestlayer.store.store import Store
from tests.support.api import error_of
from tests.support.dashboard_client import Browser, signed_in
from tests.support.server import RunningServer, start_server, wait_for


def down(exc: BaseException) -> Any:
    async def call(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    return call


async def post(server: RunningServer, key: str, body: dict[str, Any]) -> tuple[int, Any, str | None]:
    async with server.session.post(
        server.url + "/v1/events", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers.get("Retry-After")


async def test_ingest_with_a_key_not_cached_is_a_503_while_the_database_is_down(srv: RunningServer) -> None:
    _, key, _ = await srv.runtime.store.create_project("second")  # not in the key cache yet
    srv.runtime.store.resolve_key = down(ConnectionRefusedError(111, "Connect call failed"))  # type: ignore[method-assign]
    status, body, retry_after = await post(srv, key, {"type": "a.b", "payload": {}})
    assert status == 503 and retry_after == "1", body
    assert error_of(body)["code"] == "unavailable"
    assert "database unavailable" in error_of(body)["message"]


async def test_admin_routes_are_a_503_while_the_database_is_down(
    srv: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    shutting_down = Exception("the database system is shutting down")
    outage = sqlalchemy.exc.OperationalError("SELECT v FROM t WHERE k = ?", ("hunter2",), shutting_down)
    srv.runtime.store.list_deliveries = down(outage)  # type: ignore[method-assign]
    async with srv.session.get(srv.url + "/v1/deliveries", headers=srv.auth()) as resp:
        assert resp.status == 503 and resp.headers.get("Retry-After") == "1"
        assert resp.headers["Content-Type"].startswith("application/json")
        assert error_of(await resp.json())["code"] == "unavailable"
    # One line, naming the cause; never the statement's parameters.
    (line,) = [r.getMessage() for r in caplog.records if "database unavailable" in r.getMessage()]
    assert "shutting down" in line and "hunter2" not in line


async def test_a_full_disk_is_named_and_retried_later_than_an_outage(srv: RunningServer) -> None:
    # SQLite's words, and PostgreSQL's (SQLSTATE 53100, through SQLAlchemy's wrapper).
    pg_full = Exception('could not extend file "base/16384/16400": No space left on device')
    for error in (
        sqlite3.OperationalError("database or disk is full"),
        sqlalchemy.exc.OperationalError("INSERT INTO events ...", ("hunter2",), pg_full),
    ):

        async def full(*_args: Any, error: Exception = error, **_kwargs: Any) -> Any:
            raise error

        srv.runtime.committer._insert = full  # type: ignore[assignment]
        status, body, retry_after = await post(srv, srv.ingest_key, {"type": "a.b", "payload": {}})
        # A full disk does not clear in a second: asking every client back each second only adds load.
        assert status == 503 and retry_after == "30", body
        assert "(the database's disk is full)" in error_of(body)["message"], body
        assert "hunter2" not in str(body)


def test_the_cli_names_a_full_disk() -> None:
    from ingestlayer.cli import database_problem

    assert database_problem(sqlite3.OperationalError("database or disk is full")) == (
        "the database's disk is full: free space where the database is kept, then try again"
    )


async def test_a_database_file_become_read_only_is_named(srv: RunningServer) -> None:
    async def read_only(*_args: Any, **_kwargs: Any) -> Any:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    srv.runtime.committer._insert = read_only  # type: ignore[assignment]
    status, body, _ = await post(srv, srv.ingest_key, {"type": "a.b", "payload": {}})
    assert status == 503 and "the database file has become read-only" in error_of(body)["message"], body


# PostgreSQL's full disk (SQLSTATE 53100), raised for real by the server itself.
_DISK_FULL = (
    "DO $$ BEGIN RAISE EXCEPTION 'could not extend file \"base/1/2\": No space left on device' "
    "USING ERRCODE = '53100'; END $$"
)


async def raised_both_ways(pg_url: str, statement: str) -> tuple[Exception, Exception]:
    """What ``statement`` raises through the store's engine (SQLAlchemy) and on a plain asyncpg
    connection (as the hot path's pool has it): the server raises it for real each time."""
    store = Store.from_url(pg_url)
    try:
        with pytest.raises(Exception) as through_engine:
            async with store.engines.write.connect() as conn:
                await conn.exec_driver_sql(statement)
    finally:
        await store.close()
    plain = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        with pytest.raises(Exception) as direct:
            await plain.execute(statement)
    finally:
        await plain.close()
    return through_engine.value, direct.value


async def test_postgresqls_full_disk_is_the_outage_sqlites_is(pg_url: str) -> None:
    """SQLAlchemy raised PostgreSQL's full disk as a plain DBAPIError, which every handler of a
    database that cannot be used passed over: management routes answered 500, each ingest group
    logged a traceback. It is an OperationalError now, as SQLite's is, and the hot path's own
    asyncpg error is one of DATABASE_UNAVAILABLE."""
    through_engine, direct = await raised_both_ways(pg_url, _DISK_FULL)
    assert isinstance(through_engine, sqlalchemy.exc.OperationalError)
    assert isinstance(through_engine, DATABASE_UNAVAILABLE)
    assert storage_condition(through_engine) == "disk_full"
    assert unavailable_error(through_engine, "x").headers == {"Retry-After": "30"}
    assert isinstance(direct, asyncpg.exceptions.DiskFullError)
    assert isinstance(direct, DATABASE_UNAVAILABLE)


async def database_admin(pg_url: str) -> tuple[asyncpg.Connection, str]:
    """A connection of the test's own beside the server's, and the test database's name."""
    admin = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    return admin, await admin.fetchval("SELECT current_database()")


async def end_sessions(admin: asyncpg.Connection, database: str) -> None:
    """End every other session on ``database`` (new ones take its settings)."""
    await admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )


@pytest.mark.parametrize(
    ("sqlstate", "what"),
    [
        ("53300", "too many connections"),
        ("57014", "canceling statement due to statement timeout"),
        ("25006", "cannot execute INSERT in a read-only transaction"),
        ("55000", "database is not accepting connections"),
        ("57P01", "terminating connection due to administrator command"),
    ],
)
async def test_postgresql_that_cannot_serve_now_is_an_outage_not_a_bug(
    pg_url: str, sqlstate: str, what: str
) -> None:
    """Too many connections, a statement timeout, a read-only failover, a database not taking
    connections: SQLAlchemy raised each as a plain DBAPIError, so management routes answered 500,
    ingest logged tracebacks, and the worker dropped the outcomes it could not record (and sent
    those deliveries again). Raised for real by the server, through both of the store's paths."""
    raise_it = f"DO $$ BEGIN RAISE EXCEPTION '{what}' USING ERRCODE = '{sqlstate}'; END $$"
    through_engine, direct = await raised_both_ways(pg_url, raise_it)
    assert isinstance(through_engine, sqlalchemy.exc.OperationalError)
    assert isinstance(through_engine, DATABASE_UNAVAILABLE)
    assert isinstance(direct, asyncpg.PostgresError)
    assert isinstance(direct, DATABASE_UNAVAILABLE)


async def test_a_statement_timeout_under_a_lock_is_a_503(pg_url: str) -> None:
    """An operator's statement_timeout, met while another session holds a lock on the table: the
    listing was a plain-text 500."""
    admin, database = await database_admin(pg_url)
    await admin.execute(f'ALTER DATABASE "{database}" SET statement_timeout = 300')
    server = await start_server(pg_url)
    locker = await asyncpg.connect(pg_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await locker.execute("BEGIN; LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
        async with server.session.get(server.url + "/v1/deliveries", headers=server.auth()) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 503, body
            assert resp.headers["Retry-After"]
    finally:
        await locker.close()
        await server.stop()
        await admin.execute(f'ALTER DATABASE "{database}" RESET statement_timeout')
        await admin.close()


async def test_readyz_is_a_503_while_postgresql_takes_no_writes(pg_url: str) -> None:
    """A database set read-only (a failover under way) answered /readyz 200 while every ingest
    was a 503: a load balancer kept sending events to a process that could store none."""
    admin, database = await database_admin(pg_url)
    server = await start_server(pg_url)
    try:
        async with server.session.get(server.url + "/readyz") as resp:
            assert resp.status == 200
        await admin.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        await end_sessions(admin, database)
        async with server.session.get(server.url + "/readyz") as resp:
            assert resp.status == 503, await resp.text()
        status, _, retry_after = await post(server, server.ingest_key, {"type": "a.b", "payload": {}})
        assert status == 503 and retry_after
        await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await end_sessions(admin, database)

        async def ready() -> bool:
            async with server.session.get(server.url + "/readyz") as resp:
                return resp.status == 200

        await wait_for(ready)
    finally:
        await server.stop()
        await admin.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        await admin.close()


async def test_a_full_disk_under_ingest_is_a_503_and_one_line_in_the_log(
    srv: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Each ingest group that met PostgreSQL's full disk logged a traceback and was stored
    again request by request."""
    full = asyncpg.exceptions.DiskFullError('could not extend file "base/1/2": No space left on device')
    srv.runtime.committer._insert = down(full)  # type: ignore[assignment]
    caplog.clear()
    answers = await asyncio.gather(
        *(post(srv, srv.ingest_key, {"type": "a.b", "payload": {}}) for _ in range(6))
    )
    assert {(status, retry_after) for status, _, retry_after in answers} == {(503, "30")}
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


async def test_other_errors_stay_500(srv: RunningServer) -> None:
    srv.runtime.store.list_deliveries = down(ValueError("a bug"))  # type: ignore[method-assign]
    async with srv.session.get(srv.url + "/v1/deliveries", headers=srv.auth()) as resp:
        assert resp.status == 500
    refused = sqlalchemy.exc.DBAPIError("SELECT ...", (), Exception("division by zero"))
    srv.runtime.store.list_deliveries = down(refused)  # type: ignore[method-assign]
    async with srv.session.get(srv.url + "/v1/deliveries", headers=srv.auth()) as resp:
        assert resp.status == 500


def unavailable_counts() -> dict[str, float]:
    return {r: metrics.UNAVAILABLE.labels(reason=r)._value.get() for r in metrics.UNAVAILABLE_REASONS}


async def test_requests_refused_for_the_database_are_counted_by_reason(srv: RunningServer) -> None:
    """An operator alerts on ingest refused (a full disk, a database away) from /metrics: it used
    to show only in the logs and to the clients. A signed-ingress event refused for a full disk
    now says so too, as /v1/events does."""
    status, source = await srv.request("POST", "/v1/sources", json={"name": "forms", "verify": "none"})
    assert status == 201, source
    before = unavailable_counts()

    async def full(*_args: Any, **_kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    srv.runtime.committer._insert = full  # type: ignore[assignment]
    status, _, _ = await post(srv, srv.ingest_key, {"type": "a.b", "payload": {}})
    assert status == 503
    async with srv.session.post(srv.url + source["ingress_path"], data=b'{"type":"submitted"}') as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 503 and resp.headers["Retry-After"] == "30", body
    assert "(the database's disk is full)" in error_of(body)["message"], body
    srv.runtime.store.list_deliveries = down(  # type: ignore[method-assign]
        sqlalchemy.exc.OperationalError("SELECT 1", (), Exception("the database system is shutting down"))
    )
    async with srv.session.get(srv.url + "/v1/deliveries", headers=srv.auth()) as resp:
        assert resp.status == 503

    srv.runtime.committer._closing = True  # as at the start of a shutdown
    status, body, _ = await post(srv, srv.ingest_key, {"type": "a.b", "payload": {}})
    assert status == 503 and f"was not stored: {SHUTTING_DOWN}" in error_of(body)["message"], body

    after = unavailable_counts()
    assert {r: after[r] - before[r] for r in after} == {
        "database": 1,
        "disk_full": 2,
        "read_only": 0,
        "sync_failed": 0,
        "file_moved": 0,
        "shutting_down": 1,
    }
    async with srv.session.get(srv.url + "/metrics") as resp:
        text = await resp.text()
    assert 'ingestlayer_requests_unavailable_total{reason="disk_full"}' in text


async def test_a_process_holds_no_more_connections_than_its_pool_size_allows(pg_url: str) -> None:
    """Each process held up to 31 connections, with no setting to bound them: three or four busy
    processes took all of PostgreSQL's 100, and a role's connection limit starved the worker.
    INGESTLAYER_DATABASE_POOL_SIZE=2: at most 3 x 2 + 1 (LISTEN), however many requests at once."""
    admin, database = await database_admin(pg_url)
    server = await start_server(pg_url, database_pool_size=2)
    try:
        most = 0

        async def count() -> None:
            nonlocal most
            while True:
                n = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database,
                )
                most = max(most, n)
                await asyncio.sleep(0.01)

        counting = asyncio.create_task(count())
        try:
            answers = await asyncio.gather(
                *(post(server, server.ingest_key, {"type": "a.b", "payload": {"i": i}}) for i in range(30)),
                *(server.request("GET", "/v1/deliveries") for _ in range(30)),
                *(server.request("GET", "/v1/events") for _ in range(30)),
            )
        finally:
            counting.cancel()
        assert [a[0] for a in answers[:30]] == [202] * 30
        assert {a[0] for a in answers[30:]} == {200}
        assert 0 < most <= 7, most
    finally:
        await server.stop()
        await admin.close()


async def test_a_browser_gets_a_page_not_json_while_the_database_is_down(srv: RunningServer) -> None:
    """The dashboard's pages and forms answered the API's JSON 503 to a browser, shown as raw
    text; now the dashboard's error page, with the same reason and Retry-After. API clients
    keep the JSON."""
    browser = await signed_in(Browser(srv.url), srv)
    outage = sqlalchemy.exc.OperationalError(
        "SELECT 1", (), sqlite3.OperationalError("database or disk is full")
    )
    srv.runtime.store.get_event = down(outage)  # type: ignore[method-assign]
    srv.runtime.store.sign_out = down(outage)  # type: ignore[method-assign]
    html = {"Accept": "text/html,application/xhtml+xml"}
    try:
        async with browser.session.get(srv.url + "/events/evt_0", headers=html) as resp:
            page = await resp.text()
            assert resp.status == 503 and resp.headers["Retry-After"] == "30", page
            assert resp.headers["Content-Type"].startswith("text/html")
            assert "<h1>Unavailable</h1>" in page and "the database&#39;s disk is full" in page, page
        form = {"csrf": browser.csrf}
        async with browser.session.post(srv.url + "/logout", data=form, headers=html) as resp:
            assert resp.status == 503 and resp.headers["Content-Type"].startswith("text/html")
            assert "the database&#39;s disk is full" in await resp.text()
        async with browser.session.get(srv.url + "/events/evt_0") as resp:  # no text/html: JSON
            assert resp.status == 503 and resp.headers["Content-Type"].startswith("application/json")
    finally:
        await browser.close()
