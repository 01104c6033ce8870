"""The SQLite log's ``fdatasync`` in a helper process of its own, answered on the event loop.

:class:`~ingestlayer.store.sqlite_durability.WalSync` syncs on a thread. That thread needs the
GIL to wake, to call ``fdatasync`` and to hand the result back, and the event loop, busy with
requests, holds it: every hand-off goes through the interpreter's forced switching, about 20
``futex`` calls per sync, several microseconds of both threads' time per event. A process
shares no GIL. The loop writes one byte down a pipe to ask for a sync and learns of its end
from the answer pipe, which it watches like a socket; the helper runs nothing but ``read``,
``fdatasync`` and ``write``. Measured at 64 connections of single events (SQLite, alternating
4 s runs): 20,454-20,706 requests/s against 17,900-18,090 on the thread, and 48 µs of the
server's CPU per event against 58.5.

The promise is the thread's: a waiter returns once an ``fdatasync`` *that began after it
asked* has ended, so after its commit. One sync is in flight at a time; whoever asks meanwhile
waits for the next, which serves them all.

The helper belongs to one event loop, the first to ask. Waiters on other loops (another
thread's, a loop after this one closed while the first still runs elsewhere) use the thread,
as does everything while the helper cannot run: it could not start, or it stopped (killed,
say) and is started again at most once a minute. A sync's waiters never lose their place: those
of a helper that stopped are served by the thread, with a sync that begins after they asked.
The helper ignores SIGINT and SIGTERM and runs in a session of its own, so a Ctrl-C or a
supervisor's signal to the group does not end it before the server has drained; it exits when
the server closes its end of the pipe, or dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ingestlayer.store.sqlite_durability import WalSync, settle

log = logging.getLogger("ingestlayer.store")

# After the helper stopped or could not start, how long syncs run on the thread before the
# next try.
RESTART_AFTER_SECONDS = 60.0
# How long close() waits for the sync in flight, and then for the helper to exit.
CLOSE_WAIT_SECONDS = 10.0
# How long a helper whose pipes closed is given to be reaped, to say how it ended.
EXIT_WAIT_SECONDS = 0.1


HELPER_SCRIPT = str(Path(__file__).with_name("log_sync_helper.py"))


def helper_command() -> list[str]:
    """The helper, run by path so that ``ps`` names it; -I -S: no site, no environment."""
    return [sys.executable, "-I", "-S", HELPER_SCRIPT]


class _Helper:
    """One running helper process and its two pipes."""

    def __init__(self, command: Sequence[str], log_path: str) -> None:
        log_fd = os.open(log_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            self.proc = subprocess.Popen(
                [*command, str(log_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                pass_fds=(log_fd,),
                start_new_session=True,
                bufsize=0,
            )
        finally:
            os.close(log_fd)  # the helper holds its own
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.ask_fd = self.proc.stdin.fileno()
        self.answer_fd = self.proc.stdout.fileno()
        os.set_blocking(self.answer_fd, False)

    def exit_reason(self) -> str | None:
        """How it ended, once it has: its pipes close a moment before it can be reaped, so
        this waits a little (a rare path: the helper died)."""
        try:
            status = self.proc.wait(EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            return None
        return f"killed by signal {-status}" if status < 0 else f"it exited with status {status}"

    def stop(self, *, wait: float = 0.0) -> None:
        """Close our ends (the helper exits at the end of its input) and reap it."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()


