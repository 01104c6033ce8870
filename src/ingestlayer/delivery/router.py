"""The router: lease route jobs, run pipelines, write deliveries, in that order.

Steps run outside any transaction; the deliveries and the job's removal are then committed
together, and only for jobs whose lease is still ours, so a slow or killed router can never
route an event twice or lose it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

import orjson
import sqlalchemy.exc

from ingestlayer import clock
from ingestlayer.config import Settings
from ingestlayer.delivery.held_routes import Held, HeldRoutes, Routed
from ingestlayer.delivery.wakeup import wait_for_work
from ingestlayer.liveness import Heartbeat
from ingestlayer.pipeline.event import StepServices
from ingestlayer.pipeline.runner import (
    MAX_STEP_RETRIES,
    TRACE_ERROR_CHARS,
    CompiledProject,
    StepRetry,
    compile_project,
    route_event,
)
from ingestlayer.records import IngestRouting, LeasedDelivery, NewDelivery, NewEvent, RouteLease, StoredEvent
from ingestlayer.store.base import NotFound
from ingestlayer.store.outage_log import CONNECTION_LOST, OutageLog
from ingestlayer.store.store import Store
from ingestlayer.store.unavailable import DATABASE_UNAVAILABLE, not_utf8
from ingestlayer.timefmt import iso
from ingestlayer.validation_messages import configuration_problem, problem_traceback

log = logging.getLogger("ingestlayer.router")

_Item = TypeVar("_Item")  # what a pass routes or stores: an event, or an event routed apart

# Back-off for an event whose routing failed (a step with on_error: retry, or a bug): it stays
# queued and is tried again after these delays, by routing attempt.
ROUTE_RETRY_DELAYS = (1.0, 5.0, 30.0, 120.0, 600.0, 1800.0)
# After this many routing attempts an event that still cannot be routed (routing it raises, or
# the database refuses what it produced) ends with the error in its trace and no deliveries: it
# was routed again every half hour for ever. As many as a step with on_error: retry gets.
MAX_ROUTE_ATTEMPTS = MAX_STEP_RETRIES


# What reading a configuration raises when the fault is the database's, not the configuration's.
DATABASE_ERRORS: tuple[type[Exception], ...] = (sqlalchemy.exc.SQLAlchemyError, *CONNECTION_LOST)


class UnreadableConfiguration(Exception):
    """An event's project's configuration has a pipeline that takes it and that this version
    cannot compile (or cannot be read at all): the event waits until it is fixed."""


def retry_delay(attempt: int) -> float:
    return ROUTE_RETRY_DELAYS[max(1, min(attempt, len(ROUTE_RETRY_DELAYS))) - 1]


def failed_trace(exc: BaseException, attempt: int) -> list[dict[str, Any]]:
    """The trace of an event given up on: one entry, shaped like a pipeline's, naming the error."""
    step = {
        "step": "routing",
        "outcome": "failed",
        "error": f"{type(exc).__name__}: {exc}"[:TRACE_ERROR_CHARS],
        "note": f"gave up after {attempt} attempts; the event has no deliveries",
    }
    return [{"pipeline": "routing", "outcome": "failed", "steps": [step], "destinations": []}]


def _given_up(exc: BaseException, attempt: int, version: int) -> Routed:
    """An event whose last routing attempt failed, by the configuration at ``version``. Tried
    once more if that configuration changed meanwhile (only after the last attempt of the
    schedule: a project whose configuration changes all the time must not keep it for ever)."""
    again = retrying_trace(exc, attempt, 0.0) if attempt == MAX_ROUTE_ATTEMPTS else None
    return Routed(trace=failed_trace(exc, attempt), version=version, unless_changed=again)


def retrying_trace(exc: BaseException, attempt: int, delay: float) -> list[dict[str, Any]]:
    """The trace of an event whose routing failed and waits to be tried again: stored while it
    waits, so the event says why it has no deliveries yet (the routing's own trace replaces it)."""
    step = {
        "step": "routing",
        "outcome": "retrying",
        "error": f"{type(exc).__name__}: {exc}"[:TRACE_ERROR_CHARS],
        "note": f"attempt {attempt} failed; routed again in {delay:g} s",
        "next_attempt_at": iso(clock.now() + delay),
    }
    return [{"pipeline": "routing", "outcome": "retrying", "steps": [step], "destinations": []}]


