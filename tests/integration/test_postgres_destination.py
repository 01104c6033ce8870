"""The postgres destination through the real server, into the real PostgreSQL of this machine.

The module gets its own scratch database (dropped at the end); each test its own tables. With
CI=true PostgreSQL must be there: no skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import struct
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from ingestlayer.delivery.egress import EgressPolicy
from ingestlayer.destinations.base import SendContext, SendRequest
from ingestlayer.destinations.postgres import Postgres, PostgresConfig
from tests.integration.test_delivery import final_delivery
from tests.support.databases import PG_URL, require_pg
from tests.support.server import RunningServer, start_server, wait_for

FAST = {"schedule": [0, 0.05, 0.05, 0.05], "jitter": 0}
DOC = Path(__file__).resolve().parents[2] / "docs" / "destinations" / "postgres.md"
PASSWORD = "pg-pass-Zx81"  # trust auth ignores it; it must still never be shown


async def _admin(sql: str) -> None:
    conn = await asyncpg.connect(PG_URL, timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def target_db() -> Iterator[str]:
    """A scratch database for the destination's tables: its DSN (with a password in it)."""
    require_pg()
    name = f"il_pgdest_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    base = PG_URL.rsplit("/", 1)[0]
    user_host = base.split("://", 1)[1]
    yield f"postgresql://{user_host.replace('@', f':{PASSWORD}@', 1)}/{name}"
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def target(target_db: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(target_db, timeout=5)
    yield conn
    await conn.close()


@pytest.fixture
async def server(sqlite_url: str) -> AsyncIterator[RunningServer]:
    # One store backend is enough here (the destination's database is what is under test).
    s = await start_server(sqlite_url)
    yield s
    await s.stop()  # the dispatcher closes the destinations' pools as it stops


def table_name() -> str:
    return f"t_{uuid.uuid4().hex[:8]}"


def pg_doc(table: str, *, steps: list[Any] | None = None, **settings: Any) -> dict[str, Any]:
    retry = settings.pop("retry", FAST)
    return {
        "pipelines": [
            {
                "name": "to-warehouse",
                "source": {"match": ["feature.*"]},
                "steps": steps or [],
                "destinations": [
                    {"postgres": {"dsn": "ref:warehouse", "table": table, **settings}, "retry": retry}
                ],
            }
        ]
    }


async def deliver(
    server: RunningServer, payload: dict[str, Any], type_: str = "feature.used"
) -> dict[str, Any]:
    _, body = await server.ingest(type_, payload)
    return await final_delivery(server, body["id"])


async def test_create_table_and_insert(
    server: RunningServer, target: asyncpg.Connection, target_db: str
) -> None:
    table = table_name()
    await server.set_secret("warehouse", target_db)
    columns = {
        "account": "$event.account",
        "seats": {"value": "$event.seats", "type": "bigint"},
        "summary": "$event.feature by $event.user.name",
    }
    await server.apply(pg_doc(table, create_table=True, columns=columns, jsonb_column="payload"))
    payload = {"account": "acme", "seats": "12", "feature": "export", "user": {"name": "Zoë"}}
    d = await deliver(server, payload)
    assert d["status"] == "delivered", d
    assert d["attempts"][0]["response_excerpt"] == f"INSERT 1 row into {table}"
    types = dict(
        await target.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1", table
        )
    )
    assert types == {
        "delivery_id": "text",
        "event_id": "text",
        "event_type": "text",
        "occurred_at": "timestamp with time zone",
        "received_at": "timestamp with time zone",
        "account": "text",
        "seats": "bigint",
        "summary": "text",
        "payload": "jsonb",
    }
    (row,) = await target.fetch(f'SELECT * FROM "{table}"')
    assert row["delivery_id"] == d["id"]
    assert row["event_id"] == d["event_id"] and row["event_type"] == "feature.used"
    assert isinstance(row["occurred_at"], datetime) and row["received_at"] is not None
    assert (row["account"], row["seats"], row["summary"]) == ("acme", 12, "export by Zoë")
    assert await target.fetchval(
        f'SELECT payload = $1::jsonb FROM "{table}"',
        '{"account": "acme", "seats": "12", "feature": "export", "user": {"name": "Zoë"}}',
    )


