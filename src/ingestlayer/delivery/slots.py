"""How many attempts each destination may have in flight in this process.

A process has ``delivery_concurrency`` slots. Without a limit per destination, a receiver that
hangs takes every slot as its backlog is leased, and every other destination's deliveries wait
for its timeouts: measured, 38 s behind a backlog of 600 to a receiver that never answered
(128 slots, webhook.out's 10 s timeout). So each destination has a limit:

- its own ``concurrency: N``, when it has one;
- otherwise three quarters of the slots (``delivery_concurrency_per_destination``), so another
  destination always finds a quarter of them free, at once;
- but a quarter of them (``fresh_limit``) until one of its attempts has ended in the last minute:
  a receiver that hangs from the start is not known to until its first attempts time out (up to
  a minute), and two such destinations, three quarters each, held every slot meanwhile, every
  other destination waiting; a healthy one is past this limit as soon as its first answers come;
- and an eighth (``slow_destination_concurrency``) while it is slow: at least an eighth of its
  attempts that ended in the last minute, or its last 8 in a row, took longer than
  ``slow_destination_seconds`` (every timeout does). Its attempts in flight are not cut short;
  it gets no new slot until it is below that limit.

Slow destinations together hold at most ``slow_pool_limit`` slots (half): eight receivers that
hang, at an eighth each, held every slot for as long as they kept hanging, and one project can
point eight endpoints at a black hole. Fresh destinations are not pooled: a receiver just added,
or every receiver after a restart, is fresh too, and healthy ones must not wait behind those
that hang; a fresh one that hangs is slow after its first timeouts. An attempt counts against
the pool if it started while its destination was slow (its ``Slot`` says so), whatever the
destination has become when it ends; the pool's room is offered to the slow destinations in
turn, so a lease never takes more for them than may start. A project's destinations together,
fresh ones included, are held to its share of the slots (project_shares.py), so that one
project's endpoints that hang from the start never hold another project's deliveries up. A destination's own
``concurrency: N`` (a project's setting) raises its share only while it is healthy: fresh or
slow, it is held like any other, or one hanging destination with ``concurrency: 10000`` held
every slot of the process.

A destination alone keeps most of the slots (a healthy receiver is not slowed down), and a slow
one is soon held to a few: its first timeouts do it. A busy receiver whose answers are slow now
and then is not: a single slow answer used to hold it to the slow limit for a minute, so one in
200 held it there for good, and it fell behind (measured on PostgreSQL: a backlog of 25,000 at
600 events/s, against under 300 with the full share).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ingestlayer.delivery.project_shares import ProjectShares
from ingestlayer.delivery.project_shares import add_count as _add
from ingestlayer.delivery.rate_limits import RateLimits
from ingestlayer.records import LeasedDelivery, NewDelivery
from ingestlayer.store.lease_window import Room

# A destination's state, which sets its share of the slots.
FRESH, SLOW, HEALTHY = "fresh", "slow", "healthy"


@dataclass(frozen=True)
class Slot:
    """A slot taken by ``start``, handed back to ``finish``: whether it counts against the slow
    destinations' pool (taken while its destination was slow) goes with the attempt, since its
    destination's state may change before the attempt ends."""

    pooled: bool


FREE_SLOT, POOLED_SLOT = Slot(False), Slot(True)

# The attempts a destination is judged by: those that ended in the last minute (counted in two
# halves, so that the oldest half is dropped at once).
SLOW_FOR_SECONDS = 60.0
# The share of them that must have been slow for the destination to count as slow.
SLOW_SHARE = 1 / 8
# Or so many slow ones in a row: a busy receiver that starts hanging has a minute of fast
# attempts behind it, and would keep its whole share for most of a minute by SLOW_SHARE alone.
SLOW_STREAK = 8


class _Recent:
    """How many of a destination's attempts ended, and how many were slow, in the last
    ``SLOW_FOR_SECONDS`` (give or take half of it)."""

    __slots__ = ("done", "done_before", "slow", "slow_before", "start", "streak")

    def __init__(self, now: float) -> None:
        self.start = now
        self.done = self.slow = self.done_before = self.slow_before = 0
        self.streak = 0  # slow attempts in a row, the last ones to end

    def roll(self, now: float) -> None:
        half = SLOW_FOR_SECONDS / 2
        if now - self.start < half:
            return
        if now - self.start < 2 * half:
            self.done_before, self.slow_before = self.done, self.slow
        else:
            self.done_before = self.slow_before = 0
        self.done = self.slow = 0
        self.start = now

    def is_slow(self, now: float) -> bool:
        self.roll(now)
        done = self.done + self.done_before
        if done == 0:
            return False
        return self.streak >= SLOW_STREAK or self.slow + self.slow_before >= done * SLOW_SHARE

    def idle(self) -> bool:
        return self.done + self.done_before == 0


