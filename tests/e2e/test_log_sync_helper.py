"""The SQLite log's sync process, killed while a real ``serve`` ingests: no 202 is lost, ingest
goes on, and the server still exits cleanly."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from tests.support.processes import Cluster, Proc, post_events, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def helpers_of(server: Proc) -> list[int]:
    """Running log sync processes started by ``server`` (its children, by /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == server.pid and state != "Z" and any(a.endswith(b"log_sync_helper.py") for a in args):
            found.append(int(entry))
    return found


def stored_ids(database_url: str) -> set[str]:
    conn = sqlite3.connect(f"file:{database_url.removeprefix('sqlite:///')}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT id FROM events")}
    finally:
        conn.close()


async def test_a_killed_log_sync_process_loses_no_accepted_event(tmp_path: Path, sqlite_url: str) -> None:
    async with Cluster(tmp_path, sqlite_url) as cluster:
        keys = await cluster.init_project()
        server = await cluster.start("serve")
        accepted = await post_events(cluster, server, keys, 0, 50, at_once=16)
        [helper] = helpers_of(server)  # started by the first durable write

        # Killed while requests are in flight: some wait for its answer when it dies.
        during = asyncio.ensure_future(post_events(cluster, server, keys, 50, 400, at_once=16))
        await asyncio.sleep(0.05)
        os.kill(helper, signal.SIGKILL)
        accepted += await during
        accepted += await post_events(cluster, server, keys, 450, 100, at_once=16)

        assert set(accepted) <= stored_ids(sqlite_url)
        assert len(set(accepted)) == 550
        assert "the log sync process stopped (killed by signal 9)" in server.log()
        assert helpers_of(server) == []  # syncs on the thread until the next try, a minute on

        server.signal(signal.SIGTERM)
        assert await server.wait_exit(30) == 0


async def test_the_log_sync_process_ends_with_its_server(tmp_path: Path, sqlite_url: str) -> None:
    async with Cluster(tmp_path, sqlite_url) as cluster:
        keys = await cluster.init_project()
        for stop in (signal.SIGTERM, signal.SIGKILL):
            server = await cluster.start("serve")
            await post_events(cluster, server, keys, 0, 5, at_once=16)
            [helper] = helpers_of(server)
            server.signal(stop)
            await server.wait_exit(30)

            def gone(pid: int = helper) -> bool:
                try:
                    with open(f"/proc/{pid}/stat") as f:
                        return f.read().rsplit(")", 1)[1].split()[0] == "Z"
                except FileNotFoundError:
                    return True

            await wait_until(gone, timeout=10, what=f"the log sync process to end after {stop.name}")