async def test_replayed_delivery_makes_no_second_row(
    server: RunningServer, target: asyncpg.Connection, target_db: str
) -> None:
    table = table_name()
    await server.set_secret("warehouse", target_db)
    await server.apply(pg_doc(table, create_table=True))
    d = await deliver(server, {"account": "acme"})
    assert d["status"] == "delivered"
    status, _ = await server.request("POST", f"/v1/deliveries/{d['id']}/replay")
    assert status == 200

    async def replayed() -> dict[str, Any] | None:
        _, again = await server.request("GET", f"/v1/deliveries/{d['id']}")
        return again if again["status"] == "delivered" and len(again["attempts"]) == 2 else None

    again = await wait_for(replayed)
    assert "already in" in again["attempts"][1]["response_excerpt"]
    assert await target.fetchval(f'SELECT count(*) FROM "{table}"') == 1
    # jsonb_column defaults to `payload` when there is no column mapping.
    assert await target.fetchval(f"SELECT payload->>'account' FROM \"{table}\"") == "acme"


async def test_users_own_table_with_type_conversion(
    server: RunningServer, target: asyncpg.Connection, target_db: str
) -> None:
    table = table_name()
    await target.execute(
        f'CREATE TABLE "{table}" (id bigserial PRIMARY KEY, delivery_id text UNIQUE NOT NULL, '
        "kind text, amount numeric(10,2), at timestamptz, paid boolean, data jsonb, "
        "created timestamptz DEFAULT now())"
    )
    await server.set_secret("warehouse", target_db)
    columns = {
        "kind": "$event.type",
        "amount": "$event.amount",
        "at": "$event.occurred_at",
        "paid": "$event.paid",
    }
    await server.apply(pg_doc(table, columns=columns, jsonb_column="data"))
    d = await deliver(server, {"amount": "12.50", "paid": True, "lines": [1, 2]}, "feature.billed")
    assert d["status"] == "delivered", d
    (row,) = await target.fetch(f'SELECT * FROM "{table}"')
    assert row["delivery_id"] == d["id"] and row["kind"] == "feature.billed"
    assert str(row["amount"]) == "12.50" and row["paid"] is True
    assert row["at"] is not None and row["created"] is not None and row["id"] == 1
    assert await target.fetchval(f"SELECT data->'lines' = '[1, 2]'::jsonb FROM \"{table}\"")


async def test_table_without_unique_delivery_id_is_dead_then_fixed_and_replayed(
    server: RunningServer, target: asyncpg.Connection, target_db: str
) -> None:
    table = table_name()
    await target.execute(f'CREATE TABLE "{table}" (delivery_id text, payload jsonb)')
    await server.set_secret("warehouse", target_db)
    await server.apply(pg_doc(table))
    d = await deliver(server, {"account": "acme"})
    assert d["status"] == "dead"
    (attempt,) = d["attempts"]
    assert "no unique index on it" in attempt["error"]
    assert f"ALTER TABLE {table} ADD UNIQUE (delivery_id)" in attempt["error"]
    await target.execute(f'ALTER TABLE "{table}" ADD UNIQUE (delivery_id)')
    await replayed_into_one_row(server, target, d["id"], table)


async def replayed_into_one_row(
    server: RunningServer, target: asyncpg.Connection, delivery_id: str, table: str
) -> None:
    """Replay the delivery once its table is fixed: delivered, into one row."""
    await server.request("POST", f"/v1/deliveries/{delivery_id}/replay")

    async def delivered() -> bool:
        _, again = await server.request("GET", f"/v1/deliveries/{delivery_id}")
        return bool(again["status"] == "delivered")

    await wait_for(delivered)
    assert await target.fetchval(f'SELECT count(*) FROM "{table}"') == 1