class DestinationSlots:
    def __init__(
        self,
        *,
        per_destination: int,
        slow_limit: int,
        slow_seconds: float,
        fresh_limit: int | None = None,
        slow_pool_limit: int | None = None,
        per_project: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_destination = max(1, per_destination)
        self.slow_limit = max(1, slow_limit)
        self.fresh_limit = min(self.per_destination, max(1, fresh_limit or self.per_destination))
        # None: slow destinations are not held together, only each to its slow limit.
        self.slow_pool_limit = None if slow_pool_limit is None else max(self.slow_limit, slow_pool_limit)
        self._shares = {FRESH: self.fresh_limit, SLOW: self.slow_limit, HEALTHY: self.per_destination}
        self.slow_seconds = slow_seconds
        self._clock = clock
        self._busy: dict[str, int] = {}  # attempts in flight
        # Attempts in flight that started while their destination was slow (POOLED_SLOT),
        # counted against slow_pool_limit until they end.
        self._slow_total = 0
        self._turn = 0  # which slow destination the pool's room is offered to first
        self._pending: dict[str, int] = {}  # handed over by the router, not started yet
        self._own: dict[str, int] = {}  # `concurrency: N` of the destinations that have one
        self._recent: dict[str, _Recent] = {}  # destinations with an attempt that ended lately
        # Destinations whose room may have cut the last lease short: leased for again once
        # they have room enough (finish), not at the next poll.
        self._wanted: set[str] = set()
        # Destinations that answered "too many requests": paused, then limited (rate_limits.py).
        self.rate = RateLimits(clock)
        # Each project's share of the slots, whatever its number of destinations (None: no limit
        # beyond the destinations'; project_shares.py).
        self.projects = None if per_project is None else ProjectShares(per_project)

    def in_flight(self, did: str) -> int:
        return self._busy.get(did, 0)

    def limit(self, did: str) -> int:
        return self._limit(did, self._state(did))

    def _limit(self, did: str, state: str) -> int:
        if self.rate.paused(did):
            return 0
        return self.rate.limit(did, self._usual(did, state))

    def _usual(self, did: str, state: str) -> int:
        """The limit its state and its own setting give, before any rate limit it met."""
        share = self._shares[state]
        own = self._own.get(did)
        if own is None:
            return share
        # Its own limit lowers its share, and raises it only while it is healthy.
        return own if state == HEALTHY else min(own, share)

    def _state(self, did: str) -> str:
        recent = self._recent.get(did)
        if recent is None:
            return FRESH
        if recent.is_slow(self._clock()):
            return SLOW
        if recent.idle():
            del self._recent[did]
            return FRESH
        return HEALTHY

    def _share_pool(self, known: dict[str, int]) -> None:
        """Cut the slow destinations' room to what the pool has left, shared out: offered to
        each in turn (one first, then the next), never more in all than may start. Offering the
        whole rest to each leased several times what could start, and released it again."""
        assert self.slow_pool_limit is not None
        slow = [did for did in known if self._state(did) == SLOW]
        if not slow:
            return
        handed = sum(self._pending.get(did, 0) for did in slow)  # will take pooled slots
        left = max(0, self.slow_pool_limit - self._slow_total - handed)
        self._turn = (self._turn + 1) % len(slow)
        for did in slow[self._turn :] + slow[: self._turn]:
            n = min(max(0, known[did]), left)
            known[did] = n
            left -= n

    def room(self) -> Room:
        """Each destination's free slots, for the next lease: listed for those with attempts in
        flight, a limit of their own or attempts that ended lately; the default for any other."""
        known = {did: self.limit(did) for did in (*self._own, *self._recent, *self.rate.held_back())}
        for counts in (self._busy, self._pending):
            for did, n in counts.items():
                known[did] = known.get(did, self.limit(did)) - n
        if self.slow_pool_limit is not None:
            self._share_pool(known)
        if self.projects is not None:
            self.projects.cut(known, self.fresh_limit)
        # Any other destination has not been heard from lately: no more is leased for it than
        # may start (it was leased its whole share, and all but the fresh limit released again).
        return Room(known, self.fresh_limit)

    def take(self, fresh: list[NewDelivery], free: int) -> tuple[list[NewDelivery], int]:
        """Which of the router's fresh deliveries to start at once: up to ``free``, each
        destination's up to its room. Returned first, then the rest, with how many are taken."""
        if free <= 0:
            return fresh, 0
        if self.projects is not None:
            for d in fresh:
                self.projects.note(d.destination_id, d.project_id)
        room = self.room()
        left: dict[str, int] = {}
        project_left: dict[str, int] = {}  # what each project has left, where it is limited
        first: list[NewDelivery] = []
        rest: list[NewDelivery] = []
        for d in fresh:
            n = left.get(d.destination_id)
            if n is None:
                n = room.of(d.destination_id)
            p = project_left.get(d.project_id)
            if p is None and self.projects is not None:
                p = self.projects.left(d.destination_id)
            if n > 0 and (p is None or p > 0) and len(first) < free:
                first.append(d)
                n -= 1
                if p is not None:
                    project_left[d.project_id] = p - 1
            else:
                rest.append(d)
            left[d.destination_id] = n
        return (first + rest if first and rest else fresh), len(first)

    def hold(self, leased: Sequence[LeasedDelivery], n: int) -> None:
        """Count deliveries handed over (``n`` = 1) until they start, or stop counting them (-1)."""
        for d in leased:
            _add(self._pending, d.destination_id, n)
            if self.projects is not None:
                self.projects.note(d.destination_id, d.project_id)
                self.projects.add(d.destination_id, n)

    def start(self, did: str, own_limit: int | None, project_id: str | None = None) -> Slot | None:
        """Take a slot for an attempt to ``did`` (of ``project_id``), to hand back to ``finish``;
        None when it, or its project, has none free."""
        if self.projects is not None:
            if project_id is not None:
                self.projects.note(did, project_id)
            project_left = self.projects.left(did)
            if project_left is not None and project_left <= 0:
                self._wanted.add(did)  # leased for again once its project has room (finish)
                return None
        if own_limit is not None:
            self._own[did] = own_limit
        else:
            self._own.pop(did, None)
        state = self._state(did)
        if self._busy.get(did, 0) >= self._limit(did, state):
            return None
        slot = FREE_SLOT
        if state == SLOW and self.slow_pool_limit is not None:
            if self._slow_total >= self.slow_pool_limit:
                return None  # slow destinations hold all they may together
            self._slow_total += 1
            slot = POOLED_SLOT
        _add(self._busy, did, 1)
        if self.projects is not None:
            self.projects.add(did, 1)
        return slot

    def leased(self, room: Room, want: int, got: int) -> None:
        """After a lease of ``got`` out of ``want``: remember the destinations whose room may
        have cut it short."""
        if got < want:
            self._wanted.update(did for did, n in room.known.items() if n < want)

    def answered_too_many(self, did: str, seconds: float | None) -> float:
        """An attempt to ``did`` (still in flight) was answered "too many requests", to come back
        in ``seconds``: pause and limit the destination. Returns the seconds the pause lasts."""
        return self.rate.answered_too_many(did, seconds, self._busy.get(did, 0))

    def finish(self, did: str, seconds: float, slot: Slot = FREE_SLOT, *, delivered: bool = False) -> bool:
        """Free the ``slot`` of an attempt that took ``seconds`` (``delivered``: its delivery went
        through). True when a lease was cut short by this destination's room and it now has
        enough to lease for again: an eighth of its limit (at least one), or a pooled slot is free
        for another slow destination a lease left out.
        Leasing for every slot freed would make a transaction per attempt."""
        now = self._clock()
        recent = self._recent.get(did)
        if recent is None:
            recent = self._recent[did] = _Recent(now)
        recent.roll(now)
        recent.done += 1
        if seconds > self.slow_seconds:
            recent.slow += 1
            recent.streak += 1
        else:
            recent.streak = 0
        left = _add(self._busy, did, -1)
        # Its project was full, and now has room again for what leases left out.
        project_has_room = self.projects is not None and self.projects.add(did, -1)
        if delivered:
            self.rate.went_through(did, self._usual(did, self._state(did)))
        if slot.pooled:
            self._slow_total -= 1
            if any(w != did and self._state(w) == SLOW for w in self._wanted):
                return True  # a slow destination left out of a lease for want of pool has room
        if project_has_room:
            return True
        if did not in self._wanted:
            return False
        limit = self.limit(did)
        if limit - left - self._pending.get(did, 0) < max(1, limit // 8):
            return False
        self._wanted.discard(did)
        return True
