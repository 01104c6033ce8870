"""The connection that listens for other processes' notifications (new work, a revoked key, a
changed secret) is lost: the log says so, and once it listens again nothing told meanwhile is
taken as still true."""

from __future__ import annotations

import logging

import asyncpg
import pytest

from tests.support.server import start_server, wait_for

SMALL_EVENT = {"type": "user.signed_up", "payload": {"n": 1}}


async def _listener_pid(admin: asyncpg.Connection, database: str) -> int | None:
    return await admin.fetchval(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'LISTEN %'"
        " ORDER BY backend_start DESC LIMIT 1",
        database,
    )


async def test_a_key_revoked_while_the_listener_was_away_is_refused_once_it_listens_again(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ingestlayer")
    database = pg_url.rsplit("/", 1)[1]
    server = await start_server(pg_url)
    admin = await asyncpg.connect(pg_url)
    try:
        first: list[int] = []

        async def listening() -> bool:
            pid = await _listener_pid(admin, database)
            if pid is not None:
                first.append(pid)
            return pid is not None

        await wait_for(listening)
        status, _ = await server.request("POST", "/v1/events", key=server.ingest_key, json=SMALL_EVENT)
        assert status == 202  # the key is cached now, for POSITIVE_TTL (10 s)

        await admin.execute("SELECT pg_terminate_backend($1)", first[-1])
        # Revoked while nobody listens: the notification that drops the cached key is missed.
        store = server.runtime.store
        (ingest,) = [k for k in await store.list_keys(server.project_id) if k["kind"] == "ingest"]
        await store.revoke_key(server.project_id, ingest["id"])

        def lines() -> list[str]:
            return [r.getMessage() for r in caplog.records if r.name == "ingestlayer.store"]

        async def listening_again() -> bool:
            # Logged as it listens again, in the same step as it drops what it cached.
            return any("listening for new work works again" in m for m in lines())

        await wait_for(listening_again)
        assert await _listener_pid(admin, database) not in (None, first[-1])
        status, body = await server.request("POST", "/v1/events", key=server.ingest_key, json=SMALL_EVENT)
        assert status == 401, body
        lost = [m for m in lines() if "listening for new work failed" in m and "closed the connection" in m]
        assert lost, lines()
    finally:
        await admin.close()
        await server.stop()