@pytest.mark.parametrize(
    ("keys", "fix"),
    [
        # The only unique key is deferrable: drop it and add a non-deferrable one.
        ("UNIQUE DEFERRABLE", 'DROP CONSTRAINT "{table}_delivery_id_key", ADD UNIQUE (delivery_id)'),
        (
            "PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE",
            'DROP CONSTRAINT "{table}_pkey", ADD UNIQUE (delivery_id)',
        ),
        # A non-deferrable one beside it is not enough: ON CONFLICT takes both and refuses.
        ("UNIQUE DEFERRABLE UNIQUE", 'DROP CONSTRAINT "{table}_delivery_id_key"'),
    ],
)
async def test_deferrable_unique_delivery_id_is_dead_at_once_then_fixed_and_replayed(
    server: RunningServer, target: asyncpg.Connection, target_db: str, keys: str, fix: str
) -> None:
    table = table_name()
    await target.execute(f'CREATE TABLE "{table}" (delivery_id text {keys}, payload jsonb)')
    await server.set_secret("warehouse", target_db)
    await server.apply(pg_doc(table, retry={"schedule": [0, 0.05, 0.05]}))
    d = await deliver(server, {"account": "acme"})
    assert d["status"] == "dead"
    (attempt,) = d["attempts"]  # refused by the table check, not retried
    assert f"table {table} has a DEFERRABLE unique key on delivery_id" in attempt["error"]
    assert "must be non-deferrable" in attempt["error"]
    statement = f"ALTER TABLE {table} {fix.format(table=table)}"
    assert attempt["error"].endswith(f"Replace it: {statement}")
    await target.execute(statement)
    await replayed_into_one_row(server, target, d["id"], table)


async def test_unique_key_made_deferrable_after_the_check_is_dead_not_retried(
    server: RunningServer, target: asyncpg.Connection, target_db: str
) -> None:
    """The table passed the check, then its key became DEFERRABLE: PostgreSQL's 55000 from ON
    CONFLICT is permanent (it used to be retried for hours as "object not in prerequisite
    state"), and the next delivery looks at the table again."""
    table = table_name()
    await target.execute(f'CREATE TABLE "{table}" (delivery_id text UNIQUE, payload jsonb)')
    await server.set_secret("warehouse", target_db)
    await server.apply(pg_doc(table, retry={"schedule": [0, 0.05, 0.05]}))
    assert (await deliver(server, {"n": 1}))["status"] == "delivered"
    await target.execute(
        f'ALTER TABLE "{table}" DROP CONSTRAINT "{table}_delivery_id_key", '
        f'ADD CONSTRAINT "{table}_d" UNIQUE (delivery_id) DEFERRABLE'
    )
    d = await deliver(server, {"n": 2})
    assert d["status"] == "dead"
    (attempt,) = d["attempts"]
    assert "PostgreSQL 55000: ON CONFLICT does not support deferrable" in attempt["error"]
    assert f'ALTER TABLE {table} DROP CONSTRAINT "{table}_d", ADD UNIQUE (delivery_id)' in attempt["error"]
    d = await deliver(server, {"n": 3})
    assert f"table {table} has a DEFERRABLE unique key on delivery_id" in d["attempts"][0]["error"]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"nope": "$event.account"}, 'PostgreSQL 42703: column "nope" of relation "{table}" does not exist'),
        ({"seats": "$event.seats"}, 'PostgreSQL 22P02: invalid input syntax for type bigint: "many"'),
    ],
)
async def test_bad_column_or_value_is_dead_with_postgres_message(
    server: RunningServer,
    target: asyncpg.Connection,
    target_db: str,
    columns: dict[str, str],
    message: str,
) -> None:
    table = table_name()
    await target.execute(f'CREATE TABLE "{table}" (delivery_id text PRIMARY KEY, account text, seats bigint)')
    await server.set_secret("warehouse", target_db)
    await server.apply(pg_doc(table, columns=columns))
    d = await deliver(server, {"account": "acme", "seats": "many"})
    assert d["status"] == "dead"
    (attempt,) = d["attempts"]
    assert message.format(table=table) in attempt["error"]
    assert PASSWORD not in str(d)


