"""A failed fdatasync of the SQLite log, seen from outside: events are answered 503 naming it
(and not stored), `/readyz` says the server needs a restart, and reads go on."""

from __future__ import annotations

import os
from pathlib import Path

from ingestlayer import metrics
from ingestlayer.store.log_sync_process import LogSyncProcess
from ingestlayer.store.sqlite_hot import SqliteHotPath
from tests.support.server import start_server


async def test_a_failed_log_sync_stops_storing_until_a_restart(sqlite_url: str, tmp_path: Path) -> None:
    server = await start_server(sqlite_url)
    hot = server.runtime.store._hot
    assert isinstance(hot, SqliteHotPath) and hot.db.wal is not None
    shipped = hot.db.wal
    # fdatasync of a FIFO fails in the kernel (EINVAL), as an I/O error on the log's disk would.
    fifo = tmp_path / "log-on-a-failing-disk"
    os.mkfifo(fifo)
    hot.db.wal = LogSyncProcess(str(fifo))
    before = metrics.UNAVAILABLE.labels(reason="sync_failed")._value.get()
    try:
        status, body = await server.request("GET", "/readyz")
        assert status == 200, body
        status, body = await server.request("GET", "/healthz")
        assert status == 200, body

        status, body = await server.ingest("order.created", {"n": 1})
        assert status == 503, body
        assert "the database log could not be synced" in body["error"]["message"]
        status, body = await server.ingest("order.created", {"n": 2})
        assert status == 503, body
        assert "nothing is stored until the server restarts" in body["error"]["message"]
        assert metrics.UNAVAILABLE.labels(reason="sync_failed")._value.get() == before + 2

        status, body = await server.request("GET", "/readyz")
        assert status == 503
        assert "could not be synced (Invalid argument)" in body["error"]["message"]
        # And the liveness probe, whose failure gets the process restarted: the remedy.
        status, body = await server.request("GET", "/healthz")
        assert status == 503
        assert "nothing is stored until a restart" in body["error"]["message"]
        # Reads still answer; the second event was refused before it was committed.
        status, body = await server.request("GET", "/v1/events?limit=10")
        assert status == 200, body
        assert [e["payload"] for e in body["data"]] == [{"n": 1}]
    finally:
        await hot.db.wal.close()
        hot.db.wal = shipped
        await server.stop()
