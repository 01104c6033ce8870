"""Gaps the other CLI and storage tests leave open, checked as a user or an operator would.

- API keys and secrets at rest: the raw rows of every table hold neither a key nor a secret's
  value, yet the keys authenticate and the secrets sign deliveries (a fresh server, both databases).
- ``ingestlayer migrate``: builds a fresh SQLite file or PostgreSQL database, is a no-op the second
  time, and a bad ``--database-url`` is a one-line error.
- ``ingestlayer serve --host --port``: answers ``/readyz`` on that port and exits 0 on SIGTERM.
- ``ingestlayer replay`` with no delivery id: dead deliveries by default, ``--destination`` narrows.
- ``ingestlayer secrets set --url --key``: stored on the server, never echoed, wrong key refused.

The CLI runs as users run it: the installed entry point, in a subprocess, every wait bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from sqlalchemy import inspect, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from ingestlayer.ids import new_id
from ingestlayer.records import NewDelivery, NewEvent
from ingestlayer.store.db import async_url
from ingestlayer.store.migrate import current_head
from ingestlayer.store.schema import metadata
from ingestlayer.store.store import Store
from ingestlayer.urlmask import MASK
from tests.support.cli import CLI, at_once, cli, cli_env, ok, one_line_error
from tests.support.databases import PG_URL, require_pg
from tests.support.processes import free_port
from tests.support.receiver import Receiver
from tests.support.server import TEST_SECRET_KEY, RunningServer, start_server, wait_for

SERVE_READY_TIMEOUT = 30.0


async def deliveries_of(server: RunningServer, **query: str) -> list[dict[str, Any]]:
    q = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = await server.request("GET", f"/v1/deliveries?limit=500&{q}")
    assert status == 200, body
    data: list[dict[str, Any]] = body["data"]
    return data


async def status_counts(server: RunningServer) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in await deliveries_of(server):
        out[d["status"]] = out.get(d["status"], 0) + 1
    return out


async def attempt_codes(server: RunningServer, delivery_id: str) -> list[int | None]:
    status, body = await server.request("GET", f"/v1/deliveries/{delivery_id}")
    assert status == 200, body
    return [a["status_code"] for a in body["attempts"]]


# ---- 1. keys hashed, secrets encrypted, at rest ----------------------------------------------------


async def raw_rows(db_url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table of the schema, as stored."""
    engine = create_async_engine(async_url(db_url))
    try:
        async with engine.connect() as conn:
            return {
                t.name: [dict(r._mapping) for r in await conn.execute(select(t))]
                for t in metadata.sorted_tables
            }
    finally:
        await engine.dispose()


def found_in(rows: dict[str, list[dict[str, Any]]], needle: str) -> list[tuple[str, str]]:
    """(table, column) of every stored value containing ``needle`` (text or bytes)."""
    hits: list[tuple[str, str]] = []
    for table, table_rows in rows.items():
        for row in table_rows:
            for column, value in row.items():
                if isinstance(value, (bytes, bytearray, memoryview)):
                    haystack = bytes(value).decode("latin-1")
                else:
                    haystack = str(value)
                if needle in haystack:
                    hits.append((table, column))
    return hits


def webhook_pipeline(name: str, url: str, secret_ref: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": {"match": ["order.*"]},
        "destinations": [
            {
                "webhook.out": {"url": url, "auth": "hmac", "secret": secret_ref},
                "retry": {"schedule": [0], "jitter": 0},
            }
        ],
    }


