"""The migrations build exactly the schema the code declares, and 0004 keeps the data it moves."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

import alembic.op
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import create_async_engine

from ingestlayer.store.db import async_url
from ingestlayer.store.migrate import alembic_config, upgrade
from ingestlayer.store.schema import metadata


async def test_the_migrated_schema_matches_the_declared_one(db_url: str) -> None:
    engine = create_async_engine(async_url(db_url))
    try:
        async with engine.connect() as conn:

            def diff(sync_conn: Any) -> list[Any]:
                ctx = MigrationContext.configure(sync_conn, opts={"compare_type": True})
                return list(compare_metadata(ctx, metadata))

            assert await conn.run_sync(diff) == []
    finally:
        await engine.dispose()


def _schema(path: Path) -> dict[str, str]:
    conn = sqlite3.connect(path)
    try:
        return {
            name: sql
            for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master"
                " WHERE tbl_name IN ('events', 'route_jobs') AND sql IS NOT NULL"
            )
        }
    finally:
        conn.close()


def test_0004_keeps_events_and_route_jobs_and_key_uniqueness_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0003")
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO events (id, project_id, type, payload, idempotency_key, source, occurred_at,"
        " received_at) VALUES ('e1', 'p1', 'a.b', '{}', 'k1', 'api', 1, 1),"
        " ('e2', 'p1', 'a.b', '{}', NULL, 'api', 2, 2)"
    )
    conn.execute("INSERT INTO route_jobs VALUES ('e1', 'p1', 10, 0), ('e2', 'p1', 20, 3)")
    conn.commit()
    conn.close()

    upgrade(url)
    schema = _schema(path)
    assert "WITHOUT ROWID" in schema["route_jobs"]
    assert "WHERE idempotency_key IS NOT NULL" in schema["ux_events_project_idempotency"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute(
            "SELECT event_id, project_id, due_at, attempts FROM route_jobs ORDER BY event_id"
        ).fetchall() == [
            ("e1", "p1", 10.0, 0),
            ("e2", "p1", 20.0, 3),
        ]
        assert conn.execute("SELECT id, idempotency_key FROM events ORDER BY id").fetchall() == [
            ("e1", "k1"),
            ("e2", None),
        ]
        insert = (
            "INSERT INTO events (id, project_id, type, payload, idempotency_key, source, occurred_at,"
            " received_at) VALUES (?, 'p1', 'a.b', '{}', ?, 'api', 3, 3)"
        )
        try:
            conn.execute(insert, ("e3", "k1"))
            raise AssertionError("a repeated idempotency key was stored")
        except sqlite3.IntegrityError:
            pass
        conn.execute(insert, ("e4", None))  # any number of events without a key
        conn.commit()
    finally:
        conn.close()

    command.downgrade(alembic_config(url), "0003")
    schema = _schema(path)
    assert "WITHOUT ROWID" not in schema["route_jobs"]
    assert "uq_events_project_idempotency" in schema["events"]
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM route_jobs").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM events").fetchone() == (3,)
    finally:
        conn.close()


def test_an_interrupted_migration_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 0004 rebuilds tables on SQLite (copy, drop, rename); failing half-way must roll all of it
    # back, or every later attempt would trip over the half-built copy.
    path = tmp_path / "m.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0003")
    before = _schema(path)

    def fail(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(alembic.op, "rename_table", fail)
    with pytest.raises(RuntimeError, match="interrupted"):
        upgrade(url)
    assert _schema(path) == before
    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert not {t for t in tables if t.endswith("_new") or t.startswith("_alembic_tmp")}
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0003",)
    finally:
        conn.close()
    monkeypatch.undo()
    upgrade(url)  # and the next attempt succeeds
    assert "WITHOUT ROWID" in _schema(path)["route_jobs"]


def test_0006_keys_companies_by_their_domain_and_merges_spellings(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0005")
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO projects (id, name, created_at, config_version) VALUES ('p1', 'p', 1, 0)")
    conn.executemany(
        "INSERT INTO entities (project_id, kind, id, traits, updated_at) VALUES ('p1', ?, ?, ?, ?)",
        [
            ("company", "Initech.COM", '{"name": "Initech", "plan": "free"}', 1),
            ("company", "initech.com.", '{"plan": "pro"}', 2),  # updated last: its plan wins
            ("company", "globex.com", '{"name": "Globex"}', 3),  # already a domain: untouched
            ("company", " . ", '{"name": "?"}', 4),  # no domain at all: left as it is
            ("user", "U1", '{"email": "A@B.C"}', 5),  # other kinds keep their ids
        ],
    )
    conn.commit()
    conn.close()
    upgrade(url)
    conn = sqlite3.connect(path)
    try:
        rows = sorted(conn.execute("SELECT kind, id, traits, updated_at FROM entities").fetchall())
    finally:
        conn.close()
    assert rows == [
        ("company", " . ", '{"name": "?"}', 4),
        ("company", "globex.com", '{"name": "Globex"}', 3),
        ("company", "initech.com", '{"name": "Initech", "plan": "pro"}', 2),
        ("user", "U1", '{"email": "A@B.C"}', 5),
    ]


def test_0009_marks_the_keys_of_signed_webhooks_only(tmp_path: Path) -> None:
    """Keys stored from signed webhooks before 0009 are marked as new ones are, so a webhook
    redelivered after the upgrade is still a duplicate; keys senders chose are left alone."""
    from ingestlayer.idempotency_keys import ingress_key

    path = tmp_path / "m.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0008")
    long_id = "evt_" + "x" * 300
    old_long = f"stripe:{long_id}"  # as stored before: hashed to 255 characters
    digest = hashlib.sha256(old_long.encode()).hexdigest()
    old_long = old_long[: 255 - len(digest) - 1] + "~" + digest
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO sources (id, project_id, name, config, enabled, created_at, updated_at)"
        " VALUES ('src_1', 'p1', 'stripe', '{}', 1, 1, 1)"
    )
    rows = [
        ("e1", "p1", "stripe:evt_1", "stripe"),  # a webhook
        ("e2", "p1", old_long, "stripe"),  # a webhook with a long id
        ("e3", "p1", "stripe:evt_2", "sdk"),  # an event sent with that key through the API
        ("e4", "p2", "stripe:evt_1", "stripe"),  # another project, without such a source
        # A webhook stored before, and its redelivery stored marked by a newer process already
        # (a rolling upgrade): the key is taken, the old one stays as it is.
        ("e5", "p1", "stripe:evt_3", "stripe"),
        ("e6", "p1", "\x1fstripe:evt_3", "stripe"),
    ]
    conn.executemany(
        "INSERT INTO events (id, project_id, type, payload, idempotency_key, source, occurred_at,"
        " received_at) VALUES (?, ?, 'a.b', '{}', ?, ?, 1, 1)",
        rows,
    )
    conn.commit()
    conn.close()

    upgrade(url)
    conn = sqlite3.connect(path)
    try:
        keys = dict(conn.execute("SELECT id, idempotency_key FROM events").fetchall())
    finally:
        conn.close()
    assert keys == {
        "e1": ingress_key("stripe", "evt_1"),
        "e2": ingress_key("stripe", long_id),
        "e3": "stripe:evt_2",
        "e4": "stripe:evt_1",
        "e5": "stripe:evt_3",
        "e6": "\x1fstripe:evt_3",
    }
    assert keys["e1"] == "\x1fstripe:evt_1"

    command.downgrade(alembic_config(url), "0008")
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT idempotency_key FROM events WHERE id = 'e1'").fetchone()
        assert row == ("stripe:evt_1",)
    finally:
        conn.close()


def test_0010_stores_enrichment_steps_by_their_yaml_keys(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0009")
    before = {
        "source": {"match": ["feature.*"]},
        "steps": [
            {"name": "enrich.entity", "config": {"from_": "account_id", "entity": "account"}},
            {"name": "filter.match", "config": {"expression": "from_ = 1"}},
            {"name": "enrich.person", "config": {"from_": "email"}},
        ],
        "destinations": [],
    }
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO pipelines (id, project_id, name, config, endpoint, enabled, created_at, updated_at)"
        " VALUES ('pip_1', 'p1', 'usage', ?, 0, 1, 1, 1)",
        (json.dumps(before),),
    )
    conn.commit()
    conn.close()

    upgrade(url)
    conn = sqlite3.connect(path)
    try:
        (stored,) = conn.execute("SELECT config FROM pipelines").fetchone()
    finally:
        conn.close()
    steps = json.loads(stored)["steps"]
    assert steps[0]["config"] == {"from": "account_id", "entity": "account"}
    assert steps[1]["config"] == {"expression": "from_ = 1"}  # not an enrichment: left alone
    assert steps[2]["config"] == {"from": "email"}


def test_the_head_read_from_file_names_is_alembics(tmp_path: Path) -> None:
    """Commands skip Alembic on a SQLite file already at the head, which they read from the
    migrations' file names: that must be the head Alembic itself finds."""
    from ingestlayer.store.migrate import current_head, head_revision, sqlite_schema_is_current

    assert head_revision() == current_head()
    url = f"sqlite:///{tmp_path / 'h.db'}"
    assert not sqlite_schema_is_current(url) and not (tmp_path / "h.db").exists()  # not created
    upgrade(url, "0008")
    assert not sqlite_schema_is_current(url)
    upgrade(url)
    assert sqlite_schema_is_current(url)
    assert not sqlite_schema_is_current(f"postgresql://postgres@127.0.0.1/{tmp_path.name}")


def test_0011_marks_no_job_waiting_and_keeps_route_jobs_without_rowid_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite:///{path}"
    upgrade(url, "0010")
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO route_jobs VALUES ('e1', 'p1', 10, 2)")
    conn.commit()
    conn.close()

    upgrade(url, "0011")
    assert "WITHOUT ROWID" in _schema(path)["route_jobs"]
    conn = sqlite3.connect(path)
    try:
        # A job deferred before waits out its back-off, as it would have.
        assert conn.execute("SELECT * FROM route_jobs").fetchall() == [("e1", "p1", 10.0, 2, 0)]
    finally:
        conn.close()

    command.downgrade(alembic_config(url), "0010")
    schema = _schema(path)
    assert "WITHOUT ROWID" in schema["route_jobs"] and "ix_route_jobs_waiting" not in schema
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT * FROM route_jobs").fetchall() == [("e1", "p1", 10.0, 2)]
    finally:
        conn.close()
