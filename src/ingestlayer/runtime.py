"""One process's moving parts, wired together: store, group commit, router, dispatcher.

Roles: ``api`` (ingest + management), ``worker`` (router + dispatcher), or both (``serve``).
In one process, ingest wakes the router and the router wakes the dispatcher directly, so an
idle system delivers without waiting for a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from ingestlayer import clock, master_key, metrics
from ingestlayer.api.auth import KeyCache
from ingestlayer.config import Settings
from ingestlayer.delivery.dispatcher import Dispatcher
from ingestlayer.delivery.router import Router
from ingestlayer.delivery.step_services import build_services
from ingestlayer.liveness import Heartbeat, Liveness
from ingestlayer.records import IngestResult, IngestRouting, NewEvent, RouteLease
from ingestlayer.secretbox import SecretBox
from ingestlayer.store.db import connections_dropped
from ingestlayer.store.group_commit import GroupCommitter
from ingestlayer.store.notify import EVERYTHING_CHANGED
from ingestlayer.store.outage_log import CONNECTION_LOST, OutageLog
from ingestlayer.store.rows import stored_from_new
from ingestlayer.store.sqlite_loop import LOCK_WAIT_SECONDS
from ingestlayer.store.store import Store
from ingestlayer.store.unavailable import DATABASE_UNAVAILABLE

log = logging.getLogger("ingestlayer")

RETENTION_INTERVAL_SECONDS = 600.0
# How long a worker loop that failed waits before it starts again.
RESTART_DELAY_SECONDS = 1.0
# Events handed from ingest to the router in this process, not yet routed, at most.
HANDOFF_BACKLOG = 20_000


def _count_ingested(results: list[IngestResult]) -> None:
    """Count what each ingest transaction stored: once per group, not per request."""
    dupes = sum(r.duplicate for r in results)
    metrics.EVENTS_INGESTED.inc(len(results) - dupes)
    if dupes:
        metrics.EVENTS_DUPLICATE.inc(dupes)


class Runtime:
    def __init__(self, settings: Settings, *, api: bool = True, worker: bool = True) -> None:
        self.settings = settings
        self.run_api = api
        self.run_worker = worker
        self.store = Store.from_url(
            settings.database_url, settings.database_timeout, settings.database_pool_size
        )
        # A key file that is missing is not written here: only once the database has shown it has
        # no other key (check_master_key, use_master_key).
        self.box = SecretBox.load(settings.secret_key, settings.secret_key_file)
        self._key_settled = False
        self.keys = KeyCache(self.store)
        self.stop = asyncio.Event()
        self.dispatcher = Dispatcher(self.store, settings, self.box)
        services, self._step_http = build_services(
            self.store, self.dispatcher.resolver, self.dispatcher.egress
        )
        self.router = Router(
            self.store, settings, on_routed=self._routed, services=services, handoff=self.dispatcher
        )
        insert = self._insert_and_hand_over if api and worker else self._insert_routed
        self.committer = GroupCommitter(
            insert,
            max_batch=settings.ingest_batch_max,
            max_inflight=self.store.concurrent_writers,
            on_commit=_count_ingested,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._compiling: set[str] = set()  # projects whose configuration ingest is compiling
        self._background: set[asyncio.Task[None]] = set()
        self._stop_by: float | None = None  # the loop's time by which shutdown() ends its waits
        self._compile_outage = OutageLog(log, "compiling project configurations")
        # The loops this process runs, for /healthz (those it starts are watched in start()).
        self.liveness = Liveness(settings.liveness_seconds, self.stop)
        self._clock_beat = Heartbeat("clock", "the database clock's sync", pause=clock.SYNC_INTERVAL_SECONDS)
        self._retention_beat = Heartbeat("retention", "the retention purge", pause=RETENTION_INTERVAL_SECONDS)
        self._warn_if_liveness_is_short()

    def _warn_if_liveness_is_short(self) -> None:
        """A bound shorter than a loop's longest wait on a database that stops answering would
        have a supervisor restart every process in an outage that a restart does not end."""
        s = self.settings
        if self.store.dialect == "sqlite":
            longest, what = 2 * LOCK_WAIT_SECONDS, f"twice SQLite's lock wait ({LOCK_WAIT_SECONDS:.0f} s)"
        else:
            longest, what = 2 * s.database_timeout, "twice INGESTLAYER_DATABASE_TIMEOUT"
        if s.liveness_seconds < longest:
            log.warning(
                "INGESTLAYER_LIVENESS_SECONDS=%g is shorter than %s, the longest a loop may wait "
                "on the database: /healthz may answer 503 while the database does not answer",
                s.liveness_seconds,
                what,
            )

    async def _insert_and_hand_over(self, batch: Sequence[NewEvent]) -> list[IngestResult]:
        """Store events with their route jobs leased to this process's router, and hand them
        over: the router routes them from memory, with no lease query. Past a backlog it stops
        taking them, and they wait in the table like any other process's events."""
        if self.stop.is_set() or self.router.backlog() >= HANDOFF_BACKLOG:
            results = await self.store.insert_events(batch)
            self.router.wake.set()  # their jobs wait in the table
            return results
        token = self.store.route_token(self.settings.route_lease_seconds)
        routing = await self._plan(batch)
        results, routing = await self._insert_planned(batch, routing, token)
        stored = list(batch)
        if any(r.duplicate for r in results):
            fresh = {r.id for r in results if not r.duplicate}
            stored = [ev for ev in stored if ev.id in fresh]
        if routing is not None:
            self.router.ingested(routing)
            stored = routing.to_route(stored)
        events = list(map(stored_from_new, stored))
        if events:
            self.router.accept(RouteLease(token, events, {e.id: 1 for e in events}))
        return results

    async def _plan(self, batch: Sequence[NewEvent]) -> IngestRouting | None:
        """What ingest routes of ``batch`` itself. Only a shortcut: if planning it fails (a bug,
        one project's configuration), the router routes every event of it, rather than the
        request and every other request of its group commit failing with it."""
        try:
            return await self.router.plan_ingest(batch)
        except Exception:
            log.exception("routing %d events at ingest failed; the router routes them", len(batch))
            return None

    async def _insert_planned(
        self, batch: Sequence[NewEvent], routing: IngestRouting | None, route_token: float | None = None
    ) -> tuple[list[IngestResult], IngestRouting | None]:
        """Insert ``batch`` with what ingest routed of it, and return the routing that holds. If
        the database refused that (rather than being out of reach), insert the events alone and
        leave their routing to the router, which stores it event by event: a delivery or trace
        it refused failed the request, and every request committed with it."""
        try:
            return await self.store.insert_events(batch, route_token=route_token, routing=routing), routing
        except DATABASE_UNAVAILABLE:
            raise
        except Exception:
            if routing is None or not (routing.traces or routing.deliveries):
                raise
            log.exception(
                "storing %d events with their routing failed; storing them for the router", len(batch)
            )
        for ev in batch:
            ev.trace = None  # set for the first insert (IngestRouting.set_traces)
        return await self.store.insert_events(batch, route_token=route_token), None

    async def _insert_routed(self, batch: Sequence[NewEvent]) -> list[IngestResult]:
        """``api`` alone: route at ingest what the compiled configuration settles, and leave
        the rest to the workers as route jobs. No router runs here to compile configurations
        as a side effect, so ingest compiles those it found missing or stale, after the insert
        and off the request's path."""
        routing = await self._plan(batch)
        results, routing = await self._insert_planned(batch, routing)
        if routing is not None:
            self.router.ingested(routing)
        # Projects never compiled here, or whose configuration moved since.
        stale = {ev.project_id for ev in batch if self.router.configs.current(ev.project_id) is None}
        if routing is not None:
            stale |= routing.versions.keys() - routing.confirmed
        stale -= self._compiling
        if stale and not self.stop.is_set():
            self._compiling |= stale
            task = asyncio.create_task(self._compile(stale), name="compile-config")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return results

    async def _compile(self, project_ids: set[str]) -> None:
        try:
            await self.router.configs.get_many(project_ids)
        except DATABASE_UNAVAILABLE as exc:
            self._compile_outage.failed(exc, "events are routed by the workers")
        except Exception:
            log.exception(
                "compiling the configuration of %d projects failed; events are routed by the workers",
                len(project_ids),
            )
        else:
            self._compile_outage.succeeded()
        finally:
            self._compiling -= project_ids

    def _routed(self, created: int, handed_over: int) -> None:
        metrics.DELIVERIES_CREATED.inc(created)
        if created > handed_over:  # some wait in the table for the dispatcher to lease them
            self.dispatcher.wake.set()

    async def use_master_key(self) -> None:
        """Check the key against the database's (writing the check value on a new database) once
        in this process, before a secret is first encrypted here: servers do it as they start;
        a process that did not (an embedded app) does it at its first secret."""
        if not self._key_settled:
            await master_key.settle(self.store, self.box)
            self._key_settled = True

    async def check_master_key(self) -> None:
        """Refuse to start with a master key that is not the database's (:mod:`ingestlayer.master_key`).

        Started with another key (a key file missing from this directory; another
        INGESTLAYER_SECRET_KEY), a worker failed every delivery that needs a secret through its
        retries until it was dead, and a secret stored through this process could not be read
        by the others. A database without a check value yet (from an earlier version) passes a key
        that reads any of the secrets stored last: one secret stored under a stray key (by a
        command run elsewhere) must not keep the right key out. Those it cannot read are named in
        the log."""
        await self.use_master_key()
        stored = await self.store.newest_secrets()
        unreadable = master_key.unreadable_secrets(self.box, stored)
        if unreadable:
            log.warning(
                "%d of the %d secrets stored last cannot be decrypted with this master key "
                "(%s): their deliveries fail until they are set again",
                len(unreadable),
                len(stored),
                ", ".join(f"{s.name!r} in project {s.project}" for s in unreadable),
            )

    async def start(self) -> None:
        if self.store.dialect != "sqlite":
            # Before any lease or due time is stamped: the first ones must be on the database's
            # clock too, or a worker on a fast machine takes over its peers' leases at once.
            await self._sync_clock()
            self.supervise("clock", self._keep_clock_in_sync, self._clock_beat)
        if self.run_api:
            self.committer.start()
            self.liveness.watch(self.committer.heartbeat)
        if self.run_worker:
            self.supervise("router", lambda: self.router.run(self.stop), self.router.heartbeat)
            self.supervise("dispatcher", lambda: self.dispatcher.run(self.stop), self.dispatcher.heartbeat)
            self.liveness.watch(self.dispatcher.writer_heartbeat)
        if self.run_worker or self.store.dialect != "sqlite":
            self.supervise(
                "listen",
                lambda: self.store.listen_for_work(
                    self.router.wake.set if self.run_worker else None,
                    self.dispatcher.wake.set if self.run_worker else None,
                    self.stop,
                    # Without ingest here, work arrives from another process's commits.
                    watch_commits=not self.run_api,
                    on_change=self._forget_changed,
                ),
            )
        if self.run_worker and self.settings.retention_days > 0:
            self.supervise("retention", self._retention, self._retention_beat)
        log.info(
            "ingestlayer started (api=%s worker=%s, %s)", self.run_api, self.run_worker, self.store.dialect
        )

    def _forget_changed(self, change: str) -> None:
        """Another process revoked a key or changed a project's secrets: drop this process's
        copies now rather than when they run out (10 s and 5 s)."""
        if change == EVERYTHING_CHANGED:  # this process may have missed some: all of them
            self.keys.forget()
            self.dispatcher.resolver.forget()
        elif change == "keys":  # from a process of an earlier version: every project's
            self.keys.forget()
        elif change.startswith("keys:"):
            self.keys.forget(change.removeprefix("keys:"))
        elif change.startswith("secrets:"):
            self.dispatcher.resolver.forget(change.removeprefix("secrets:"))

    def supervise(self, name: str, run: Callable[[], Awaitable[None]], beat: Heartbeat | None = None) -> None:
        """Run a worker loop until it returns, starting it again whenever it fails.

        Each loop handles the errors it expects, but one that escaped (a database call outside
        its try, found when PostgreSQL restarted under load) used to end the loop for good:
        deliveries stopped with nothing in the log until the process was restarted. ``beat``:
        the loop's heartbeat, which /healthz watches (with the task, should it end)."""

        async def supervised() -> None:
            while True:
                try:
                    await run()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception(
                        "the %s loop failed; starting it again in %.0f s", name, RESTART_DELAY_SECONDS
                    )
                else:
                    return  # done: stopped, or nothing to do here (SQLite has no LISTEN)
                if self.stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), RESTART_DELAY_SECONDS)
                if self.stop.is_set():
                    return

        task = asyncio.create_task(supervised(), name=name)
        self._tasks.append(task)
        if beat is not None:
            beat.task = task
            self.liveness.watch(beat)

    async def _sync_clock(self) -> None:
        try:
            await self.store.sync_clock()
        except Exception as exc:  # keep the last offset; the next measurement may succeed
            log.warning(
                "could not read the database's clock (stored times keep the last offset): %s",
                str(exc) or type(exc).__name__,
            )

    async def _keep_clock_in_sync(self) -> None:
        """Measure the database's clock again now and then: machines' clocks drift and are
        stepped by NTP (see :mod:`ingestlayer.clock`)."""
        while not self.stop.is_set():
            self._clock_beat.beat()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), clock.SYNC_INTERVAL_SECONDS)
            if not self.stop.is_set():
                await self._sync_clock()

    async def _retention(self) -> None:
        """Purge events (with their finished deliveries and attempts) past the retention age."""
        # A database that is away is a line, not a traceback (as every other loop's outage).
        outage = OutageLog(log, "retention purge", every=RETENTION_INTERVAL_SECONDS)
        while not self.stop.is_set():
            self._retention_beat.beat()
            cutoff = clock.now() - self.settings.retention_days * 86400
            try:
                removed = await self.store.purge_older_than(cutoff, progress=self._retention_beat.beat)
                if removed:
                    log.info(
                        "retention purged %d events older than %g days",
                        removed,
                        self.settings.retention_days,
                    )
            except CONNECTION_LOST as exc:
                outage.failed(exc, f"the next purge in {RETENTION_INTERVAL_SECONDS:.0f} s")
            except Exception:
                log.exception("retention purge failed; trying again later")
            else:
                outage.succeeded()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), RETENTION_INTERVAL_SECONDS)

    def begin_shutdown(self) -> None:
        """Stop taking work, at the signal: the shutdown's time limit counts from here, while an
        HTTP server still finishes its requests."""
        if self._stop_by is None:
            s = self.settings
            budget = s.shutdown_grace_seconds + s.database_timeout
            self._stop_by = asyncio.get_running_loop().time() + budget
        self.stop.set()

    async def shutdown(self) -> None:
        """Stop taking work, commit queued events, let in-flight attempts finish, close.

        Every wait is bounded: a database that stops answering without closing its connections
        held a process sent SIGTERM until it came back. Attempts in flight get the grace period
        and the database its timeout, both counted from the signal; past that, what still waits
        (for the database, in practice) is cancelled, and connections the database does not let
        go of in 2 s are dropped. Nothing accepted is lost: an event is committed before it is
        answered 202, and a lease not handed back expires and is retaken."""
        self.begin_shutdown()
        assert self._stop_by is not None
        loop = asyncio.get_running_loop()
        dropped_before = connections_dropped()
        cut: list[str] = []

        def left() -> float:
            assert self._stop_by is not None
            return max(0.0, self._stop_by - loop.time())

        if await self.committer.close(left()):
            cut.append("cancelled the ingest transactions in progress (their requests get a 503)")
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=left())
            if pending:
                names = ", ".join(sorted(task.get_name() for task in pending))
                cut.append(f"cancelled the {names} loops (leases they hold expire and are retaken)")
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
        await self._step_http.close()
        await self.store.close()
        dropped = connections_dropped() - dropped_before
        if dropped:
            cut.append(f"dropped {dropped} database connections the database did not close in time")
        if cut:
            log.warning(
                "shutdown went on without waiting for the database any longer: %s; "
                "events answered 202 were committed before their answer",
                "; ".join(cut),
            )
        log.info("ingestlayer stopped")