async def test_api_keys_are_stored_hashed_and_secrets_encrypted(
    db_url: str, receiver: Receiver, tmp_path: Path
) -> None:
    api_secret = f"api-set-secret-{uuid.uuid4().hex}"
    cli_secret = f"cli-set-secret-{uuid.uuid4().hex}"
    first = await start_server(db_url)
    try:
        status, extra = await first.request("POST", "/v1/keys", json={"kind": "admin", "name": "ops"})
        assert status == 201, extra
        await first.set_secret("api-hooks", api_secret)
    finally:
        await first.stop()
    # The other way to set a secret: the CLI on the database (its own encryption path).
    run = ok(await cli("secrets", "set", "cli-hooks", cwd=tmp_path, db_url=db_url, stdin=cli_secret.encode()))
    assert cli_secret not in run.out + run.err

    keys = [first.ingest_key, first.admin_key, extra["key"]]
    rows = await raw_rows(db_url)
    # What was read is the real data, not an empty database.
    assert [p["name"] for p in rows["projects"]] == ["acme"]
    assert len(rows["api_keys"]) == 3
    assert sorted(s["name"] for s in rows["secrets"]) == ["api-hooks", "cli-hooks"]
    assert all(s["ciphertext"] for s in rows["secrets"])

    for key in keys:
        random_part = key.split("_", 2)[2]  # il_<kind>_<random>: the part that makes it a secret
        assert len(random_part) >= 40, key
        assert found_in(rows, key) == [], f"an API key is stored in plaintext: {found_in(rows, key)}"
        assert found_in(rows, random_part) == [], f"an API key is stored: {found_in(rows, random_part)}"
    for value in (api_secret, cli_secret):
        assert found_in(rows, value) == [], f"a secret is stored in plaintext: {found_in(rows, value)}"
    assert found_in(rows, TEST_SECRET_KEY) == [], "the master key is stored in the database"

    # A fresh server (nothing cached) on the same database: the keys still authenticate and
    # the secrets still decrypt, since deliveries are signed with their plaintext values.
    second = await start_server(db_url, project="other")
    try:
        document = {
            "pipelines": [
                webhook_pipeline("via-api", receiver.url + "/api", "ref:api-hooks"),
                webhook_pipeline("via-cli", receiver.url + "/cli", "ref:cli-hooks"),
            ]
        }
        status, body = await second.request(
            "POST", "/v1/apply", key=first.admin_key, json={"document": document}
        )
        assert status == 200, body
        status, body = await second.request("GET", "/v1/secrets", key=extra["key"])
        assert (status, body) == (200, {"data": [{"name": "api-hooks"}, {"name": "cli-hooks"}]})
        status, event = await second.request(
            "POST", "/v1/events", key=first.ingest_key, json={"type": "order.placed", "payload": {"n": 1}}
        )
        assert status == 202, event
        status, body = await second.request("GET", "/v1/secrets", key="il_admin_" + "x" * 43)
        assert status == 401, body

        await wait_for(lambda: _arrived(receiver, 2))
        by_path = {r.path: r for r in receiver.requests}
        assert by_path["/api"].verify(api_secret)["id"] == event["id"]
        assert by_path["/cli"].verify(cli_secret)["id"] == event["id"]
    finally:
        await second.stop()


async def _arrived(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n


# ---- 2. ingestlayer migrate --------------------------------------------------------------------------


async def schema_state(db_url: str) -> tuple[set[str], list[str]]:
    """The tables of the database and the Alembic revision(s) it records."""
    engine = create_async_engine(async_url(db_url))
    try:
        async with engine.connect() as conn:
            tables = set(await conn.run_sync(lambda c: inspect(c).get_table_names()))
            versions: list[str] = []
            if "alembic_version" in tables:
                versions = list(
                    (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalars()
                )
            return tables, versions
    finally:
        await engine.dispose()


async def check_migrate_twice(db_url: str, cwd: Path) -> None:
    """migrate builds the schema; after data is added, migrate again is a no-op keeping it."""
    run = ok(await cli("migrate", "--database-url", db_url, cwd=cwd))
    assert "database is up to date" in run.out
    tables, versions = await schema_state(db_url)
    expected = {t.name for t in metadata.sorted_tables}
    assert expected <= tables, f"missing tables: {expected - tables}"
    assert versions == [current_head()]

    ok(await cli("init", "--name", "kept", "--database-url", db_url, cwd=cwd))
    run = ok(await cli("migrate", "--database-url", db_url, cwd=cwd))
    assert "database is up to date" in run.out
    assert await schema_state(db_url) == (tables, versions)
    store = Store.from_url(db_url)
    try:
        assert [p["name"] for p in await store.list_projects()] == ["kept"]
    finally:
        await store.close()
    # The commands used the URL given, not a default database in the working directory.
    assert not (cwd / "ingestlayer.db").exists()


async def test_migrate_builds_a_fresh_sqlite_file_and_is_idempotent(tmp_path: Path) -> None:
    db_file = tmp_path / "data" / "fresh.db"
    db_file.parent.mkdir()
    assert not db_file.exists()
    await check_migrate_twice(f"sqlite:///{db_file}", tmp_path)
    assert db_file.exists()


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture
def empty_pg_url() -> Iterator[str]:
    """A PostgreSQL database that exists but was never migrated; dropped afterwards."""
    require_pg()
    name = f"il_t_empty_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{PG_URL.rsplit('/', 1)[0]}/{name}"
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def test_migrate_builds_a_fresh_postgres_database_and_is_idempotent(
    empty_pg_url: str, tmp_path: Path
) -> None:
    tables, versions = await schema_state(empty_pg_url)
    assert tables == set() and versions == []
    await check_migrate_twice(empty_pg_url, tmp_path)


async def test_migrate_on_an_already_migrated_postgres_database_is_a_no_op(
    pg_url: str, tmp_path: Path
) -> None:
    before = await schema_state(pg_url)
    assert before[1] == [current_head()]
    # Through INGESTLAYER_DATABASE_URL this time, as a deployment would run it.
    run = ok(await cli("migrate", cwd=tmp_path, db_url=pg_url))
    assert "database is up to date" in run.out
    assert await schema_state(pg_url) == before


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("mysql://user@db.example/app", ("must be sqlite:///PATH or postgresql://",)),
        ("not a database url", ("must be sqlite:///PATH or postgresql://",)),
        # Nothing listens on port 9; the password is never printed.
        (
            "postgresql://postgres:hunter2@127.0.0.1:9/nowhere",
            (f"cannot open the database at postgresql://postgres:{MASK}@127.0.0.1:9/nowhere: ",),
        ),
    ],
)
async def test_migrate_with_a_bad_database_url_is_a_one_line_error(
    tmp_path: Path, url: str, words: tuple[str, ...]
) -> None:
    run = await cli("migrate", "--database-url", url, cwd=tmp_path)
    one_line_error(run, *words)
    assert "up to date" not in run.out and "hunter2" not in run.err
    # No fallback to the default ./ingestlayer.db.
    assert not (tmp_path / "ingestlayer.db").exists()


