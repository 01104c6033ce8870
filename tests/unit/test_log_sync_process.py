"""The SQLite log's fdatasync in a helper process: the same promise as the thread (a waiter
returns after a sync that began after it asked), and nothing lost when the helper is not there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ingestlayer.store import log_sync_process
from ingestlayer.store.log_sync_process import HELPER_SCRIPT, LogSyncProcess
from ingestlayer.store.sqlite_loop import LoopSqlite

# The real helper, with each fdatasync held until a gate file exists (then the gate is removed)
# and counted in a file: a sync that is slow, as a busy disk's is.
GATED_SOURCE = textwrap.dedent(
    f"""
    import os, runpy, sys, time
    _real = os.fdatasync
    def _gated(fd, _gate=os.environ["GATE"], _calls=os.environ["CALLS"]):
        with open(_calls, "a") as f:
            f.write("sync\\n")
        while not os.path.exists(_gate):
            time.sleep(0.005)
        os.unlink(_gate)
        _real(fd)
    os.fdatasync = _gated
    runpy.run_path({HELPER_SCRIPT!r}, run_name="__main__")
    """
)


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "t.db-wal"
    path.write_bytes(b"x" * 4096)
    return path


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    gate, calls = tmp_path / "gate", tmp_path / "calls"
    monkeypatch.setenv("GATE", str(gate))
    monkeypatch.setenv("CALLS", str(calls))
    return gate, calls


def _gated(log_file: Path) -> LogSyncProcess:
    # Not -I: the gated helper reads its gate's path from the environment.
    return LogSyncProcess(str(log_file), command=[sys.executable, "-S", "-c", GATED_SOURCE])


def _calls(calls: Path) -> int:
    return calls.read_text().count("sync") if calls.exists() else 0


async def _until(predicate: object, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by a parent that is gone) counts as exited.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


async def test_a_sync_is_made_by_the_helper_process(log_file: Path) -> None:
    sync = LogSyncProcess(str(log_file))
    try:
        await sync.wait()
        pid = sync.helper_pid
        assert pid is not None and pid != os.getpid() and _alive(pid)
        await asyncio.gather(*(sync.wait() for _ in range(20)))
        assert 2 <= sync.syncs <= 21
        assert sync.fallback.syncs == 0  # none on the thread
    finally:
        await sync.close()
    assert not _alive(pid)


async def test_waiters_queued_during_a_sync_are_served_by_the_next_one(
    log_file: Path, gate: tuple[Path, Path]
) -> None:
    gate_file, calls = gate
    sync = _gated(log_file)
    try:
        first = asyncio.ensure_future(sync.wait())
        await _until(lambda: _calls(calls) == 1, "the first sync to start")
        # These asked after the running sync began: it does not cover them.
        later = [asyncio.ensure_future(sync.wait()) for _ in range(5)]
        await asyncio.sleep(0.1)
        assert not first.done() and not any(f.done() for f in later)
        gate_file.touch()
        await asyncio.wait_for(first, 10)
        assert not any(f.done() for f in later)  # their own sync is held at the gate
        await _until(lambda: _calls(calls) == 2, "the second sync to start")
        gate_file.touch()
        await asyncio.wait_for(asyncio.gather(*later), 10)
        assert _calls(calls) == 2  # one for the first waiter, one shared by the five
        assert sync.syncs == 2
    finally:
        gate_file.touch()
        await sync.close()


async def test_a_killed_helper_hands_its_waiters_to_the_thread(
    log_file: Path, gate: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    _, calls = gate
    sync = _gated(log_file)
    try:
        held = asyncio.ensure_future(sync.wait())
        await _until(lambda: _calls(calls) == 1, "the sync to start")
        queued = asyncio.ensure_future(sync.wait())
        pid = sync.helper_pid
        assert pid is not None
        with caplog.at_level(logging.WARNING, "ingestlayer.store"):
            os.kill(pid, signal.SIGKILL)
            # Neither write was synced by the helper: a sync on the thread, begun after it
            # stopped, serves both.
            await asyncio.wait_for(asyncio.gather(held, queued), 10)
            assert sync.fallback.syncs >= 1
            killed = "the log sync process stopped (killed by signal 9)"
            await _until(lambda: killed in caplog.text, "the warning")
            await _until(lambda: not _alive(pid), "the helper to be reaped")
        # Until the next try, syncs run on the thread.
        before = sync.fallback.syncs
        await asyncio.wait_for(sync.wait(), 10)
        assert sync.fallback.syncs == before + 1
        assert sync.helper_pid is None
    finally:
        await sync.close()


async def test_a_helper_that_cannot_start_leaves_syncs_to_the_thread(
    log_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sync = LogSyncProcess(str(log_file), command=[str(log_file.parent / "no-such-python")])
    try:
        with caplog.at_level(logging.WARNING, "ingestlayer.store"):
            await asyncio.wait_for(sync.wait(), 10)
        assert sync.fallback.syncs == 1 and sync.helper_pid is None
        assert "could not start the log sync process" in caplog.text
    finally:
        await sync.close()


async def test_the_helper_ignores_interrupts_meant_for_the_server(log_file: Path) -> None:
    # A Ctrl-C in a terminal, or a supervisor's SIGTERM to the whole group, must not end it
    # while the server is still draining its requests.
    sync = LogSyncProcess(str(log_file))
    try:
        await sync.wait()
        pid = sync.helper_pid
        assert pid is not None
        assert os.getpgid(pid) != os.getpgid(0)  # not in the terminal's process group
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.2)
        await asyncio.wait_for(sync.wait(), 10)
        assert sync.helper_pid == pid and sync.fallback.syncs == 0
    finally:
        await sync.close()


def test_the_helper_exits_when_its_server_dies(tmp_path: Path) -> None:
    db = tmp_path / "t.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (v INTEGER)")
    conn.close()
    script = textwrap.dedent(
        f"""
        import asyncio, sys, time
        from ingestlayer.store.sqlite_loop import LoopSqlite
        async def main():
            store = LoopSqlite({str(db)!r})
            await store.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))
            print(store.wal.helper_pid, flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
        """
    )
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        helper = int(server.stdout.readline())
        assert _alive(helper)
        server.kill()
        server.wait(10)
        deadline = time.monotonic() + 10
        while _alive(helper):
            assert time.monotonic() < deadline, "the helper outlived its server"
            time.sleep(0.02)
    finally:
        server.kill()
        server.wait()


def test_each_event_loop_in_turn_gets_a_helper(tmp_path: Path) -> None:
    """A CLI command runs one loop after another on the same store: each loop's syncs go to a
    helper of its own, not to the thread nor to a helper nobody reads."""
    db = tmp_path / "t.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (v INTEGER)")
    conn.close()
    store = LoopSqlite(str(db))
    assert store.wal is not None
    pids = []

    async def one_write(v: int) -> None:
        await store.write(lambda c: c.execute("INSERT INTO t VALUES (?)", (v,)))
        assert store.wal is not None
        pids.append(store.wal.helper_pid)

    asyncio.run(one_write(1))
    asyncio.run(one_write(2))
    asyncio.run(store.close())
    assert pids[0] is not None and pids[1] is not None and pids[0] != pids[1]
    assert store.wal.fallback.syncs == 0
    assert not _alive(pids[0]) and not _alive(pids[1])


async def test_the_helper_starts_again_after_its_pause(
    log_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_sync_process, "RESTART_AFTER_SECONDS", 0.0)
    sync = LogSyncProcess(str(log_file))
    try:
        await sync.wait()
        first = sync.helper_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        await _until(lambda: sync.helper_pid is None, "the stop to be noticed")
        await sync.wait()
        assert sync.helper_pid not in (None, first)
    finally:
        await sync.close()


async def test_a_helper_that_stops_answering_hands_its_waiters_to_the_thread(
    log_file: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    sync = LogSyncProcess(str(log_file))
    pid = None
    try:
        await sync.wait()  # the helper started and answered, in whatever time a busy machine takes
        pid = sync.helper_pid
        assert pid is not None
        # Only then a short wait for answers: under a loaded test run, the helper's start and
        # first sync took over half a second, and it was taken for silent before the test began.
        monkeypatch.setattr(log_sync_process, "ANSWER_TIMEOUT_SECONDS", 0.5)
        os.kill(pid, signal.SIGSTOP)  # alive, and silent
        with caplog.at_level(logging.WARNING, "ingestlayer.store"):
            await asyncio.wait_for(asyncio.gather(*(sync.wait() for _ in range(3))), 10)
            await _until(lambda: "the log sync process stopped (" in caplog.text, "the warning")
        assert sync.fallback.syncs >= 1
        await _until(lambda: not _alive(pid), "the silent helper to be ended")
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await sync.close()


async def test_close_hands_what_is_still_unanswered_to_the_thread(
    log_file: Path, gate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, calls = gate
    monkeypatch.setattr(log_sync_process, "CLOSE_WAIT_SECONDS", 0.3)
    sync = _gated(log_file)  # its sync is held at the gate, which stays shut
    held = asyncio.ensure_future(sync.wait())
    await _until(lambda: _calls(calls) == 1, "the sync to start")
    queued = asyncio.ensure_future(sync.wait())
    await asyncio.wait_for(sync.close(), 10)
    # Both were synced (on the thread) before close() returned: none is left waiting.
    assert held.done() and queued.done()
    assert held.exception() is None and queued.exception() is None
    assert sync.fallback.syncs == 1
    with pytest.raises(RuntimeError, match="closed"):
        await sync.wait()


async def test_a_failed_sync_fails_every_later_durable_write(tmp_path: Path) -> None:
    # fdatasync of a FIFO fails (EINVAL) in the kernel, as an I/O error on the log would. After
    # one, a later sync could succeed over pages the kernel dropped: nothing is synced again.
    fifo = tmp_path / "not-a-log"
    os.mkfifo(fifo)
    sync = LogSyncProcess(str(fifo))
    try:
        with pytest.raises(sqlite3.OperationalError, match="could not sync the database log: Invalid arg"):
            await sync.wait()
        assert sync.failure == "Invalid argument"
        with pytest.raises(sqlite3.OperationalError, match=re.escape("earlier (Invalid argument); nothing")):
            await sync.wait()
    finally:
        await sync.close()


async def test_close_right_after_the_helper_died_still_syncs_its_waiters(
    log_file: Path, gate: tuple[Path, Path]
) -> None:
    _, calls = gate
    sync = _gated(log_file)
    held = asyncio.ensure_future(sync.wait())
    await _until(lambda: _calls(calls) == 1, "the sync to start")
    pid = sync.helper_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    await asyncio.wait_for(sync.close(), 10)  # before its end is even noticed
    assert held.done() and held.exception() is None
    assert sync.fallback.syncs == 1
