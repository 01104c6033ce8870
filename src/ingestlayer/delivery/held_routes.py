"""Events whose pipelines wait on a call (a model, a lookup), routed in tasks of their own.

A router pass used to wait for its slowest call before it stored anything or took more events,
so one project's slow model held up the routing of every project on the worker, by up to the
step's timeout. Now each such event is routed in a task: the pass stores the rest at once, and
what a task produced is stored by the next pass after it finished, in one transaction with
whatever else finished meanwhile.

While an event is held its route job stays leased to this router: the router renews the leases
of held events (see :meth:`HeldRoutes.renew_due`), so a call that outlasts the lease does not let
another router take the event and route it again. A project holds at most ``PROJECT_HELD``
events and runs at most ``PROJECT_CONCURRENCY`` at once; what the router leases for it beyond
that is given back, uncounted, and put in line: due again about when the project will have room
for it, one after another at the pace its events have been taking (see :meth:`HeldRoutes.put_off`).
A project whose model cannot keep up thus waits its turn: it neither fills the worker's memory
nor the room of other projects, its backlog is not leased again and again meanwhile, its model is
not left idle waiting for a delay to pass, and other projects' events are not stuck behind a
backlog that comes due all at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ingestlayer import metrics
from ingestlayer.records import NewDelivery, RouteLease, StoredEvent

log = logging.getLogger("ingestlayer.router")

# Events one project may have routing in the background on one worker, and run at once.
PROJECT_HELD = 256
PROJECT_CONCURRENCY = 64
# Events held by one worker in all; past it, events whose pipelines may wait are put off as a
# full project's are, and the others are still routed.
MAX_HELD = 4096
# Events a full project cannot take are put in line: the first due once the events it holds but
# has not started yet would be started (at least PUT_OFF_FIRST_SECONDS from now), the next one
# event's time later each, and none more than PUT_OFF_MAX_SECONDS away (a line longer than that
# is looked at again then). An event's time is how long the project's routes take (an average of
# the recent ones, and at least as long as the oldest one running now), over its concurrency.
PUT_OFF_FIRST_SECONDS = 1.0
PUT_OFF_MAX_SECONDS = 120.0
ASSUMED_ROUTE_SECONDS = 1.0  # before any of the project's routes has finished
DURATION_WEIGHT = 0.2  # of each new route's duration in the average


@dataclass(slots=True)
class Routed:
    """One event's routing: its deliveries and trace, or how long before it is tried again."""

    deliveries: list[NewDelivery] = field(default_factory=list)
    trace: list[dict[str, Any]] | None = None
    retry_in: float | None = None
    version: int | None = None  # of the project's configuration it failed by, when tried again
    # Given up on (its last attempt failed): the trace it is stored with instead, due again at
    # once, if the project's configuration has changed since (the change may be the fix).
    unless_changed: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class Held:
    event: StoredEvent
    token: float  # the route job's lease token, renewed while the event is held
    attempt: int
    task: asyncio.Task[None] | None = None
    started_at: float | None = None  # when it got one of the project's slots
    result: Routed | None = None