# ---- 3. ingestlayer serve --host --port ------------------------------------------------------------


async def test_serve_answers_readyz_on_the_given_port_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    db_file = tmp_path / "serve.db"  # does not exist yet: serve migrates it
    key_file = tmp_path / "keys" / "master.key"
    log_path = tmp_path / "serve.log"
    async with aiohttp.ClientSession() as session:
        for attempt in range(3):
            port = free_port()
            env = cli_env(
                secret_key=None,  # the master key comes from the key file, created on first run
                INGESTLAYER_SECRET_KEY_FILE=str(key_file),
                # The flag wins over the environment: this port must stay unused.
                INGESTLAYER_PORT=str(free_port()),
                INGESTLAYER_SHUTDOWN_GRACE_SECONDS="2",
                PYTHONUNBUFFERED="1",
            )
            with log_path.open("wb") as log:
                proc = await asyncio.create_subprocess_exec(
                    CLI,
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--database-url",
                    f"sqlite:///{db_file}",
                    cwd=tmp_path,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            try:
                ready = await _wait_ready(session, proc, f"http://127.0.0.1:{port}/readyz", log_path)
                if ready is None:  # the port was taken between our check and its bind
                    assert attempt < 2, read_log(log_path)
                    continue
                assert ready == {"status": "ready"}
                assert f"serving on http://127.0.0.1:{port}" in read_log(log_path)
                assert db_file.exists()
                assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
                assert not (tmp_path / "ingestlayer.key").exists()
                assert not (tmp_path / "ingestlayer.db").exists()

                proc.send_signal(signal.SIGTERM)
                try:
                    code = await asyncio.wait_for(proc.wait(), 15)
                except TimeoutError:
                    raise AssertionError(
                        f"serve still running 15 s after SIGTERM:\n{read_log(log_path)}"
                    ) from None
                assert code == 0, f"exit {code} after SIGTERM:\n{read_log(log_path)}"
                assert "Traceback" not in read_log(log_path)
                return
            finally:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await asyncio.wait_for(proc.wait(), 10)


def read_log(path: Path) -> str:
    return path.read_text(errors="replace")


async def _wait_ready(
    session: aiohttp.ClientSession, proc: asyncio.subprocess.Process, url: str, log_path: Path
) -> Any:
    """The /readyz body once it answers 200; None if the process died of a taken port."""
    deadline = time.monotonic() + SERVE_READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            log = read_log(log_path)
            if "address already in use" in log.lower():
                return None
            raise AssertionError(f"serve exited {proc.returncode} while starting:\n{log}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                if resp.status == 200:
                    return orjson.loads(await resp.read())
        await asyncio.sleep(0.05)
    raise AssertionError(f"serve not ready within {SERVE_READY_TIMEOUT}s:\n{read_log(log_path)}")


# ---- 4. bulk replay ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["local", "remote"])
async def test_bulk_replay_replays_dead_deliveries_and_narrows_by_destination(
    mode: str, tmp_path: Path, sqlite_url: str, receiver: Receiver
) -> None:
    server = await start_server(sqlite_url, poll_interval=0.02)
    where: dict[str, Any] = {"db_url": sqlite_url} if mode == "local" else {}
    remote = ("--url", server.url, "--key", server.admin_key) if mode == "remote" else ()
    try:
        # Two pipelines, one destination each; one attempt only, so a failure is dead at once.
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": name,
                        "source": {"match": ["order.*"]},
                        "destinations": [
                            {
                                "webhook.out": {"url": f"{receiver.url}/{name}"},
                                "retry": {"schedule": [0], "jitter": 0},
                            }
                        ],
                    }
                    for name in ("orders-a", "orders-b")
                ]
            }
        )
        # The receiver fails the first four requests (two events x two destinations), then succeeds.
        receiver.fail_times(4, status=503)
        for n in (1, 2):
            assert (await server.ingest("order.placed", {"n": n}))[0] == 202
        await wait_for(lambda: _counts_are(server, {"dead": 4}))
        # A third event is delivered at once: replaying "dead" must leave it alone.
        assert (await server.ingest("order.placed", {"n": 3}))[0] == 202
        await wait_for(lambda: _counts_are(server, {"dead": 4, "delivered": 2}))
        dead = await deliveries_of(server, status="dead")
        a_ids = {d["id"] for d in dead if d["destination"] == "orders-a/webhook.out"}
        b_ids = {d["id"] for d in dead if d["destination"] == "orders-b/webhook.out"}
        assert len(a_ids) == len(b_ids) == 2

        # --destination: only orders-a's dead deliveries.
        run = ok(await cli("replay", "--destination", "orders-a/webhook.out", *remote, cwd=tmp_path, **where))
        assert "replayed 2 deliveries" in run.out, run.out
        await wait_for(lambda: _counts_are(server, {"dead": 2, "delivered": 4}))
        for did in a_ids:
            assert await attempt_codes(server, did) == [503, 200]  # the same id, a new attempt
        assert {d["id"] for d in await deliveries_of(server, status="dead")} == b_ids

        # No filter at all: the remaining dead ones, and nothing already delivered.
        run = ok(await cli("replay", *remote, cwd=tmp_path, **where))
        assert "replayed 2 deliveries" in run.out, run.out
        await wait_for(lambda: _counts_are(server, {"delivered": 6}))
        for did in b_ids:
            assert await attempt_codes(server, did) == [503, 200]
        paths = sorted(r.path for r in receiver.requests)
        assert paths == ["/orders-a"] * 5 + ["/orders-b"] * 5, paths

        # None of these replays anything (checked by the receiver's count below): at once.
        run, nope, *bad_status = await at_once(
            cli("replay", *remote, cwd=tmp_path, **where),
            cli("replay", "--destination", "nope", *remote, cwd=tmp_path, **where),
            *(
                cli("replay", "--status", status, *remote, cwd=tmp_path, **where)
                for status in ("bogus", "delivering")
            ),
        )
        assert "replayed 0 deliveries" in ok(run).out, run.out
        one_line_error(nope, "no destination 'nope'")
        # A status that does not exist, or deliveries being attempted, are refused, not "0 replayed".
        # (Usage errors: exit 2, naming the command's --help.)
        for status, refused in zip(("bogus", "delivering"), bad_status, strict=True):
            one_line_error(refused, f"'{status}'", "replay --help", rc=2)
        assert len(receiver.requests) == 10
    finally:
        await server.stop()


