"""Destinations that answered "too many requests", held back as a whole in this process.

A 429 (or a 503 with ``Retry-After``, or a chat API's rate-limit answer) used to delay only the
delivery that got it: the destination's other deliveries kept going at its full share of the
slots, each met its own 429 and spent one of its attempts on it. Measured: 40 events to a
Discord webhook that takes 5 requests in 2 s, with a schedule of 0, 2, 4, 8 and 16 s, ended
with 15 deliveries dead. Now the first such answer:

- **pauses** the destination: no attempt to it starts until the time it asked for (its
  ``Retry-After``, else :data:`DEFAULT_PAUSE_SECONDS`); the attempts in flight finish, and a
  later answer that asks for longer extends the pause;
- **halves** how many attempts it may have in flight (from as many as it had when it answered),
  a limit that then grows by one each time as many deliveries as the limit went through (once
  per round, as TCP's congestion window grows), until it is the destination's usual share again.

The attempts in flight when the pause begins often answer 429 too: only the first answer of a
pause halves the limit, or one burst would take it to one at once. What is learnt stays in this
process: on PostgreSQL each worker learns a destination's limit from its own answers.
"""

from __future__ import annotations

from collections.abc import Callable

# The pause after a 429 that says nothing of when to come back.
DEFAULT_PAUSE_SECONDS = 1.0


class RateLimits:
    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._until: dict[str, float] = {}  # paused until (the clock's time)
        self._cap: dict[str, int] = {}  # attempts in flight allowed while the limit grows back
        self._through: dict[str, int] = {}  # deliveries that went through since the cap last grew

    def paused(self, did: str) -> bool:
        until = self._until.get(did)
        if until is None:
            return False
        if self._clock() < until:
            return True
        del self._until[did]
        return False

    def limit(self, did: str, usual: int) -> int:
        """The destination's limit: its ``usual`` one, or less while it grows back."""
        cap = self._cap.get(did)
        return usual if cap is None else min(usual, cap)

    def held_back(self) -> list[str]:
        """The destinations paused or limited now (each has room of its own, not the default).
        A list: reading their limits drops the pauses that have ended from the map."""
        return [*self._until, *self._cap]

    def answered_too_many(self, did: str, seconds: float | None, in_flight: int) -> float:
        """A rate-limited answer from ``did``, which had ``in_flight`` attempts running; returns
        the seconds until its pause ends."""
        now = self._clock()
        if not self.paused(did):
            self._cap[did] = max(1, min(self._cap.get(did, in_flight), in_flight) // 2)
            self._through[did] = 0
        wait = DEFAULT_PAUSE_SECONDS if seconds is None else max(0.0, seconds)
        until = max(self._until.get(did, now), now + wait)
        self._until[did] = until
        return until - now

    def went_through(self, did: str, usual: int) -> None:
        """A delivery to ``did`` succeeded: its limit grows back towards ``usual``."""
        cap = self._cap.get(did)
        if cap is None:
            return
        through = self._through.get(did, 0) + 1
        if through < cap:
            self._through[did] = through
            return
        if cap + 1 >= usual:
            del self._cap[did]
            self._through.pop(did, None)
            return
        self._cap[did] = cap + 1
        self._through[did] = 0