class HeldRoutes:
    def __init__(self, lease_seconds: float) -> None:
        self._lease_seconds = lease_seconds
        self._held: dict[str, Held] = {}
        self._per_project: Counter[str] = Counter()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._line_ends: dict[str, float] = {}  # when the last event a project put off is due
        self._durations: dict[str, float] = {}  # the project's routes, on average (seconds)
        self._renewed_at = 0.0

    def __len__(self) -> int:
        return len(self._held)

    def full(self) -> bool:
        return len(self._held) >= MAX_HELD

    def has_room(self, project_id: str) -> bool:
        return self._per_project[project_id] < PROJECT_HELD

    def put_off(self, project_id: str, n: int) -> list[float]:
        """Seconds until each of ``n`` events of this full project is due again: in line
        behind those put off before, one event's time apart."""
        now = time.monotonic()
        held = [h for h in self._held.values() if h.event.project_id == project_id and h.result is None]
        running = [h.started_at for h in held if h.started_at is not None]
        duration = self._durations.get(project_id, ASSUMED_ROUTE_SECONDS)
        if running:  # a model that stopped answering shows here before any route finishes
            duration = max(duration, now - min(running))
        gap = duration / PROJECT_CONCURRENCY
        waiting = len(held) - len(running)
        start = max(self._line_ends.get(project_id, 0.0), now + max(PUT_OFF_FIRST_SECONDS, waiting * gap))
        delays = [min(start + i * gap - now, PUT_OFF_MAX_SECONDS) for i in range(1, n + 1)]
        self._line_ends[project_id] = min(start + n * gap, now + PUT_OFF_MAX_SECONDS)
        metrics.ROUTING_PUT_OFF.inc(n)
        return delays

    def _finished_one(self, held: Held) -> None:
        if held.started_at is None:
            return
        project = held.event.project_id
        took = time.monotonic() - held.started_at
        average = self._durations.get(project)
        self._durations[project] = took if average is None else average + DURATION_WEIGHT * (took - average)

    def start(
        self,
        event: StoredEvent,
        token: float,
        attempt: int,
        route: Callable[[], Awaitable[Routed]],
        on_finished: Callable[[], None],
    ) -> None:
        """Route ``event`` in a task of its own; ``on_finished`` is called when it has."""
        if not self._held:
            self._renewed_at = time.monotonic()  # leased just now: nothing to renew for a while
        previous = self._held.get(event.id)
        if previous is not None:  # its lease ran out and this router took it again
            self._drop(previous)
        held = Held(event, token, attempt)
        slot = self._slots.get(event.project_id)
        if slot is None:
            slot = self._slots[event.project_id] = asyncio.Semaphore(PROJECT_CONCURRENCY)

        async def run() -> None:
            try:
                async with slot:
                    held.started_at = time.monotonic()
                    held.result = await route()
            except Exception:
                # route() turns routing's own errors into a retry; one past it (a bug) ended
                # this task unseen, and the event stayed held, its lease renewed, never routed.
                # Let go of it: it is leased and routed again once its lease runs out.
                log.exception(
                    "routing event %s failed unexpectedly; it is routed again when its lease expires",
                    event.id,
                )
                held.task = None  # this task: nothing to cancel
                self._drop(held)
                return
            self._finished_one(held)
            on_finished()

        held.task = asyncio.create_task(run(), name=f"route {event.id}")
        self._held[event.id] = held
        self._per_project[event.project_id] += 1
        metrics.ROUTING_HELD.set(len(self._held))

    def finished(self) -> list[Held]:
        return [h for h in self._held.values() if h.result is not None]

    def forget(self, done: list[Held]) -> None:
        """Stop holding these: their routing is stored, or given back."""
        for held in done:
            self._drop(held)

    @staticmethod
    def lease(held: list[Held]) -> RouteLease:
        """The leases of these events, under the tokens they hold now."""
        return RouteLease(
            0.0,
            [h.event for h in held],
            {h.event.id: h.attempt for h in held},
            None,
            {h.event.id: h.token for h in held},
        )

    def renew_due(self, now: bool = False) -> dict[str, float] | None:
        """The tokens of the events to renew, if the leases are a third of the way through
        (or ``now``)."""
        if not self._held or (not now and time.monotonic() - self._renewed_at < self._lease_seconds / 3):
            return None
        return {eid: h.token for eid, h in self._held.items()}

    def renewed(self, asked: dict[str, float], renewed: dict[str, float]) -> int:
        """Take the renewed tokens; drop (and stop routing) the events whose lease ran out and
        went to another router. Returns how many were dropped."""
        self._renewed_at = time.monotonic()  # after the renewal only: a failed one is tried again
        lost = 0
        for eid, token in asked.items():
            held = self._held.get(eid)
            if held is None or held.token != token:
                continue  # stored or taken again meanwhile
            if eid in renewed:
                held.token = renewed[eid]
            else:
                self._drop(held)
                lost += 1
        return lost

    async def cancel_waiting(self) -> list[Held]:
        """Stop the routes that have not started (no slot yet), at shutdown: they are given
        back at once rather than started in the grace period only to be cut short."""
        waiting = [h for h in self._held.values() if h.started_at is None and h.result is None]
        await self._cancel(waiting)
        self.forget(waiting)
        return waiting

    def running(self) -> list[asyncio.Task[None]]:
        return [h.task for h in self._held.values() if h.task is not None and h.result is None]

    async def stop(self) -> tuple[list[Held], list[Held]]:
        """Cancel what still runs. Returns (finished, cut short); neither is held any more."""
        finished = self.finished()
        cut = [h for h in self._held.values() if h.result is None]
        await self._cancel(cut)
        self.forget(finished + cut)
        return finished, cut

    @staticmethod
    async def _cancel(held: list[Held]) -> None:
        tasks = [h.task for h in held if h.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _drop(self, held: Held) -> None:
        """Stop holding ``held`` (if it is still the one held for its event)."""
        if self._held.get(held.event.id) is not held:
            return
        del self._held[held.event.id]
        metrics.ROUTING_HELD.set(len(self._held))
        if held.task is not None and not held.task.done():
            held.task.cancel()
        project = held.event.project_id
        self._per_project[project] -= 1
        if self._per_project[project] <= 0:
            del self._per_project[project]
            self._slots.pop(project, None)
            self._line_ends.pop(project, None)
            if len(self._durations) > MAX_HELD:  # forget what projects holding nothing took
                self._durations = {p: d for p, d in self._durations.items() if p in self._per_project}