class LogSyncProcess:
    """``await sync.wait()`` after a commit returns once that commit is on disk."""

    def __init__(self, wal_path: str, *, command: Sequence[str] | None = None) -> None:
        self._path = wal_path
        self._command = list(command) if command is not None else helper_command()
        self.fallback = WalSync(wal_path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._helper: _Helper | None = None
        self._retry_at = 0.0
        self._running: list[asyncio.Future[None]] | None = None  # the sync in flight's waiters
        self._next: list[asyncio.Future[None]] = []
        self._closed = False
        self._synced = 0
        self._adopt_lock = threading.Lock()

    @property
    def syncs(self) -> int:
        """How many fdatasync calls were made, by the helper and the thread (tests, metrics)."""
        return self._synced + self.fallback.syncs

    @property
    def helper_pid(self) -> int | None:
        return self._helper.proc.pid if self._helper is not None else None

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._serves(loop):
            await self.fallback.wait()
            return
        fut = loop.create_future()
        self._next.append(fut)
        if self._running is None:
            self._ask()
        await fut

    async def close(self) -> None:
        self._closed = True
        helper, loop = self._helper, self._loop
        if helper is not None and loop is asyncio.get_running_loop():
            pending = [*(self._running or []), *self._next]
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_WAIT_SECONDS)
            loop.remove_reader(helper.answer_fd)
            self._helper = None
            await asyncio.to_thread(helper.stop, wait=CLOSE_WAIT_SECONDS)
        elif helper is not None:  # its loop is gone (or elsewhere): nothing is read any more
            self._helper = None
            await asyncio.to_thread(helper.stop)
        await asyncio.to_thread(self.fallback.close)

    # ---- internals ---------------------------------------------------------------------------

    def _serves(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Whether this loop's waiters go to the helper (else to the thread)."""
        if self._helper is not None and loop is self._loop:
            return True
        with self._adopt_lock:  # loops on two threads asking first at once start one helper
            return self._adopt(loop)

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> bool:
        if self._helper is not None:
            if loop is self._loop:
                return True
            if self._loop is not None and not self._loop.is_closed():
                return False  # the helper answers on another loop, still running
            self._drop_helper()  # its loop closed: nobody reads its answers
        if self._closed or time.monotonic() < self._retry_at:
            return False
        try:
            helper = _Helper(self._command, self._path)
        except OSError as exc:
            self._retry_at = time.monotonic() + RESTART_AFTER_SECONDS
            log.warning("could not start the log sync process (%s); the log is synced on a thread", exc)
            return False
        self._helper, self._loop = helper, loop
        self._running, self._next = None, []
        loop.add_reader(helper.answer_fd, self._answered)
        return True

    def _ask(self) -> None:
        assert self._helper is not None
        self._running, self._next = self._next, []
        try:
            os.write(self._helper.ask_fd, b"s")
        except OSError as exc:
            self._stopped(f"could not ask it for a sync: {exc}")

    def _answered(self) -> None:
        helper = self._helper
        if helper is None:
            return
        try:
            answers = os.read(helper.answer_fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            answers = b""
        if not answers:
            self._stopped("its answers ended")
            return
        for errno in answers:
            waiters, self._running = self._running or [], None
            self._synced += 1
            error: BaseException | None = None
            if errno:
                log.error("fdatasync of %s failed: %s", self._path, os.strerror(errno))
                error = sqlite3.OperationalError(f"could not sync the database log: {os.strerror(errno)}")
            settle(waiters, error)
        if self._next and self._running is None:
            self._ask()

    def _stopped(self, what: str) -> None:
        """The helper is gone: its waiters, and the rest until it runs again, use the thread."""
        why = self._helper.exit_reason() if self._helper is not None else None
        log.warning(
            "the log sync process stopped (%s); the log is synced on a thread, and a new process "
            "is tried in %.0f s",
            why or what,
            RESTART_AFTER_SECONDS,
        )
        self._retry_at = time.monotonic() + RESTART_AFTER_SECONDS
        waiters = [*(self._running or []), *self._next]
        self._drop_helper()
        if waiters:
            # A sync on the thread begins after this point, so after every one of their commits.
            task = asyncio.ensure_future(self._on_thread(waiters))
            _keep.add(task)
            task.add_done_callback(_keep.discard)

    async def _on_thread(self, waiters: list[asyncio.Future[None]]) -> None:
        try:
            await self.fallback.wait()
            error: BaseException | None = None
        except Exception as exc:  # the thread's sync failed too: so do these writes
            error = exc
        settle(waiters, error)

    def _drop_helper(self) -> None:
        helper, self._helper = self._helper, None
        self._running, self._next = None, []
        if helper is None:
            return
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(helper.answer_fd)
        helper.stop()


# Tasks that serve a stopped helper's waiters, kept until done (the loop holds tasks weakly).
_keep: set[asyncio.Task[None]] = set()
