"""Logging a loop's database outage as a few lines instead of a traceback per failure.

A background loop (the dispatcher's leases, the router's passes) retries about once a second
while the database is away; a traceback each time came to over a thousand lines in ten seconds
and buried everything else. :class:`OutageLog` logs one line with the reason when the failures
start, then at most one every ``every`` seconds with how many failed since the last line, and
one when the loop works again. So that a database that fails on and off is not two lines per
flap, an outage that begins less than ``every`` seconds after the last line is told by the first
failure after that, if there is one. Anything else a loop catches is a bug or a refusal and keeps its
traceback (``log.exception``).

    outage = OutageLog(log, "leasing deliveries")
    try:
        leased = await store.lease_deliveries(...)
    except CONNECTION_LOST as exc:
        outage.failed(exc)
    else:
        outage.succeeded()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import asyncpg

from ingestlayer.store.unavailable import DATABASE_UNAVAILABLE

# What a session that was lost or ended under a statement raises besides DATABASE_UNAVAILABLE:
# asyncpg's state error when the server ended the session mid-operation ("cannot switch to state
# 15; another operation (2) is in progress", seen after pg_terminate_backend), and class 57
# (an administrator's or a crash's shutdown, a statement cancelled by a timeout). None of these
# says anything about the rows sent: trying again later may well succeed.
CONNECTION_LOST: tuple[type[Exception], ...] = (
    *DATABASE_UNAVAILABLE,
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
)

REASON_CHARS = 300


def reason(exc: BaseException) -> str:
    """The error's type and first line; the driver's error rather than SQLAlchemy's wrapper,
    whose text quotes the statement's parameters."""
    cause = getattr(exc, "orig", None) or exc
    first_line = (str(cause).splitlines() or [""])[0][:REASON_CHARS]
    return f"{type(cause).__name__}: {first_line}" if first_line else type(cause).__name__


class OutageLog:
    """A loop's database failures, logged one line at a time and at most every ``every`` s."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        every: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._every = every
        self._monotonic = monotonic
        self._since: float | None = None  # when the failures began; None while it works
        self._last_line: float | None = None
        self._announced = False  # whether this outage has had its first line
        self._total = 0
        self._unlogged = 0  # failures since the last line
        self._unannounced = 0  # failures of outages over before they had a line

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException, detail: str = "") -> None:
        """Called after each failure; ``detail`` is added to the first line."""
        now = self._monotonic()
        self._total += 1
        if self._since is None:
            self._since = now
        if not self._announced:
            # An outage that begins less than `every` after the last line waits for the next
            # failure after that: a database that works now and then (a nearly full disk lets a
            # write through after each checkpoint, twice a second) was a line as each outage
            # began and one as it ended, four a second for as long as it lasted.
            if self._last_line is not None and now - self._last_line < self._every:
                self._unannounced += 1
                return
            self._announced, self._last_line = True, now
            self._log.warning(
                "%s failed: database unavailable: %s; retrying%s%s",
                self._what,
                reason(exc),
                f"; {detail}" if detail else "",
                f" (and {self._unannounced} more failures, on and off, since the last line)"
                if self._unannounced
                else "",
            )
            self._unannounced = 0
            return
        self._unlogged += 1
        last_line = self._last_line
        assert last_line is not None  # the first line's
        if now - last_line >= self._every:
            self._log.warning(
                "%s still failing: %d failures in the last %.0fs, %.0fs since the first; latest: %s",
                self._what,
                self._unlogged,
                now - last_line,
                now - self._since,
                reason(exc),
            )
            self._last_line = now
            self._unlogged = 0

    def succeeded(self) -> None:
        """Called after each success: logs the recovery once, after failures."""
        if self._since is None:
            return
        now = self._monotonic()
        if self._announced:
            self._log.info(
                "%s works again, after %d failures over %.1fs", self._what, self._total, now - self._since
            )
            self._last_line = now
        self._since, self._announced = None, False
        self._total = self._unlogged = 0