async def _counts_are(server: RunningServer, expected: dict[str, int]) -> bool:
    return await status_counts(server) == expected


# ---- 5. secrets set, remote ----------------------------------------------------------------------------


async def test_remote_secrets_set_stores_on_the_server_never_echoes_and_refuses_a_wrong_key(
    tmp_path: Path, sqlite_url: str, receiver: Receiver
) -> None:
    first_value = f"remote-secret-{uuid.uuid4().hex}"
    second_value = f"rotated-secret-{uuid.uuid4().hex}"
    server = await start_server(sqlite_url)
    try:
        await server.apply(
            {"pipelines": [webhook_pipeline("signed", receiver.url + "/signed", "ref:remote-hooks")]}
        )

        # A wrong key: refused in one line, nothing stored, the value never shown.
        run = await cli(
            "secrets",
            "set",
            "remote-hooks",
            "--url",
            server.url,
            "--key",
            "il_admin_" + "x" * 43,
            cwd=tmp_path,
            stdin=first_value.encode(),
        )
        one_line_error(run, "401")
        assert first_value not in run.out + run.err
        assert (await server.request("GET", "/v1/secrets"))[1] == {"data": []}

        remote = ("--url", server.url, "--key", server.admin_key)
        run = ok(
            await cli("secrets", "set", "remote-hooks", *remote, cwd=tmp_path, stdin=first_value.encode())
        )
        assert run.out.strip() == "secret remote-hooks stored", run.out
        assert first_value not in run.out + run.err
        assert (await server.request("GET", "/v1/secrets"))[1] == {"data": [{"name": "remote-hooks"}]}

        status, ev1 = await server.ingest("order.placed", {"n": 1})
        assert status == 202, ev1
        await wait_for(lambda: _arrived(receiver, 1))
        assert receiver.requests[0].verify(first_value)["id"] == ev1["id"]

        # Setting it again replaces it, and the server signs with the new value from then on.
        run = ok(
            await cli("secrets", "set", "remote-hooks", *remote, cwd=tmp_path, stdin=second_value.encode())
        )
        assert run.out.strip() == "secret remote-hooks replaced", run.out
        assert second_value not in run.out + run.err
        status, ev2 = await server.ingest("order.placed", {"n": 2})
        assert status == 202, ev2
        await wait_for(lambda: _arrived(receiver, 2))
        assert receiver.requests[1].verify(second_value)["id"] == ev2["id"]

        # Remote mode never touched a local database.
        assert not (tmp_path / "ingestlayer.db").exists()
    finally:
        await server.stop()