async def test_missing_table_is_dead_with_how_to_fix(server: RunningServer, target_db: str) -> None:
    await server.set_secret("warehouse", target_db)
    await server.apply(pg_doc("no_such_table"))
    d = await deliver(server, {"account": "acme"})
    assert d["status"] == "dead"
    assert (
        d["attempts"][0]["error"]
        == "table no_such_table does not exist: create it, or set create_table: true"
    )


async def test_connection_refused_is_retried_and_unknown_database_is_dead(
    server: RunningServer, target_db: str
) -> None:
    refused = re.sub(r":\d+/", ":1/", target_db)
    await server.set_secret("warehouse", refused)
    await server.apply(pg_doc(table_name(), retry={"schedule": [0, 0.05]}))
    d = await deliver(server, {"account": "acme"})
    assert d["status"] == "dead" and len(d["attempts"]) == 2  # retried
    assert "connection error" in d["attempts"][0]["error"]

    await server.set_secret("warehouse", target_db.rsplit("/", 1)[0] + "/il_no_such_db")
    await server.apply(pg_doc(table_name()))
    d = await deliver(server, {"account": "acme"})
    assert d["status"] == "dead" and len(d["attempts"]) == 1  # permanent
    assert 'PostgreSQL 3D000: database "il_no_such_db" does not exist' in d["attempts"][0]["error"]
    assert PASSWORD not in str(d) and "postgresql://" not in str(d)