class Handoff(Protocol):
    """The dispatcher in this process, taking fresh deliveries straight from the router."""

    def take(self, fresh: list[NewDelivery]) -> tuple[list[NewDelivery], int]: ...

    def accept(self, leased: list[LeasedDelivery]) -> None: ...


class ConfigCache:
    """Compiled project configuration, refreshed when the project's config_version moves."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._compiled: dict[str, CompiledProject] = {}

    def current(self, project_id: str) -> CompiledProject | None:
        """The compiled configuration last used, without checking that it is still current."""
        return self._compiled.get(project_id)

    async def get_many(
        self, project_ids: set[str], versions: dict[str, int] | None = None
    ) -> dict[str, CompiledProject]:
        """The projects' compiled configurations (none for a project that no longer exists). A
        configuration that cannot be read or compiled is one whose events wait (see
        :meth:`CompiledProject.unusable`): it used to fail the whole call, and with it the
        router's pass, every project's events in it leased again and again with the one."""
        if versions is None:
            versions = await self._store.config_versions(project_ids)
        out: dict[str, CompiledProject] = {}
        for pid in project_ids:
            version = versions.get(pid)
            if version is None:
                continue
            cached = self._compiled.get(pid)
            if cached is None or cached.version != version:
                fresh = await self._compile(pid, version)
                if fresh is None:
                    continue
                cached = self._compiled[pid] = fresh
            out[pid] = cached
        return out

    async def _compile(self, project_id: str, version: int) -> CompiledProject | None:
        try:
            cfg = await self._store.load_project_config(project_id)
        except NotFound:  # deleted since its version was read
            return None
        except DATABASE_ERRORS as exc:
            if not not_utf8(exc):
                raise  # the database's, not the configuration's: nothing to remember for this version
            # A row's name (say) that is not UTF-8 (configurations are read as bytes: see
            # rows.stored_config). Every router pass failed as if the database were down, every
            # project's events held back with this one's. Said without the driver's words: they
            # quote the row's text, which may hold a credential.
            problem = "its configuration cannot be read: a stored row holds text that is not UTF-8"
            log.error("project %s: %s; its events wait until it is fixed", project_id, problem)
            return CompiledProject.unusable(project_id, version, problem)
        except Exception as exc:  # a stored row this version cannot read (by hand)
            problem = f"its configuration cannot be read: {configuration_problem(exc)}"
            log.error(
                "project %s: %s; its events wait until it is fixed",
                project_id,
                problem,
                exc_info=problem_traceback(exc),
            )
            return CompiledProject.unusable(project_id, version, problem)
        try:
            if len(cfg.pipelines) > COMPILE_ON_LOOP_PIPELINES:
                # 2,000 pipelines took 0.7-1.0 s to compile: on the event loop, every
                # project's requests waited that long after each change of this one.
                return await asyncio.to_thread(compile_project, cfg)
            return compile_project(cfg)
        except Exception as exc:  # past the pipelines compile_project marks unreadable: a bug
            problem = f"its configuration cannot be compiled: {configuration_problem(exc)}"
            log.error(
                "project %s: %s; its events wait until it is fixed",
                project_id,
                problem,
                exc_info=problem_traceback(exc),
            )
            return CompiledProject.unusable(project_id, cfg.version, problem)


# Projects with more pipelines than this are compiled on a thread of their own (a few ms and
# up); smaller ones where they are needed, without a hand-off.
COMPILE_ON_LOOP_PIPELINES = 50


class Router:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        on_routed: Callable[[int, int], None] | None = None,
        services: StepServices | None = None,
        handoff: Handoff | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.services = services
        self.handoff = handoff
        self.configs = ConfigCache(store)
        self._on_routed = on_routed
        self.wake = asyncio.Event()
        self._handed: list[RouteLease] = []
        self._handed_events = 0
        self._last_table_lease = 0.0
        self._outage = OutageLog(log, "routing")
        self._held = HeldRoutes(settings.route_lease_seconds)
        # Stamped each pass, idle ones included (they wake every poll interval): /healthz.
        self.heartbeat = Heartbeat("router", "the router", pause=settings.poll_interval)

    # ---- ingest in this process ----------------------------------------------------------------

    async def plan_ingest(self, batch: Sequence[NewEvent]) -> IngestRouting | None:
        """Route what can be routed before the batch is stored, by the configuration compiled
        last: events no pipeline takes need nothing, and the pipelines whose steps cannot wait
        run here, so their deliveries and trace are stored with the event. That saves the route
        job, its lease and a second transaction. The insert checks that the configuration is
        still current; what it does not settle (unknown or stale configuration, pipelines that
        may wait, a step that failed) gets a route job and is routed the usual way."""
        routing: IngestRouting | None = None
        for ev in batch:
            compiled = self.configs.current(ev.project_id)
            if compiled is None:
                continue
            if not compiled.takes(ev.type):
                routing = routing or IngestRouting()
                routing.untaken.add(ev.id)
            elif compiled.left_to_router:
                # Left to the router (a pipeline that may wait, or one that cannot be compiled);
                # the version still goes to the insert's check, so that a configuration that
                # changed since is noticed (and compiled again) by ingest.
                routing = routing or IngestRouting()
            else:
                try:
                    dels, trace = await route_event(compiled, ev, self.services)
                    text = orjson.dumps(trace).decode()
                except Exception:  # StepRetry or a bug: the router retries and logs it
                    continue
                routing = routing or IngestRouting()
                routing.traces[ev.id] = text
                routing.deliveries.extend(dels)
            routing.versions[ev.project_id] = compiled.version
        if routing is not None and routing.deliveries:
            if self.handoff is not None:
                routing.deliveries, routing.prelease = self.handoff.take(routing.deliveries)
            routing.lease_seconds = self.settings.delivery_lease_seconds
        return routing

    def ingested(self, routing: IngestRouting) -> None:
        """After the insert: hand the deliveries it stored leased to this process's dispatcher."""
        if routing.leased and self.handoff is not None:
            self.handoff.accept(routing.leased)
        if self._on_routed is not None and routing.created:
            self._on_routed(routing.created, len(routing.leased))

    # ---- handoff from ingest in this process --------------------------------------------------

    def backlog(self) -> int:
        """Events handed over by ingest and not yet routed."""
        return self._handed_events

    def held(self) -> int:
        """Events being routed in tasks of their own (their pipelines may wait), or finished
        and not stored yet."""
        return len(self._held)

    def accept(self, lease: RouteLease) -> None:
        """Take events just stored by ingest in this process, their jobs already leased to us:
        no lease query and no re-reading of what is in memory already."""
        self._handed.append(lease)
        self._handed_events += len(lease.events)
        self.wake.set()

    async def run_once(self) -> int:
        """Route one batch; return how many events it took or finished routing."""
        finished = await self._store_finished()
        await self._renew_held()
        lease = await self._take()
        if lease is None:
            return finished
        try:
            await self._route_lease(lease)
        except CONNECTION_LOST:
            raise
        except Exception as exc:
            # Past routing's own handling of each event (a bug, or a database that refused
            # something other than the pass's deliveries): the pass failed, its events stayed
            # leased and were leased again with the one that failed it, every other project's
            # included, for ever. Routed one at a time, that one is the only one held back.
            log.exception("routing a pass of %d events failed; routing them one at a time", len(lease.events))
            await self._route_alone(lease, exc)
        return len(lease.events) + finished

    async def _route_lease(self, lease: RouteLease) -> None:
        projects = await self.configs.get_many({e.project_id for e in lease.events}, lease.versions)
        routed: dict[str, Routed] = {}
        events = lease.events
        if any(compiled.unreadable for compiled in projects.values()):
            events = self._wait_for_configuration(lease, projects, routed)
        surplus: dict[str, list[str]] = {}  # by project: events it has no room for
        started: set[str] = set()
        for ev in events:
            compiled = projects.get(ev.project_id)
            if compiled is None or not compiled.takes(ev.type):  # project deleted, or no pipeline
                continue
            attempt = lease.attempts.get(ev.id, 1)
            if not compiled.performs_io:
                # Routed in turn, which costs no task per event (a tenth of the router's time
                # when it made one for each).
                routed[ev.id] = await self._route(ev, compiled, attempt)
            elif self._held.has_room(ev.project_id) and not self._held.full():
                # Its pipeline may wait (a model, a lookup): routed in a task of its own, so
                # that one slow call holds up neither this pass nor the next.
                route = functools.partial(self._route, ev, compiled, attempt)
                self._held.start(ev, lease.token_of(ev.id), attempt, route, self.wake.set)
                started.add(ev.id)
            else:
                surplus.setdefault(ev.project_id, []).append(ev.id)
        put_off = {
            eid: delay
            for project_id, ids in surplus.items()
            for eid, delay in zip(ids, self._held.put_off(project_id, len(ids)), strict=True)
        }
        if put_off:
            await self.store.defer_route_jobs(lease, put_off, uncounted=True)
        now = [e for e in lease.events if e.id not in put_off and e.id not in started]
        await self._store(lease.subset(now), routed)

    def _wait_for_configuration(
        self, lease: RouteLease, projects: dict[str, CompiledProject], routed: dict[str, Routed]
    ) -> list[StoredEvent]:
        """Set aside the events taken by a pipeline that cannot be compiled, as events whose
        routing failed: each says why in its trace, and is routed again after the usual back-off
        (by the configuration fixed meanwhile, if it is), until its last attempt. Returns the
        events to route now. Said in the log once per project, not once per event."""
        to_route: list[StoredEvent] = []
        waiting: dict[str, tuple[list[str], list[int]]] = {}  # project: problems, [waiting, ended]
        for ev in lease.events:
            compiled = projects.get(ev.project_id)
            problems = compiled.waiting_on(ev.type) if compiled is not None and compiled.unreadable else []
            if compiled is None or not problems:
                to_route.append(ev)
                continue
            exc = UnreadableConfiguration("; ".join(problems))
            attempt = lease.attempts.get(ev.id, 1)
            _, counts = waiting.setdefault(ev.project_id, (problems, [0, 0]))
            if attempt >= MAX_ROUTE_ATTEMPTS:
                routed[ev.id] = _given_up(exc, attempt, compiled.version)
                counts[1] += 1
            else:
                delay = retry_delay(attempt)
                trace = retrying_trace(exc, attempt, delay)
                routed[ev.id] = Routed(retry_in=delay, trace=trace, version=compiled.version)
                counts[0] += 1
        for project_id, (problems, (n, ended)) in waiting.items():
            log.warning(
                "project %s: %s; events waiting until its configuration is fixed: %d%s",
                project_id,
                "; ".join(problems),
                n,
                f"; given up on after {MAX_ROUTE_ATTEMPTS} attempts: {ended} (unless the configuration "
                "changed meanwhile)"
                if ended
                else "",
            )
        return to_route

    async def _route_alone(self, lease: RouteLease, failure: Exception) -> None:
        """Route each of the lease's events on its own (``failure``: what routing them together
        raised). One whose routing still fails is routed again after the usual back-off, and at
        its last attempt ends with the error in its trace."""
        await self._one_by_one(
            lease.events, failure, lambda ev: self._route_lease(lease.only(ev)), lease.only
        )

    async def _one_by_one(
        self,
        items: Sequence[_Item],
        failure: Exception,
        again: Callable[[_Item], Awaitable[None]],
        lease_of: Callable[[_Item], RouteLease],
    ) -> None:
        """``failure`` was raised for ``items`` together: try each ``again`` on its own, and put
        back in the queue (see :meth:`_put_back`) each one that still fails (a lone item, at
        once). A database out of reach is raised: nothing is put back then."""
        for item in items:
            exc = failure
            if len(items) > 1:
                try:
                    await again(item)
                    continue
                except CONNECTION_LOST:
                    raise
                except Exception as alone:
                    exc = alone
            await self._put_back(lease_of(item), exc)

    async def _put_back(self, alone: RouteLease, exc: Exception) -> None:
        try:
            await self._unroutable(alone, exc)
        except CONNECTION_LOST:
            raise
        except Exception:  # its job stays leased, and is retaken when the lease expires
            log.exception("could not put event %s back in the queue", alone.events[0].id)

    async def _take(self) -> RouteLease | None:
        """The next events to route: those ingest in this process handed over, or due jobs."""
        now = time.monotonic()
        if self._handed and now - self._last_table_lease < self.settings.poll_interval:
            # Everything handed over since the last pass, as one pass.
            handed, self._handed = self._handed, []
            self._handed_events -= sum(len(lease.events) for lease in handed)
            return RouteLease.merge(handed)
        # Jobs in the table: retries, other processes' events, anything left by a crash.
        # Taken at least once per poll interval even while ingest keeps handing work over.
        self._last_table_lease = now
        lease = await self.store.lease_route_jobs(
            self.settings.route_batch, self.settings.route_lease_seconds
        )
        if lease.events:
            return lease
        return await self._take() if self._handed else None

    async def _route(self, ev: StoredEvent, compiled: CompiledProject, attempt: int) -> Routed:
        try:
            dels, trace = await route_event(compiled, ev, self.services, attempt)
        except StepRetry as exc:
            # A provider's Retry-After (a 429) is waited out, up to the schedule's longest wait.
            delay = max(retry_delay(attempt), min(exc.retry_after or 0.0, ROUTE_RETRY_DELAYS[-1]))
            log.warning("event %s: %s; routing again in %.0fs", ev.id, exc, delay)
            # Not due again at a configuration change (version=None) when the provider said when:
            # any change (an endpoint edited) would have it called again within its Retry-After.
            version = None if exc.retry_after else compiled.version
            return Routed(retry_in=delay, trace=retrying_trace(exc, attempt, delay), version=version)
        except Exception as exc:
            if attempt >= MAX_ROUTE_ATTEMPTS:
                log.exception(
                    "routing event %s failed %d times; giving up on it (unless its configuration changed)",
                    ev.id,
                    attempt,
                )
                return _given_up(exc, attempt, compiled.version)
            log.exception("routing event %s failed; it will be retried", ev.id)
            delay = retry_delay(attempt)
            return Routed(retry_in=delay, trace=retrying_trace(exc, attempt, delay), version=compiled.version)
        return Routed(dels, trace or None)

    async def _store_finished(self) -> int:
        """Store what the events routed in tasks of their own produced, once they finished."""
        finished = self._held.finished()
        if not finished:
            return 0
        # Held until stored: if the database is out of reach, the next pass tries again, their
        # leases renewed.
        try:
            await self._store_held(finished)
        except CONNECTION_LOST:
            raise
        except Exception as exc:
            # Anything else (a bug, a row the database refused outside the per-event handling):
            # they stayed held, and every pass failed here before it took any other event, so
            # the worker routed nothing more, for any project. Stored one by one, what still
            # fails is put back in the queue, like an event whose routing failed.
            log.exception("storing the routing of %d events failed; storing it event by event", len(finished))
            await self._one_by_one(
                finished, exc, lambda held: self._store_held([held]), lambda held: self._held.lease([held])
            )
        self._held.forget(finished)
        return len(finished)

    async def _store_held(self, finished: list[Held]) -> None:
        await self._store(self._held.lease(finished), {h.event.id: h.result for h in finished if h.result})

    async def _renew_held(self, now: bool = False) -> None:
        asked = self._held.renew_due(now)
        if asked is None:
            return
        renewed = await self.store.renew_route_leases(asked, self.settings.route_lease_seconds)
        lost = self._held.renewed(asked, renewed)
        if lost:
            log.warning(
                "%d events being routed are no longer leased to this worker (it could not renew "
                "their lease in time, and another router took them over, or they were deleted); "
                "it stopped routing them",
                lost,
            )

    async def _try_again_if_changed(self, lease: RouteLease, routed: dict[str, Routed]) -> None:
        """Events given up on by a configuration since changed are tried again at once instead:
        a fix applied during an event's last attempt (a slow step's, or another process's) used
        to end it with nothing. Read just before the outcome is stored; a change made between
        the two still ends it."""
        given_up = {eid: r for eid, r in routed.items() if r.unless_changed is not None}
        if not given_up:
            return
        project_of = {ev.id: ev.project_id for ev in lease.events if ev.id in given_up}
        now = await self.store.config_versions(set(project_of.values()))
        for eid, r in given_up.items():
            if now.get(project_of[eid], r.version) != r.version:
                log.info("event %s: its configuration changed during its last attempt; routing it again", eid)
                routed[eid] = Routed(retry_in=0.0, trace=r.unless_changed)

    async def _store(self, lease: RouteLease, routed: dict[str, Routed]) -> None:
        """Store the routing of the lease's events (those without an entry need none): their
        deliveries and traces, and their jobs removed; those to retry are deferred."""
        await self._try_again_if_changed(lease, routed)
        failed = {eid: r.retry_in for eid, r in routed.items() if r.retry_in is not None}
        if failed:
            waiting = {eid: r.trace for eid, r in routed.items() if r.retry_in is not None and r.trace}
            by = {eid: r.version for eid, r in routed.items() if r.version is not None}
            await self.store.defer_route_jobs(lease, failed, traces=waiting, routed_by=by)
            lease = lease.subset([e for e in lease.events if e.id not in failed])
        if not lease.events:
            return
        new: list[NewDelivery] = []
        traces: dict[str, list[dict[str, Any]]] = {}
        for ev in lease.events:
            r = routed.get(ev.id)
            if r is not None:
                new.extend(r.deliveries)
                if r.trace:
                    traces[ev.id] = r.trace
        room = 0
        if self.handoff is not None:
            new, room = self.handoff.take(new)
        created, leased = await self._complete(lease, new, traces, room)
        if leased and self.handoff is not None:
            self.handoff.accept(leased)
        if self._on_routed is not None and created:
            self._on_routed(created, len(leased))  # created, of which handed over

    async def _complete(
        self, lease: RouteLease, new: list[NewDelivery], traces: dict[str, list[dict[str, Any]]], room: int
    ) -> tuple[int, list[LeasedDelivery]]:
        """Store the pass's deliveries and traces in one transaction. If the database refused
        them (rather than being out of reach), store each event's on its own, so that one it
        refuses does not fail the pass: its events stayed leased, were routed again when the
        lease ran out, and failed together again, for ever."""
        lease_seconds = self.settings.delivery_lease_seconds
        try:
            return await self.store.complete_routing(
                lease, new, traces, prelease=room, lease_seconds=lease_seconds
            )
        except DATABASE_UNAVAILABLE:
            raise
        except Exception as exc:
            if len(lease.events) == 1:
                await self._refused(lease.only(lease.events[0]), exc)
                return 0, []
            log.exception(
                "storing the routing of %d events failed; storing it event by event", len(lease.events)
            )
        by_event: dict[str, list[NewDelivery]] = {}
        for d in new:
            by_event.setdefault(d.event_id, []).append(d)
        created = 0
        for ev in lease.events:
            alone = lease.only(ev)
            trace = {ev.id: traces[ev.id]} if ev.id in traces else {}
            try:
                # None handed over: the dispatcher finds them in the table.
                n, _ = await self.store.complete_routing(alone, by_event.get(ev.id, []), trace)
            except DATABASE_UNAVAILABLE:
                raise
            except Exception as exc:
                try:
                    await self._refused(alone, exc)
                except Exception:  # its job stays leased, and is retaken when the lease expires
                    log.exception("could not put event %s back in the queue", ev.id)
            else:
                created += n
        return created, []

    async def _refused(self, alone: RouteLease, exc: Exception) -> None:
        """An event whose routing the database refused: routed again later, and at its last
        attempt ended with the refusal in its trace and no deliveries."""
        ev = alone.events[0]
        attempt = alone.attempts.get(ev.id, 1)
        if attempt < MAX_ROUTE_ATTEMPTS:
            log.error(
                "the database refused the routing of event %s (%s: %s); routing it again in %.0fs",
                ev.id,
                type(exc).__name__,
                exc,
                retry_delay(attempt),
            )
            await self.store.defer_route_jobs(alone, {ev.id: retry_delay(attempt)})
            return
        log.error(
            "the database refused the routing of event %s %d times (%s: %s); giving up on it",
            ev.id,
            attempt,
            type(exc).__name__,
            exc,
        )
        await self.store.complete_routing(alone, [], {ev.id: failed_trace(exc, attempt)})

    async def _unroutable(self, alone: RouteLease, exc: Exception) -> None:
        """An event whose routing failed past routing's own handling of it: routed again later,
        the error in its trace meanwhile, and at its last attempt ended with it."""
        ev = alone.events[0]
        attempt = alone.attempts.get(ev.id, 1)
        error = f"{type(exc).__name__}: {exc}"
        if attempt < MAX_ROUTE_ATTEMPTS:
            delay = retry_delay(attempt)
            log.error("routing event %s failed (%s); routing it again in %.0fs", ev.id, error, delay)
            try:
                await self.store.defer_route_jobs(
                    alone, {ev.id: delay}, traces={ev.id: retrying_trace(exc, attempt, delay)}
                )
            except CONNECTION_LOST:
                raise
            except Exception:  # what failed may be storing its trace: it waits without one
                await self.store.defer_route_jobs(alone, {ev.id: delay})
            return
        log.error("routing event %s failed %d times (%s); giving up on it", ev.id, attempt, error)
        await self.store.complete_routing(alone, [], {ev.id: failed_trace(exc, attempt)})

    async def run(self, stop: asyncio.Event) -> None:
        beat = self.heartbeat
        while not stop.is_set():
            beat.last = time.monotonic()
            self.wake.clear()
            try:
                took = await self.run_once()
            except CONNECTION_LOST as exc:
                self._outage.failed(exc)  # one line now and then, not a traceback each
                took = 0
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("router pass failed; retrying shortly")
                took = 0
                await asyncio.sleep(1.0)
            else:
                self._outage.succeeded()
            if took == 0:
                await wait_for_work(self.wake, stop, self.settings.poll_interval)
        await self._stop_held()
        if self._handed:
            # Handed over but not routed: due again now, for whichever router runs next.
            handed, self._handed = self._handed, []
            lease = RouteLease.merge(handed)
            try:
                await self.store.defer_route_jobs(lease, {e.id: 0.0 for e in lease.events})
            except Exception:
                log.exception(
                    "could not release %d handed-over events; due when their lease expires", len(lease.events)
                )

    async def _stop_held(self) -> None:
        """At shutdown. Events whose routes have not started are given back at once; those
        running get the grace period to finish (their leases renewed meanwhile) and are stored;
        what is still running then is cut short and given back. Given back: due again at once,
        for whichever router runs next, the attempt not counted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.shutdown_grace_seconds
        released = stored = 0
        try:
            waiting = await self._held.cancel_waiting()
            await self._release(waiting)
            released += len(waiting)
            while (running := self._held.running()) and loop.time() < deadline:
                step = min(deadline - loop.time(), self.settings.route_lease_seconds / 3)
                await asyncio.wait(running, timeout=step)
                if self._held.running():
                    await self._renew_held(now=True)
            finished, cut = await self._held.stop()
            if finished:
                await self._store_held(finished)
                stored += len(finished)
            await self._release(cut)
            released += len(cut)
        except asyncio.CancelledError:  # the shutdown's time is up: leave no task behind
            await self._held.stop()
            raise
        except Exception:
            await self._held.stop()
            log.exception(
                "could not store or give back the events being routed at shutdown; they are routed "
                "again when their lease expires"
            )
            return
        if stored or released:
            log.info(
                "routing stopped: stored the routing of %d events that finished, gave back %d "
                "(due again at once)",
                stored,
                released,
            )

    async def _release(self, held: list[Held]) -> None:
        if held:
            await self.store.defer_route_jobs(
                self._held.lease(held), {h.event.id: 0.0 for h in held}, uncounted=True
            )