async def test_replaying_a_delivery_being_attempted_says_so(sqlite_url: str, tmp_path: Path) -> None:
    """The local CLI answers like the API's 409: the delivery is in flight, not missing."""
    store = Store.from_url(sqlite_url)
    try:
        pid, _, _ = await store.create_project("replays")
        now = time.time()
        event = NewEvent(new_id("evt"), pid, "a.b", "{}", None, "api", now, now)
        await store.insert_events([event])
        lease = await store.lease_route_jobs(10, 60.0)
        delivery = NewDelivery(new_id("dlv"), pid, event.id, "a.b", "p", "d", "{}")
        await store.complete_routing(lease, [delivery], {})
        (leased,) = await store.lease_deliveries(10, 60.0)  # a worker is attempting it now
    finally:
        await store.close()
    run, nope = await at_once(
        cli("replay", leased.id, cwd=tmp_path, db_url=sqlite_url),
        cli("replay", "dlv_nope", cwd=tmp_path, db_url=sqlite_url),
    )
    one_line_error(run, "being attempted right now")
    one_line_error(nope, "no delivery 'dlv_nope'")


async def test_secrets_set_refuses_a_master_key_the_projects_secrets_were_not_stored_with(
    sqlite_url: str, tmp_path: Path
) -> None:
    ok(await cli("init", "--name", "keys", cwd=tmp_path, db_url=sqlite_url))
    ok(await cli("secrets", "set", "first", "--value", "one", cwd=tmp_path, db_url=sqlite_url))
    other_key = "another-master-key-0123456789abcdef0123456789"
    run = await cli(
        "secrets", "set", "second", "--value", "two", cwd=tmp_path, db_url=sqlite_url, secret_key=other_key
    )
    one_line_error(run, "master key is not the one")
    store = Store.from_url(sqlite_url)
    try:
        (project,) = await store.list_projects()
        assert [r["name"] for r in await store.list_secrets(project["id"])] == ["first"]
    finally:
        await store.close()


async def test_cli_send_refuses_a_payload_nested_too_deeply(sqlite_url: str, tmp_path: Path) -> None:
    """The local `send` writes to the database itself: it holds to the API's limit too."""
    ok(await cli("init", "--name", "deep", cwd=tmp_path, db_url=sqlite_url))
    deep = '{"a": ' * 70 + "1" + "}" * 70
    refused, sent = await at_once(
        cli("send", "x.y", deep, cwd=tmp_path, db_url=sqlite_url),
        cli("send", "x.y", '{"a": {"b": 1}}', cwd=tmp_path, db_url=sqlite_url),
    )
    one_line_error(refused, "nested 70 levels deep")
    ok(sent)
