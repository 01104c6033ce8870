"""Whether the loops a process exists for still go round, for ``/healthz``.

A loop that hangs without raising (an await that never returns) or whose task has ended left
every event behind it unrouted or undelivered while every probe answered 200, so a supervisor
(a Kubernetes liveness probe, systemd) never restarted the process, which is the remedy: events
are durable, and a new process takes them up. Each loop stamps its :class:`Heartbeat` once per
pass (a float stored, not one per event), including the wake-ups of a loop with nothing to do;
``/healthz`` answers 503 once one has stopped, or has been silent for longer than
``INGESTLAYER_LIVENESS_SECONDS`` (and whatever pause the loop takes on purpose between passes).

Every wait of a loop is bounded, so the bound only has to outlast the longest of them: a call
to a database that stopped answering (a free connection, then the statement: twice
``INGESTLAYER_DATABASE_TIMEOUT`` on PostgreSQL; a lock held by another connection and a log
sync on SQLite, 30 s each). Sends run in tasks of their own, so a slow destination never holds
the dispatcher's lease loop.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ingestlayer import metrics

log = logging.getLogger("ingestlayer")


class Heartbeat:
    """When a loop last went round.

    ``idle``: the loop waits for work and has none (the ingest committer and the attempt writer
    wait without a timeout, since nothing comes to them but what they are handed): no silence
    however long it lasts. ``task``: the task the loop runs in, when it has one of its own."""

    __slots__ = ("idle", "last", "name", "pause", "task", "what")

    def __init__(self, name: str, what: str, pause: float = 0.0) -> None:
        self.name = name  # the value of the gauge's ``loop`` label
        self.what = what  # how /healthz names it
        self.pause = pause  # how long the loop waits between passes on purpose
        self.last = time.monotonic()
        self.idle = False
        self.task: asyncio.Task[None] | None = None

    def beat(self) -> None:
        self.last = time.monotonic()

    def ended(self) -> bool:
        return self.task is not None and self.task.done()

    def silence(self, now: float | None = None) -> float:
        """Seconds since the loop last went round; 0 while it waits for work with none to do."""
        if self.idle and not self.ended():
            return 0.0
        return max(0.0, (time.monotonic() if now is None else now) - self.last)


def _how(task: asyncio.Task[None]) -> str:
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is None:
        return "it returned"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class Liveness:
    """The heartbeats of the loops this process runs (``api`` has no router or dispatcher, a
    ``worker`` no ingest committer), judged against ``bound`` seconds of silence."""

    def __init__(self, bound: float, stop: asyncio.Event) -> None:
        self.bound = bound
        self._stop = stop
        self._beats: list[Heartbeat] = []
        self._told: set[str] = set()  # loops whose failure the log has already named

    def watch(self, beat: Heartbeat) -> None:
        if beat in self._beats:
            return
        if not self._beats:
            # The series of this process's loops only: a process runs one runtime, and a test
            # that starts servers one after another must not read an earlier one's.
            metrics.LOOP_SILENCE.clear()
        self._beats.append(beat)
        metrics.LOOP_SILENCE.labels(loop=beat.name).set_function(beat.silence)

    def watched(self) -> list[str]:
        return [beat.name for beat in self._beats]

    def problems(self) -> list[str]:
        """What has stopped or gone silent, in words; none while the process shuts down, when
        loops end on purpose."""
        if self._stop.is_set():
            return []
        now = time.monotonic()
        found: list[str] = []
        for beat in self._beats:
            silent = beat.silence(now)
            if beat.ended():
                assert beat.task is not None
                problem = f"{beat.what} has stopped ({_how(beat.task)}) and has not run for {silent:.0f} s"
            elif silent > self.bound + beat.pause:
                problem = f"{beat.what} has not run for {silent:.0f} s"
            else:
                self._told.discard(beat.name)
                continue
            found.append(problem)
            if beat.name not in self._told:
                # Once per failure, not once per probe: the supervisor restarts the process
                # (or, without one, the line stays the last word on it).
                self._told.add(beat.name)
                log.error(
                    "%s: /healthz answers 503 until the process is restarted (stored events wait for it)",
                    problem,
                )
        return found