class PasswordTaker:
    """A PostgreSQL server that asks every client for its password in clear (as any server may),
    notes what it is sent, and refuses it."""

    def __init__(self) -> None:
        self.passwords: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> PasswordTaker:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            length, code = struct.unpack("!ii", await reader.readexactly(8))
            if code == 80877103:  # SSLRequest: no TLS here, go on in clear
                writer.write(b"N")
                length, code = struct.unpack("!ii", await reader.readexactly(8))
            await reader.readexactly(length - 8)  # the startup message's parameters
            writer.write(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
            kind = await reader.readexactly(1)
            (size,) = struct.unpack("!i", await reader.readexactly(4))
            body = await reader.readexactly(size - 4)
            if kind == b"p":
                self.passwords.append(body.rstrip(b"\0").decode())
            fields = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed\0\0"
            writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            await writer.drain()
        writer.close()


async def test_a_dsn_without_a_password_is_never_sent_the_workers_own(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A project's DSN names a host of its choosing. Without a password in it, the driver took the
    worker's PGPASSWORD, or a line of its password file, and sent it to that host on request: the
    password of the server's own database, say, which holds every project's data."""
    monkeypatch.setenv("PGPASSWORD", "workers-pgpassword")
    passfile = tmp_path / "pgpass"
    passfile.write_text("*:*:*:*:workers-pgpass-line\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    taker = await PasswordTaker().start()
    once = {"schedule": [0], "jitter": 0}
    try:
        for user in ("tenant", "tenant2"):
            if user == "tenant2":
                monkeypatch.delenv("PGPASSWORD")  # the password file's turn
            await server.set_secret("warehouse", f"postgresql://{user}@127.0.0.1:{taker.port}/db")
            await server.apply(pg_doc(table_name(), retry=once))
            d = await deliver(server, {"account": "acme"})
            assert d["status"] == "dead" and "28P01" in d["attempts"][0]["error"], d
        # A password the project gives in its DSN is the one sent.
        await server.set_secret("warehouse", f"postgresql://tenant:tenants-own@127.0.0.1:{taker.port}/db")
        await server.apply(pg_doc(table_name(), retry=once))
        d = await deliver(server, {"account": "acme"})
        assert d["status"] == "dead"
    finally:
        await taker.stop()
    assert taker.passwords[-1] == "tenants-own"
    assert not {"workers-pgpassword", "workers-pgpass-line"} & set(taker.passwords), taker.passwords


async def test_inline_dsn_is_rejected_naming_the_field(server: RunningServer, target_db: str) -> None:
    doc = pg_doc("events")
    doc["pipelines"][0]["destinations"][0]["postgres"]["dsn"] = target_db
    status, body = await server.request("POST", "/v1/apply", json={"document": doc})
    assert status == 422
    assert body["error"]["field"] == "pipelines[0].destinations[0].postgres.dsn"
    assert PASSWORD not in str(body)


def doc_block(language: str, after: str) -> str:
    """The first ```language block of docs/destinations/postgres.md after the line ``after``."""
    text = DOC.read_text(encoding="utf-8")
    start = text.index(after)
    match = re.compile(rf"^```{language}\n(.*?)^```", re.M | re.S).search(text, start)
    assert match, f"no {language} block after {after!r}"
    return match.group(1)


async def test_docs_rollup_recipe_runs_as_written(
    server: RunningServer, target: asyncpg.Connection, target_db: str
) -> None:
    await target.execute("DROP TABLE IF EXISTS feature_usage")
    recipe = yaml.safe_load(doc_block("yaml", "## Recipe: feature usage per account"))
    await server.set_secret("warehouse", target_db)
    await server.apply(recipe)
    events = [
        ("acme", "export"),
        ("acme", "api"),
        ("globex", "export"),
        ("acme", "export"),
        ("initech", "webhook"),
        ("globex", "api"),
    ]
    for i, (org, feature) in enumerate(events):
        d = await deliver(
            server, {"user_id": f"u{i}", "feature": feature, "org": {"slug": org, "tier": "pro"}}
        )
        assert d["status"] == "delivered", d
    sql = doc_block("sql", "### How do I roll this up per account?")
    rows = await target.fetch(sql)
    assert [(r["account"], r["events"], r["features"]) for r in rows] == [
        ("acme", 3, 2),
        ("globex", 2, 2),
        ("initech", 1, 1),
    ]
    assert all(isinstance(r["last_seen"], datetime) for r in rows)
    await target.execute("DROP TABLE feature_usage")


async def test_workers_creating_the_same_table_at_once_all_deliver(
    target: asyncpg.Connection, target_db: str
) -> None:
    """Several workers (each its own destination instance and pool) take the first deliveries to a
    table that does not exist yet, at the same moment: one creates it, and every delivery lands.

    PostgreSQL answers a CREATE TABLE IF NOT EXISTS that loses the race in more than one way
    (a unique violation on its catalog, "relation already exists", "type already exists"); none
    of them may make a delivery dead.
    """
    workers, per_worker, rounds = 4, 3, 12

    async def resolve(project_id: str, ref: str) -> str:
        return target_db

    async with aiohttp.ClientSession() as session:
        ctx = SendContext(session=session, resolve_secret=resolve, egress=EgressPolicy(True), user_agent="t")
        for _ in range(rounds):
            table = table_name()
            config = PostgresConfig.model_validate(
                {"dsn": "ref:warehouse", "table": table, "create_table": True}
            )
            instances = [Postgres(config) for _ in range(workers)]
            try:
                outcomes = await asyncio.gather(
                    *(
                        dest.send(
                            SendRequest(
                                delivery_id=f"dlv_{w}_{i}",
                                project_id="prj_1",
                                event_id=f"evt_{w}_{i}",
                                event_type="feature.used",
                                attempt=1,
                                event={"id": f"evt_{w}_{i}", "type": "feature.used", "payload": {"n": i}},
                                body_json="",
                            ),
                            ctx,
                        )
                        for w, dest in enumerate(instances)
                        for i in range(per_worker)
                    )
                )
            finally:
                await asyncio.gather(*(dest.close() for dest in instances))
            assert [o.error for o in outcomes if not o.ok] == []
            assert await target.fetchval(f'SELECT count(*) FROM "{table}"') == workers * per_worker
