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
that is given back, uncounted, to be due again about when the project will have room for it (by
how fast its events have been finishing). A project whose model cannot keep up thus waits its
turn, and neither fills the worker's memory nor the room of other projects; its backlog is not
leased again and again meanwhile, and its model is not left idle waiting for a delay to pass.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from ingestlayer.records import NewDelivery, RouteLease, StoredEvent

# Events one project may have routing in the background on one worker, and run at once.
PROJECT_HELD = 256
PROJECT_CONCURRENCY = 64
# Events held by one worker in all; past it the router takes no more events until some finish.
MAX_HELD = 4096
# An event a full project cannot take is due again after at least the first delay, plus its place
# in the line (the events put off since the project was last not full) over the rate at which
# the project's events finish; at most the maximum. Until some have finished, the rate is taken
# to be its concurrency over the longest step timeout there is (a model that never answers).
PUT_OFF_FIRST_SECONDS = 1.0
PUT_OFF_MAX_SECONDS = 30.0
ASSUMED_RATE = PROJECT_CONCURRENCY / 60.0
RATE_WINDOW = 256  # finishes per project the rate is measured over
RATE_MAX_AGE_SECONDS = 60.0


@dataclass(slots=True)
class Routed:
    """One event's routing: its deliveries and trace, or how long before it is tried again."""

    deliveries: list[NewDelivery] = field(default_factory=list)
    trace: list[dict[str, Any]] | None = None
    retry_in: float | None = None


@dataclass(slots=True)
class Held:
    event: StoredEvent
    token: float  # the route job's lease token, renewed while the event is held
    attempt: int
    task: asyncio.Task[None] | None = None
    result: Routed | None = None


class HeldRoutes:
    def __init__(self, lease_seconds: float) -> None:
        self._lease_seconds = lease_seconds
        self._held: dict[str, Held] = {}
        self._per_project: Counter[str] = Counter()
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._put_off: Counter[str] = Counter()  # events put off since the project was full
        self._finishes: dict[str, deque[float]] = {}
        self._renewed_at = 0.0

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._held

    def full(self) -> bool:
        return len(self._held) >= MAX_HELD

    def has_room(self, project_id: str) -> bool:
        if self._per_project[project_id] < PROJECT_HELD:
            self._put_off.pop(project_id, None)
            return True
        return False

    def put_off_delay(self, project_id: str) -> float:
        """How long an event of this full project waits before it is due again."""
        self._put_off[project_id] += 1
        wait = self._put_off[project_id] / self._rate(project_id)
        return min(PUT_OFF_FIRST_SECONDS + wait, PUT_OFF_MAX_SECONDS)

    def _rate(self, project_id: str) -> float:
        """Events of the project finished per second, lately."""
        finishes = self._finishes.get(project_id)
        now = time.monotonic()
        while finishes and now - finishes[0] > RATE_MAX_AGE_SECONDS:
            finishes.popleft()
        if not finishes or len(finishes) < 2:
            return ASSUMED_RATE
        return max(len(finishes) / max(now - finishes[0], 1.0), ASSUMED_RATE)

    def _finished_one(self, project_id: str) -> None:
        finishes = self._finishes.get(project_id)
        if finishes is None:
            if len(self._finishes) >= MAX_HELD:  # forget the projects holding nothing now
                for idle in [p for p in self._finishes if p not in self._per_project]:
                    del self._finishes[idle]
            finishes = self._finishes[project_id] = deque(maxlen=RATE_WINDOW)
        finishes.append(time.monotonic())

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
        previous = self._held.pop(event.id, None)
        if previous is not None:  # its lease ran out and this router took it again
            self._drop(previous)
        held = Held(event, token, attempt)
        slot = self._slots.get(event.project_id)
        if slot is None:
            slot = self._slots[event.project_id] = asyncio.Semaphore(PROJECT_CONCURRENCY)

        async def run() -> None:
            async with slot:
                held.result = await route()
            self._finished_one(event.project_id)
            on_finished()

        held.task = asyncio.create_task(run(), name=f"route {event.id}")
        self._held[event.id] = held
        self._per_project[event.project_id] += 1

    def finished(self) -> list[Held]:
        return [h for h in self._held.values() if h.result is not None]

    def forget(self, done: list[Held]) -> None:
        """Stop holding these: their routing is stored, or given back."""
        for held in done:
            if self._held.get(held.event.id) is held:
                del self._held[held.event.id]
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

    def renew_due(self) -> dict[str, float] | None:
        """The tokens of the events to renew, if the leases are a third of the way through."""
        if not self._held or time.monotonic() - self._renewed_at < self._lease_seconds / 3:
            return None
        self._renewed_at = time.monotonic()
        return {eid: h.token for eid, h in self._held.items()}

    def renewed(self, asked: dict[str, float], renewed: dict[str, float]) -> int:
        """Take the renewed tokens; drop (and stop routing) the events whose lease ran out and
        went to another router. Returns how many were dropped."""
        lost = 0
        for eid, token in asked.items():
            held = self._held.get(eid)
            if held is None or held.token != token:
                continue  # stored or taken again meanwhile
            if eid in renewed:
                held.token = renewed[eid]
            else:
                del self._held[eid]
                self._drop(held)
                lost += 1
        return lost

    async def stop(self, wait: float) -> tuple[list[Held], list[Held]]:
        """Let running routes finish for up to ``wait`` seconds, then cancel the rest.
        Returns (finished, cut short); neither is held any more."""
        running = [h.task for h in self._held.values() if h.task is not None and h.result is None]
        if running and wait > 0:
            try:
                await asyncio.wait(running, timeout=wait)
            except asyncio.CancelledError:  # the shutdown's time is up: leave no task behind
                for task in running:
                    task.cancel()
                raise
        finished = self.finished()
        cut = [h for h in self._held.values() if h.result is None]
        for held in cut:
            if held.task is not None:
                held.task.cancel()
        await asyncio.gather(*(h.task for h in cut if h.task is not None), return_exceptions=True)
        self.forget(finished + cut)
        return finished, cut

    def _drop(self, held: Held) -> None:
        if held.task is not None and not held.task.done():
            held.task.cancel()
        project = held.event.project_id
        self._per_project[project] -= 1
        if self._per_project[project] <= 0:
            del self._per_project[project]
            self._slots.pop(project, None)
