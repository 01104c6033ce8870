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
as does everything while the helper cannot run: it could not start, it stopped (killed, say),
or it left a request unanswered for ``ANSWER_TIMEOUT_SECONDS`` (stopped with SIGSTOP, a program
that is not the helper); a new one is tried at the first sync a minute later. Waiters of a
helper that stops are handed to the thread, whose sync begins after they asked. The helper
ignores SIGINT and SIGTERM and runs in a session of its own, so a Ctrl-C or a supervisor's
signal to the group does not end it before the server has drained; it exits when the server
closes its end of the pipe, or dies.

A failed sync is not tried again (see :func:`~ingestlayer.store.sqlite_durability.sync_failed`):
every durable write fails from then on, and ``/readyz`` says so, until the server restarts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ingestlayer.store.sqlite_durability import WalSync, settle, sync_failed, sync_failed_earlier

log = logging.getLogger("ingestlayer.store")

HELPER_SCRIPT = str(Path(__file__).with_name("log_sync_helper.py"))

# After the helper stopped or could not start, how long syncs run on the thread before the
# next try.
RESTART_AFTER_SECONDS = 60.0
# A request the helper has not answered in this long: it is stopped (SIGSTOP, a program that is
# not the helper) or its disk hangs; either way its waiters go to the thread. An fdatasync of the
# whole log (64 MiB at most) on a slow disk takes a few seconds.
ANSWER_TIMEOUT_SECONDS = 30.0
# How long close() waits for the sync in flight, and then for the helper to exit.
CLOSE_WAIT_SECONDS = 10.0
# How long a helper whose pipes closed is given to be reaped, to say how it ended.
EXIT_WAIT_SECONDS = 0.1


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

    def retire(self, *, wait: float, warn: str | None = None) -> None:
        """End it and reap it (blocking: run on a thread). With ``warn``, it stopped on its own
        or failed: say how, with its exit status when it has one."""
        if warn is not None:
            try:
                # Its pipes close a moment before it can be reaped.
                status: int | None = self.proc.wait(EXIT_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                status = None
            if status is not None:
                warn = f"killed by signal {-status}" if status < 0 else f"it exited with status {status}"
            log.warning(
                "the log sync process stopped (%s); the log is synced on a thread, and a new "
                "process is tried at the first sync after %.0f s",
                warn,
                RESTART_AFTER_SECONDS,
            )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with contextlib.suppress(OSError):
            self.proc.stdin.close()  # it exits at the end of its input
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
        self._overdue: asyncio.TimerHandle | None = None
        self._handed_over: set[asyncio.Task[None]] = set()  # a stopped helper's waiters, on the thread
        self._failure: str | None = None
        self._closed = False
        self._synced = 0
        self._adopt_lock = threading.Lock()

    @property
    def syncs(self) -> int:
        """How many fdatasync calls were made, by the helper and the thread (tests, metrics)."""
        return self._synced + self.fallback.syncs

    @property
    def failure(self) -> str | None:
        """Why a sync failed, once one has: nothing is synced again until restart."""
        return self._failure or self.fallback.failure

    @property
    def helper_pid(self) -> int | None:
        return self._helper.proc.pid if self._helper is not None else None

    async def wait(self) -> None:
        failure = self.failure
        if failure is not None:
            raise sync_failed_earlier(failure)
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
        owner = self._loop
        busy = self._helper is not None or self._handed_over
        if busy and owner is not None and not owner.is_closed():
            if owner is asyncio.get_running_loop():
                await self._drain()
            else:
                drained = asyncio.run_coroutine_threadsafe(self._drain(), owner)
                # Its loop may no longer run (stopped, not closed): then nothing waits on it.
                with contextlib.suppress(TimeoutError, concurrent.futures.CancelledError):
                    await asyncio.wait_for(asyncio.wrap_future(drained), 2 * CLOSE_WAIT_SECONDS)
        helper, self._helper = self._helper, None
        if helper is not None:  # its loop is gone: nobody reads its answers
            await asyncio.to_thread(helper.retire, wait=0)
        await asyncio.to_thread(self.fallback.close)

    # ---- internals ---------------------------------------------------------------------------

    async def _drain(self) -> None:
        """On the helper's loop: let the sync in flight end, then end the helper. What is still
        waiting after CLOSE_WAIT_SECONDS is synced on the thread."""
        pending = [*(self._running or []), *self._next]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_WAIT_SECONDS)
        helper = self._helper
        if helper is not None and (self._running or self._next):
            self._stopped(f"no answer within {CLOSE_WAIT_SECONDS:.0f} s while closing")
        elif helper is not None:
            self._detach()
            await asyncio.to_thread(helper.retire, wait=CLOSE_WAIT_SECONDS)
        if self._handed_over:
            await asyncio.gather(*self._handed_over, return_exceptions=True)

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
            # Its loop closed: nobody reads its answers, and its waiters are gone with it.
            helper = self._detach()
            threading.Thread(target=helper.retire, kwargs={"wait": 0}, daemon=True).start()
        if self._closed or time.monotonic() < self._retry_at:
            return False
        try:
            helper = _Helper(self._command, self._path)
        except (OSError, ValueError, TypeError) as exc:  # TypeError: no sys.executable
            self._retry_at = time.monotonic() + RESTART_AFTER_SECONDS
            log.warning(
                "could not start the log sync process (%s); the log is synced on a thread, and a "
                "new process is tried at the first sync after %.0f s",
                exc,
                RESTART_AFTER_SECONDS,
            )
            return False
        self._helper, self._loop = helper, loop
        self._running, self._next = None, []
        loop.add_reader(helper.answer_fd, self._answered)
        return True

    def _ask(self) -> None:
        helper, loop = self._helper, self._loop
        assert helper is not None and loop is not None
        self._running, self._next = self._next, []
        try:
            os.write(helper.ask_fd, b"s")
        except OSError as exc:
            self._stopped(f"could not ask it for a sync: {exc}")
            return
        self._overdue = loop.call_later(ANSWER_TIMEOUT_SECONDS, self._no_answer)

    def _no_answer(self) -> None:
        self._overdue = None
        if self._running is not None:
            self._stopped(f"no answer for {ANSWER_TIMEOUT_SECONDS:.0f} s")

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
        if self._running is None:
            return  # nothing asked (one answer per request: never, from the helper itself)
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        waiters, self._running = self._running, None
        errno = answers[0]
        if errno == 0:
            self._synced += 1
            settle(waiters, None)
            if self._next:
                self._ask()
            return
        self._failure = os.strerror(errno)
        settle(waiters, sync_failed(self._path, self._failure))
        queued, self._next = self._next, []
        settle(queued, sync_failed_earlier(self._failure))

    def _detach(self) -> _Helper:
        """Stop reading the helper's answers and forget it (its loop's state with it)."""
        helper, self._helper = self._helper, None
        assert helper is not None
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(helper.answer_fd)
        self._running, self._next = None, []
        return helper

    def _stopped(self, what: str) -> None:
        """On the helper's loop: it is gone, or answers no more. Its waiters, and every sync until
        the next try, use the thread; it is ended and reaped on a thread of its own."""
        self._retry_at = time.monotonic() + RESTART_AFTER_SECONDS
        waiters = [*(self._running or []), *self._next]
        helper = self._detach()
        threading.Thread(target=helper.retire, kwargs={"wait": 0, "warn": what}, daemon=True).start()
        if waiters:
            # A sync on the thread begins after this point, so after every one of their commits.
            task = asyncio.ensure_future(self._on_thread(waiters))
            self._handed_over.add(task)
            task.add_done_callback(self._handed_over.discard)

    async def _on_thread(self, waiters: list[asyncio.Future[None]]) -> None:
        try:
            await self.fallback.wait()
            error: BaseException | None = None
        except Exception as exc:  # the thread's sync failed too (or closed): so do these writes
            error = exc
        settle(waiters, error)
