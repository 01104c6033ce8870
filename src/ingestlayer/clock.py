"""The clock that stored times are stamped and compared with: the database's.

One process stamps a lease's deadline, a retry's due time or a route job's; another compares
it with its own "now" to decide whether the work is free to take. On PostgreSQL those processes
may run on different machines, and a worker whose clock ran ahead of the others by more than a
lease would take deliveries another worker still holds and send them twice (one running behind
would leave retries waiting). So every process reads the wall clock through :func:`now`, which
adds the offset to the database server's clock measured by :func:`sync_with`: on one database,
all processes agree to within a round trip, whatever their machines' clocks say.

SQLite has no clock of its own and its processes share one machine's, so the offset stays 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

log = logging.getLogger("ingestlayer.clock")

# How often a process measures the offset again (clocks drift; NTP steps them).
SYNC_INTERVAL_SECONDS = 60.0
# Readings per measurement; the one with the shortest round trip is kept.
READINGS = 3
# An offset larger than this is worth telling the operator about, once per change.
NOTABLE_OFFSET_SECONDS = 1.0


class DatabaseClock:
    """This machine's clock, moved by the offset to the database's last measured."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.offset = 0.0  # how far the database's clock is ahead of ours (negative: behind)
        self._reported = 0.0

    def now(self) -> float:
        """Seconds since the epoch on the database's clock."""
        return self.wall() + self.offset

    async def sync_with(self, read_database_clock: Callable[[], Awaitable[float]]) -> float:
        """Measure the database's clock against ours and use it from now on; return the offset.

        Each reading is taken between two of our own and assumed to fall halfway between them;
        the one with the shortest round trip bounds the error best (to half of that trip)."""
        best: tuple[float, float] | None = None  # (round trip, offset)
        for _ in range(READINGS):
            before = self.wall()
            theirs = await read_database_clock()
            after = self.wall()
            trip = after - before
            if best is None or trip < best[0]:
                best = (trip, theirs - (before + after) / 2)
        assert best is not None
        self.offset = best[1]
        notable = abs(self.offset) >= NOTABLE_OFFSET_SECONDS
        if notable and abs(self.offset - self._reported) >= NOTABLE_OFFSET_SECONDS:
            log.warning(
                "this machine's clock is %.1f s %s the database's; stored times use the database's",
                abs(self.offset),
                "behind" if self.offset > 0 else "ahead of",
            )
            self._reported = self.offset
        return self.offset


# One per process: a process works with one database.
CLOCK = DatabaseClock()
now = CLOCK.now
sync_with = CLOCK.sync_with
