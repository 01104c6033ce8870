"""The dispatcher: lease due deliveries, send them with bounded concurrency, record attempts.

Leases are taken in batches up to the free concurrency; results are written back in batches
by one writer task, so the database sees a few large transactions instead of many small ones.
A delivery whose worker dies keeps its lease until ``due_at`` passes, then any worker retakes it.
A live worker that cannot reach the database keeps its unrecorded outcomes in memory and records
them once it answers, so a delivery that succeeded is not sent again when its lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from ingestlayer import __version__, clock, metrics
from ingestlayer.config import Settings
from ingestlayer.delivery.egress import AddressResolver, EgressPolicy, GuardedResolver
from ingestlayer.delivery.http_client import HttpClient
from ingestlayer.delivery.retry import MAX_RETRY_AFTER, RetryPolicy
from ingestlayer.delivery.slots import DestinationSlots, Slot
from ingestlayer.delivery.wakeup import wait_for_work
from ingestlayer.destinations.base import (
    MAX_TIMEOUT_SECONDS,
    Destination,
    Outcome,
    SendContext,
    SendRequest,
)
from ingestlayer.destinations.registry import build_destination
from ingestlayer.liveness import Heartbeat
from ingestlayer.pipeline.config import ConfigError, check_concurrency
from ingestlayer.records import AttemptResult, DestinationRow, LeasedDelivery, NewDelivery
from ingestlayer.secretbox import SecretBox, SecretDecryptError
from ingestlayer.store.outage_log import CONNECTION_LOST, OutageLog, reason
from ingestlayer.store.store import DELETED_DESTINATION_ERROR, DISABLED_DESTINATION_ERROR, Store
from ingestlayer.stored_config import stored_configuration
from ingestlayer.validation_messages import configuration_problem

log = logging.getLogger("ingestlayer.delivery")

SECRET_CACHE_SECONDS = 5.0
RETIRE_AFTER_SECONDS = 65.0
# Recording outcomes the database could not take is tried again after these delays (the last
# repeating), until it answers.
RECORD_RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)
# Outcomes held for the database at most: beyond it the oldest are dropped (logged), and their
# deliveries are attempted again when their leases expire, as if this worker had died.
MAX_UNRECORDED = 20_000
# How often the lease loop looks whether held outcomes have been recorded (it leases once they
# are), and how often at most it asks the writer to try them again.
HELD_OUTCOMES_POLL_SECONDS = 0.1
HELD_OUTCOMES_POKE_SECONDS = 1.0
CUT_SHORT_ERROR = "cut short: the worker shut down before the answer came"


# Pauses before trying a lease's release again after a lost connection (then it expires).
RELEASE_RETRY_DELAYS = (0.2, 1.0, 3.0)


@dataclass
class _Dest:
    updated_at: float
    enabled: bool
    instance: Any
    policy: RetryPolicy
    concurrency: int | None = None  # attempts in flight at once in this process; None: the default
    # Why the stored configuration cannot be used (it predates a check, say): each attempt fails
    # with this and retries, so fixing the configuration delivers; other destinations go on.
    broken: str | None = None
    used_at: float = 0.0  # time.monotonic() of the last lease that needed it
    # The errors it raised whose traceback is in the log already: one per kind, not one per
    # attempt (each attempt has its line, saying the error).
    raised: set[str] = field(default_factory=set)


# A destination no lease has needed for this long is dropped from the cache (and its pools and
# connections closed): deleted destinations' deliveries end with them, so no lease would ever
# find one missing and drop it, and a project that churns endpoints grew the cache for good.
IDLE_DESTINATION_SECONDS = 600.0


def _build(row: DestinationRow) -> _Dest:
    """A stored destination, ready to send; one whose configuration cannot be read or no longer
    passes its checks is marked broken instead of failing the whole lease it came with."""
    if row.unreadable is not None:
        # Its retry schedule is unreadable too: the default one bounds its attempts.
        broken = f"destination {row.name!r}: {row.unreadable}"
        log.warning("destination %s (%s): %s", row.name, row.id, row.unreadable)
        return _Dest(row.updated_at, row.enabled, None, RetryPolicy(), broken=broken)
    try:
        policy = RetryPolicy.from_config(row.config.get("retry"))
    except Exception as exc:  # said, or its deliveries would end on a schedule nobody wrote
        log.warning(
            "destination %s has a retry schedule that cannot be used (%s): the default applies", row.id, exc
        )
        policy = RetryPolicy()
    try:
        # Checked as the configuration's own check does: a stored value that is not a number
        # failed the lease loop itself (comparing it with the attempts in flight), every lease.
        concurrency = check_concurrency("concurrency", row.config.get("concurrency"))
        with stored_configuration():
            instance = build_destination(row.kind, row.config["settings"])
    except Exception as exc:
        # A ConfigError names its field itself.
        problem = str(exc) if isinstance(exc, ConfigError) else configuration_problem(exc)
        log.warning("destination %s has a configuration that cannot be used: %s", row.id, problem)
        return _Dest(row.updated_at, row.enabled, None, policy, broken=f"invalid configuration: {problem}")
    return _Dest(row.updated_at, row.enabled, instance, policy, concurrency)


def _event(body: str) -> dict[str, Any] | str:
    """The event a delivery's stored body holds, or why it holds none."""
    try:
        event = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    return event if isinstance(event, dict) else f"a JSON {type(event).__name__}, not an event object"


def _log_failure(what: str, exc: Exception) -> None:
    """A line when the database is out of reach (it says why; a traceback would say nothing
    more, once a second), the traceback for anything else."""
    if isinstance(exc, CONNECTION_LOST):
        log.warning("%s: database unavailable: %s", what, reason(exc))
    else:
        log.exception("%s", what)


def _kept(n: int) -> str:
    return f"{n} unrecorded outcome{'' if n == 1 else 's'} kept until it answers"


def env_readable(name: str, allowed: Sequence[str]) -> bool:
    """Whether ``env:name`` may be read: listed in INGESTLAYER_ENV_SECRETS (names or globs), and
    never one of the server's own ``INGESTLAYER_*`` settings."""
    return not name.upper().startswith("INGESTLAYER_") and any(
        fnmatch.fnmatchcase(name, pattern) for pattern in allowed
    )


# Time kept between an attempt's end and its lease's: the lease was taken a moment before the
# attempt began, and recording the outcome takes a moment after.
LEASE_MARGIN_SECONDS = 5.0


class EmptySecret(LookupError):
    """An ``env:`` secret whose variable is set to nothing."""


class SecretResolver:
    """Resolves ``env:VAR`` and ``ref:NAME`` at send time; stored secrets are cached briefly.

    ``env:`` reads only the variables the operator lists (``env_allowed``, names or globs), and
    never the server's own ``INGESTLAYER_*`` settings: a project's admin writes these references,
    and must not be able to have the master key or the database's password sent to them."""

    def __init__(self, store: Store, box: SecretBox, env_allowed: Sequence[str] = ()) -> None:
        self._store = store
        self._box = box
        self._env_allowed = tuple(env_allowed)
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}
        self._loading: dict[tuple[str, str], asyncio.Future[str]] = {}
        self._generation: dict[str, int] = {}

    async def __call__(self, project_id: str, ref: str) -> str:
        if ref.startswith("env:"):
            name = ref[4:]
            if name.upper().startswith("INGESTLAYER_"):
                raise LookupError(f"secret {ref}: the server's own settings are never readable as secrets")
            if not env_readable(name, self._env_allowed):
                raise LookupError(
                    f"secret {ref}: the server does not let pipelines read {name}; the operator lists "
                    "the variables they may read in INGESTLAYER_ENV_SECRETS (or store it with "
                    f"`ingestlayer secrets set` and use ref:)"
                )
            value = os.environ.get(name)
            if value is None:
                raise LookupError(f"secret {ref} is not set in the worker's environment")
            if not value:
                # Set but empty (``NAME=`` in an env file): sent, it was an empty credential.
                raise EmptySecret(f"secret {ref} is empty in the worker's environment")
            return value
        if ref.startswith("ref:"):
            key = (project_id, ref[4:])
            hit = self._cache.get(key)
            if hit and hit[0] > time.monotonic():
                return hit[1]
            # One read per secret however many sends are waiting for it: when the entry expires
            # under load, every in-flight send would otherwise query the database at once.
            pending = self._loading.get(key)
            if pending is None:
                pending = asyncio.ensure_future(self._load(key, ref))
                self._loading[key] = pending
                pending.add_done_callback(lambda done: self._finished(key, done))
            return await asyncio.shield(pending)
        raise LookupError("a secret must be referenced as env:VAR or ref:NAME")

    def _finished(self, key: tuple[str, str], done: asyncio.Future[str]) -> None:
        if self._loading.get(key) is done:
            del self._loading[key]
        if not done.cancelled():
            done.exception()  # retrieved here: each waiter gets it raised on its own await

    async def _load(self, key: tuple[str, str], ref: str) -> str:
        generation = self._generation.get(key[0], 0)
        token = await self._store.get_secret(*key)
        if token is None:
            raise LookupError(
                f"secret {ref} does not exist (set it with `ingestlayer secrets set {ref[4:]}`)"
            )
        try:
            value = self._box.decrypt(token)
        except SecretDecryptError:
            # Like a secret that does not exist: the attempt fails with this message and is
            # retried (setting it again in time delivers), rather than raising out of the
            # destination with a traceback for every attempt.
            raise LookupError(
                f"secret {ref} cannot be decrypted: the master key differs from the one it was stored "
                f"with (set it again with `ingestlayer secrets set {ref[4:]}`)"
            ) from None
        if self._generation.get(key[0], 0) == generation:  # not forgotten while we read
            self._cache[key] = (time.monotonic() + SECRET_CACHE_SECONDS, value)
        return value

    def forget(self, project_id: str | None = None) -> None:
        """Drop a project's cached secrets (or every project's), so the next send reads them
        afresh."""
        projects = {k[0] for k in (*self._cache, *self._loading)} if project_id is None else {project_id}
        for key in [k for k in self._cache if k[0] in projects]:
            del self._cache[key]
        for key in [k for k in self._loading if k[0] in projects]:
            del self._loading[key]  # a read begun before the change must not be shared after it
        for pid in projects:
            self._generation[pid] = self._generation.get(pid, 0) + 1


class Dispatcher:
    def __init__(
        self,
        store: Store,
        settings: Settings,
        box: SecretBox,
        *,
        on_finished: Callable[[AttemptResult], None] | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        # A lease shorter than an attempt may take: past its lease, an attempt still running would
        # be retaken and sent again beside itself. Such attempts are cut short at their lease
        # (less a margin, for recording the outcome).
        self._attempt_limit: float | None = None
        self._lease_margin = 0.0
        if settings.delivery_lease_seconds < MAX_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS:
            lease = settings.delivery_lease_seconds
            self._lease_margin = min(LEASE_MARGIN_SECONDS, lease / 4)
            self._attempt_limit = lease - self._lease_margin
            log.warning(
                "INGESTLAYER_DELIVERY_LEASE_SECONDS=%g is shorter than a destination's longest timeout "
                "(%d s) and a margin: attempts are cut short after %g s, as a timeout, so that none "
                "is sent again while it still runs",
                settings.delivery_lease_seconds,
                MAX_TIMEOUT_SECONDS,
                self._attempt_limit,
            )
        self.resolver = SecretResolver(store, box, settings.env_secrets)
        self.egress = EgressPolicy(allow_private=settings.allow_private_destinations)
        self.wake = asyncio.Event()
        self._dests: dict[str, _Dest] = {}
        self._next_idle_sweep = 0.0
        self._inflight: dict[asyncio.Task[None], LeasedDelivery] = {}  # attempt → its delivery
        self._began: dict[asyncio.Task[None], tuple[float, float]] = {}  # clock.now(), perf_counter()
        self._unexpected: set[str] = set()  # where attempts failed past their handling (logged once)
        self._results: list[AttemptResult] = []
        self._unrecorded: list[AttemptResult] = []  # the database was out of reach when recorded
        self._recording_again = False  # the writer is trying such outcomes again
        self._recording: list[AttemptResult] = []  # the batch the writer is recording now
        self._record_now = asyncio.Event()  # cuts the writer's pause after a failure short
        self._record_poked = 0.0  # time.monotonic() of the lease loop's last _record_now
        self._grace_ends: float | None = None  # time.monotonic() when shutdown's grace period ends
        self._lease_outage = OutageLog(log, "leasing deliveries")
        self._record_outage = OutageLog(log, "recording attempts")
        self._results_ready = asyncio.Event()
        self._on_finished = on_finished
        # For /healthz. The lease loop wakes every poll interval (sends run in tasks of their
        # own, so a slow destination never holds it); the writer waits for outcomes for as long
        # as none come, and pauses between tries when the database does not take them.
        self.heartbeat = Heartbeat("dispatcher", "the dispatcher's lease loop", pause=settings.poll_interval)
        self.writer_heartbeat = Heartbeat(
            "attempt_writer", "the dispatcher's attempt writer", pause=RECORD_RETRY_DELAYS[-1]
        )
        self._session: aiohttp.ClientSession | None = None
        self._http: HttpClient | None = None
        self._ctx: SendContext | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._starting: set[asyncio.Task[None]] = set()
        self._reserved = 0  # handed over by the router, not yet started
        self._accepting = False
        self._attempt_counters: dict[str, Any] = {}
        self._backlogged = False
        self.slots = DestinationSlots(
            per_destination=settings.per_destination_concurrency,
            slow_limit=settings.slow_destination_limit,
            slow_seconds=settings.slow_destination_seconds,
            fresh_limit=max(settings.slow_destination_limit, settings.delivery_concurrency // 4),
            slow_pool_limit=settings.delivery_concurrency // 2,
            per_project=settings.per_project_concurrency,
        )

    async def _open(self) -> SendContext:
        if self._ctx is None:
            connector = aiohttp.TCPConnector(
                limit=self.settings.delivery_concurrency,
                resolver=GuardedResolver(self.egress),
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, json_serialize=lambda o: orjson.dumps(o).decode()
            )
            self._http = HttpClient(
                resolve=AddressResolver(self.egress), limit_per_host=self.settings.delivery_concurrency
            )
            self._ctx = SendContext(
                session=self._session,
                resolve_secret=self.resolver,
                egress=self.egress,
                user_agent=f"ingestlayer/{__version__}",
                http=self._http,
            )
        return self._ctx

    async def _destinations(self, ids: set[str]) -> dict[str, _Dest | None]:
        rows = await self.store.get_destinations(ids)
        now = time.monotonic()
        self._drop_idle_destinations(now, keep=ids)
        out: dict[str, _Dest | None] = {}
        for did in ids:
            row = rows.get(did)
            if row is None:  # deleted: its instance (a pool, connections) goes with it
                gone = self._dests.pop(did, None)
                if gone is not None:
                    self._retire(gone.instance)
                out[did] = None
                continue
            cached = self._dests.get(did)
            if cached is not None and cached.updated_at != row.updated_at:
                self._retire(cached.instance)
            if cached is None or cached.updated_at != row.updated_at:
                # A changed destination (e.g. an endpoint whose secret was rotated) must not be
                # signed with a secret cached before the change.
                self.resolver.forget(row.project_id)
                cached = _build(row)
                self._dests[did] = cached
            cached.used_at = now
            out[did] = cached
        return out

    def _drop_idle_destinations(self, now: float, keep: set[str]) -> None:
        if now < self._next_idle_sweep:
            return
        self._next_idle_sweep = now + IDLE_DESTINATION_SECONDS / 10
        idle = [
            did
            for did, d in self._dests.items()
            if now - d.used_at > IDLE_DESTINATION_SECONDS and did not in keep
        ]
        for did in idle:
            self._retire(self._dests.pop(did).instance)

    async def _send(self, d: LeasedDelivery, dest: _Dest, request: SendRequest, ctx: SendContext) -> Outcome:
        instance: Destination = dest.instance
        if self._attempt_limit is None:
            return await instance.send(request, ctx)
        # Timed from the lease, not from the send: what came between (reading the destination,
        # the insert of a delivery routed here) would otherwise run the attempt past its lease,
        # and another worker retook it and sent it beside it.
        given = min(self._attempt_limit, d.lease_until - self._lease_margin - clock.now())
        if given <= 0:
            return Outcome(
                ok=False,
                error="not sent: the delivery's lease (INGESTLAYER_DELIVERY_LEASE_SECONDS) ran out "
                "before the attempt could begin",
            )
        try:
            async with asyncio.timeout(given):
                return await instance.send(request, ctx)
        except TimeoutError:
            return Outcome(
                ok=False,
                error=f"timeout: cut short after {given:.1f} s, at the end of the delivery's "
                "lease (INGESTLAYER_DELIVERY_LEASE_SECONDS)",
            )

    async def send_one(self, d: LeasedDelivery, dest: _Dest | None) -> AttemptResult:
        """Make one attempt and decide the delivery's next state."""
        n = d.attempts + 1
        started = clock.now()
        t0 = time.perf_counter()
        raised: Exception | None = None  # by the destination, its traceback not yet in the log
        if dest is None:
            outcome = Outcome(ok=False, error=DELETED_DESTINATION_ERROR, permanent=True)
        elif not dest.enabled:
            outcome = Outcome(ok=False, error=DISABLED_DESTINATION_ERROR, permanent=True)
        elif dest.broken is not None:
            outcome = Outcome(ok=False, error=dest.broken)
        elif isinstance(event := _event(d.body), str):
            # Retried on the schedule like any failure (a body put right in time still delivers),
            # not raised: the delivery stayed leased, and was taken again each time the lease ran out.
            outcome = Outcome(ok=False, error=f"the delivery's stored body cannot be read ({event})")
        else:
            ctx = await self._open()
            request = SendRequest(
                delivery_id=d.id,
                project_id=d.project_id,
                event_id=d.event_id,
                event_type=d.event_type,
                attempt=n,
                event=event,
                body_json=d.body,
            )
            try:
                outcome = await self._send(d, dest, request, ctx)
            except Exception as exc:  # a destination bug must not strand the delivery
                name = type(exc).__name__
                if name not in dest.raised:
                    dest.raised.add(name)
                    raised = exc
                outcome = Outcome(ok=False, error=f"internal error: {name}")
        duration_ms = (time.perf_counter() - t0) * 1000
        too_many = outcome.status_code == 429 or outcome.retry_after is not None
        if dest is not None and not outcome.ok and too_many:
            self._too_many(d.destination_id, outcome.retry_after)
        next_at: float | None = None
        if outcome.ok:
            status = "delivered"
        elif outcome.permanent or dest is None:
            status = "dead"
        else:
            delay = dest.policy.next_delay(n - d.retry_base, outcome.retry_after)
            if delay is None:
                status = "dead"
            else:
                status = "retrying"
                next_at = clock.now() + delay
        result = AttemptResult(
            delivery_id=d.id,
            project_id=d.project_id,
            lease_token=d.lease_token,
            n=n,
            started_at=started,
            duration_ms=duration_ms,
            status_code=outcome.status_code,
            error=outcome.error,
            response_excerpt=outcome.response_excerpt,
            status=status,
            next_retry_at=next_at,
            worker=self.store.worker_id,
        )
        self._count_attempts(status)
        metrics.ATTEMPT_SECONDS.observe(duration_ms / 1000)
        # Every attempt is in the attempt log (the database); the process log repeats the ones an
        # operator acts on. A line per success cost about a tenth of the dispatcher's CPU. A
        # destination's bug has its traceback on the line of the first attempt it failed.
        log.log(
            logging.DEBUG if status == "delivered" else logging.INFO if raised is None else logging.ERROR,
            "attempt delivery=%s event=%s destination=%s n=%d status=%s code=%s duration_ms=%.1f error=%s",
            d.id,
            d.event_id,
            d.destination_id,
            n,
            status,
            outcome.status_code,
            duration_ms,
            outcome.error,
            exc_info=raised,
        )
        return result

    def _count_attempts(self, status: str, n: int = 1) -> None:
        counter = self._attempt_counters.get(status)
        if counter is None:
            counter = self._attempt_counters[status] = metrics.ATTEMPTS.labels(result=status)
        counter.inc(n)

    def _too_many(self, did: str, retry_after: float | None) -> None:
        """The destination asked for fewer requests: no attempt to it starts until the time it
        gave, and fewer at once after (delivery/rate_limits.py); the lease loop looks again then."""
        wait = None if retry_after is None else min(retry_after, MAX_RETRY_AFTER)
        pause = self.slots.answered_too_many(did, wait)
        asyncio.get_running_loop().call_later(pause, self.wake.set)

    async def _run_one(self, d: LeasedDelivery, dest: _Dest | None, slot: Slot | None) -> None:
        t0 = time.monotonic()
        delivered = False
        try:
            result = await self.send_one(d, dest)
            delivered = result.status == "delivered"
        except Exception as exc:
            result = self._failed_unexpectedly(d, dest, exc)
        finally:
            if slot is not None and self.slots.finish(
                d.destination_id, time.monotonic() - t0, slot, delivered=delivered
            ):
                self.wake.set()  # it was left out of leases for want of room: it has some again
        self._results.append(result)
        self._results_ready.set()

    def _failed_unexpectedly(self, d: LeasedDelivery, dest: _Dest | None, exc: Exception) -> AttemptResult:
        """The attempt at ``d`` failed by an error past send_one's own handling (a bug): recorded
        as failed, retried on the destination's schedule and dead after it, like any failure.
        Left leased instead, it was taken again each time its lease ran out, for ever, with a
        traceback each time and nothing in its attempt log."""
        n = d.attempts + 1
        status, next_at = "dead", None
        if dest is not None:
            try:
                delay = dest.policy.next_delay(n - d.retry_base)
            except Exception:  # the stored row may be what it failed on: it ends, replayable
                delay = None
            if delay is not None:
                status, next_at = "retrying", clock.now() + delay
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        key = f"{type(exc).__name__}@{where.tb_frame.f_code.co_filename}:{where.tb_lineno}" if where else ""
        first = key not in self._unexpected
        self._unexpected.add(key)
        log.error(
            "the attempt at delivery %s failed unexpectedly (%s: %s); recorded as failed, status=%s",
            d.id,
            type(exc).__name__,
            exc,
            status,
            exc_info=exc if first else None,  # the traceback once per place, not once per attempt
        )
        self._count_attempts(status)
        return self._unanswered(
            d, asyncio.current_task(), f"internal error: {type(exc).__name__}", status, next_at
        )

    def _unanswered(
        self,
        d: LeasedDelivery,
        task: asyncio.Task[Any] | None,
        error: str,
        status: str,
        next_at: float | None,
    ) -> AttemptResult:
        """The attempt ``task`` made at ``d``, ended now without an answer."""
        began = self._began.get(task) if task is not None else None
        started, t0 = began or (clock.now(), time.perf_counter())
        return AttemptResult(
            delivery_id=d.id,
            project_id=d.project_id,
            lease_token=d.lease_token,
            n=d.attempts + 1,
            started_at=started,
            duration_ms=(time.perf_counter() - t0) * 1000,
            status_code=None,
            error=error,
            response_excerpt=None,
            status=status,
            next_retry_at=next_at,
            worker=self.store.worker_id,
        )

    async def _writer(self, done: asyncio.Event) -> None:
        """Record finished attempts in batches; ends once ``done`` (the lease loop has ended)
        and nothing is left in flight or unrecorded.

        Outcomes the database could not take (out of reach, the session lost) are kept and
        recorded with the next batch, after a growing pause. The lease of each stays ours in the
        meantime: were it to expire and another worker retake the delivery, the record still logs
        the attempt (the request was made) but leaves the newer state alone (the lease token no
        longer matches)."""
        failures = 0
        beat = self.writer_heartbeat
        while True:
            beat.idle = True
            await self._results_ready.wait()
            beat.idle = False
            beat.last = time.monotonic()
            self._results_ready.clear()
            if self._results or self._unrecorded:
                final = done.is_set() and not self._inflight
                again = bool(self._unrecorded)
                batch = self._unrecorded + self._results
                self._unrecorded, self._results = [], []
                self._recording_again, self._recording = again, batch
                try:
                    recorded, kept = await self._record(batch, again, final)
                except Exception:
                    # A bug, not the database: it ended the writer with nothing in the log, and
                    # every later attempt was sent and never recorded (sent again each time its
                    # lease ran out). These few are retaken when their leases expire.
                    log.exception(
                        "recording %d attempts failed unexpectedly: their deliveries are attempted "
                        "again when their leases expire; the first: %s",
                        len(batch),
                        ", ".join(r.delivery_id for r in batch[:10]),
                    )
                    recorded, kept = [], []
                finally:
                    self._recording_again, self._recording = False, []
                if self._on_finished is not None:
                    for r in recorded:
                        try:
                            self._on_finished(r)
                        except Exception:  # recorded all the same: not said to be lost
                            log.exception("after recording delivery %s", r.delivery_id)
                if kept:
                    if final:
                        self._give_up(kept)
                        return
                    self._hold(kept)
                    failures += 1
                    delay = RECORD_RETRY_DELAYS[min(failures, len(RECORD_RETRY_DELAYS)) - 1]
                    # Shutdown cuts the pause short (the last try is made at once), and so does
                    # the lease loop once the database answers it (see _holding_outcomes).
                    self._record_now.clear()
                    await wait_for_work(self._record_now, done, delay)
                    self._results_ready.set()
                    continue
                failures = 0
            if done.is_set() and not self._inflight and not self._results and not self._unrecorded:
                return

    def _holding_outcomes(self) -> bool:
        """Whether outcomes the database could not take are still to be recorded; if so, the
        writer is asked to try at once.

        The lease loop records them before it leases again. Were it to lease first after an
        outage longer than a lease, it would retake the deliveries whose leases ran out and send
        them a second time, though their outcomes are known here (seen: 24 sends of 6)."""
        if not (self._unrecorded or self._recording_again):
            return False
        now = time.monotonic()
        if now - self._record_poked >= HELD_OUTCOMES_POKE_SECONDS:
            # As often as the lease loop would have tried the database itself: no more load on
            # a database that is still away than before, and no pause of 5 s once it is back.
            self._record_poked = now
            self._record_now.set()
        return True

    def _hold(self, kept: list[AttemptResult]) -> None:
        """Keep outcomes for the next try, the oldest dropped beyond MAX_UNRECORDED."""
        self._unrecorded = kept + self._unrecorded
        over = len(self._unrecorded) - MAX_UNRECORDED
        if over > 0:
            dropped, self._unrecorded = self._unrecorded[:over], self._unrecorded[over:]
            log.error(
                "dropping %d unrecorded attempt outcomes (more than %d wait for the database): "
                "their deliveries are attempted again when their leases expire; the first: %s",
                over,
                MAX_UNRECORDED,
                ", ".join(r.delivery_id for r in dropped[:10]),
            )

    def _give_up(self, kept: list[AttemptResult]) -> None:
        ids = ", ".join(f"{r.delivery_id} (attempt {r.n}, {r.status})" for r in kept[:50])
        more = f" and {len(kept) - 50} more" if len(kept) > 50 else ""
        log.error(
            "exiting with %d attempts unrecorded (the database did not answer): their deliveries are "
            "attempted again when their leases expire, and these attempts are missing from their logs: %s%s",
            len(kept),
            ids,
            more,
        )

    async def _record(
        self, batch: list[AttemptResult], again: bool, final: bool = False
    ) -> tuple[list[AttemptResult], list[AttemptResult]]:
        """Record ``batch`` in one transaction; return what was recorded and what to try again
        later (the database was out of reach). If the database refused the batch (rather than
        being out of reach), record each attempt on its own, so that one it refuses does not
        leave the others unrecorded. A refused attempt is not tried again: its delivery stays
        leased, and is retaken when the lease expires and attempted again (at-least-once).
        ``final``: the last try, at shutdown, bounded by what is left of the grace period."""
        try:
            if final:
                await asyncio.wait_for(self.store.record_attempts(batch, again=again), self._grace_left())
            else:
                await self.store.record_attempts(batch, again=again)
        except CONNECTION_LOST as exc:
            self._record_outage.failed(exc, _kept(len(batch)))
            return [], batch
        except Exception:
            if len(batch) == 1:
                log.exception("recording the attempt of delivery %s failed", batch[0].delivery_id)
                return [], []
            log.exception("recording %d attempts failed; recording them one by one", len(batch))
        else:
            self._record_outage.succeeded()
            return batch, []
        recorded: list[AttemptResult] = []
        refused: list[str] = []
        for i, r in enumerate(batch):
            self.writer_heartbeat.beat()  # a transaction each: a batch held through an outage is long
            try:
                await self.store.record_attempts([r], again=again)
            except CONNECTION_LOST as exc:
                # Out of reach now: this one and the rest are tried again later.
                self._record_outage.failed(exc, _kept(len(batch) - i))
                return recorded, batch[i:]
            except Exception as exc:
                refused.append(f"{r.delivery_id} ({type(exc).__name__}: {exc})")
            else:
                recorded.append(r)
        if refused:
            shown = "; ".join(refused[:5])
            log.error("the attempts of %d deliveries could not be recorded: %s", len(refused), shown)
        return recorded, []

    def _grace_left(self) -> float:
        if self._grace_ends is None:
            return self.settings.shutdown_grace_seconds
        return max(1.0, self._grace_ends - time.monotonic())

    async def run(self, stop: asyncio.Event) -> None:
        done = asyncio.Event()
        writer = asyncio.create_task(self._writer(done), name="attempt-writer")
        self.writer_heartbeat.task = writer
        beat = self.heartbeat
        limit = self.settings.delivery_concurrency
        # Lease when a few slots are free, not every time one frees up: fewer, larger transactions.
        threshold = max(1, limit // 8)
        self._accepting = True
        try:
            while not stop.is_set():
                beat.last = time.monotonic()
                self.wake.clear()
                if self._holding_outcomes():
                    await wait_for_work(self.wake, stop, HELD_OUTCOMES_POLL_SECONDS)
                    continue
                free = limit - len(self._inflight) - self._reserved
                leased: list[LeasedDelivery] = []
                if free >= threshold or (free > 0 and not self._inflight):
                    want = min(free, self.settings.delivery_batch)
                    room = self.slots.room()
                    # When every destination has room for a good part of the lease, lease no
                    # more than the least room: that is the plain lease in due order, one
                    # statement. Otherwise (a destination is full) the lease goes by each
                    # destination's room, past the full one's backlog (store/lease_window.py).
                    # (Of the destinations in view: one not heard from lately gets its fresh
                    # limit through the lease by room, which a smaller lease would not need.)
                    least = room.smallest_known()
                    if least >= min(want, threshold):
                        want = min(want, least)
                    try:
                        leased = await self.store.lease_deliveries(
                            want, self.settings.delivery_lease_seconds, room
                        )
                    except CONNECTION_LOST as exc:
                        self._lease_outage.failed(exc)  # one line now and then, not a traceback each
                        await asyncio.sleep(1.0)
                        continue
                    except Exception:
                        log.exception("leasing deliveries failed; retrying shortly")
                        await asyncio.sleep(1.0)
                        continue
                    self._lease_outage.succeeded()
                    self.slots.leased(room, want, len(leased))
                    self._backlogged = len(leased) == want
                else:
                    self._backlogged = True  # no room to look: look again when a slot frees up
                if leased:
                    if stop.is_set():
                        await self._release(leased)
                        break
                    try:
                        dests = await self._destinations({d.destination_id for d in leased})
                    except Exception as exc:
                        # The database went away between the lease and this read (seen when
                        # PostgreSQL restarted under load): hand the deliveries back, go on.
                        _log_failure(
                            f"reading the destinations of {len(leased)} leased deliveries failed", exc
                        )
                        # Handed back beside the loop: its tries on a database that stopped
                        # answering may take minutes, and the loop must go on meanwhile.
                        self._release_later(leased)
                        await asyncio.sleep(1.0)
                        continue
                    self._spawn(leased, dests)
                    if self._backlogged:
                        continue  # more may be due: lease again straight away
                await wait_for_work(self.wake, stop, self.settings.poll_interval)
        finally:
            self._accepting = False
            self._grace_ends = time.monotonic() + self.settings.shutdown_grace_seconds
            try:
                if self._starting:
                    await asyncio.gather(*self._starting, return_exceptions=True)
                await self._drain()
                done.set()
                self._results_ready.set()
                await writer
                self.writer_heartbeat.task = None  # ended with the loop; a new run starts another
            except asyncio.CancelledError:
                # The shutdown's time ran out (a database that stopped answering): what the writer
                # still held is said now, or it would go unsaid.
                writer.cancel()
                held = self._recording + self._unrecorded + self._results
                if held:
                    self._give_up(held)
                raise
            await self._close_all()
            if self._session is not None:
                await self._session.close()
            if self._http is not None:
                await self._http.close()
            # A supervisor may run the loop again after a failure: it opens new clients.
            self._ctx = self._session = self._http = None

    # ---- handoff from the router in this process -------------------------------------------------

    def capacity(self) -> int:
        """How many fresh deliveries the router may hand over, already leased to us."""
        if not self._accepting:
            return 0
        return max(0, self.settings.delivery_concurrency - len(self._inflight) - self._reserved)

    def take(self, fresh: list[NewDelivery]) -> tuple[list[NewDelivery], int]:
        """Which of the router's fresh deliveries this process starts at once (see
        DestinationSlots.take); they come first in the list returned, with their count."""
        return self.slots.take(fresh, self.capacity())

    def accept(self, leased: list[LeasedDelivery]) -> None:
        self._reserved += len(leased)
        self.slots.hold(leased, 1)
        task = asyncio.create_task(self._start(leased))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start(self, leased: list[LeasedDelivery]) -> None:
        try:
            dests = await self._destinations({d.destination_id for d in leased})
        except Exception as exc:
            _log_failure(f"starting {len(leased)} handed-over deliveries failed", exc)
            await self._release(leased)  # if that fails too, they are retaken when the lease expires
            return
        finally:
            self._reserved -= len(leased)
            self.slots.hold(leased, -1)
        self._spawn(leased, dests)

    def _spawn(self, leased: list[LeasedDelivery], dests: dict[str, _Dest | None]) -> None:
        over: list[LeasedDelivery] = []
        for d in leased:
            dest = dests[d.destination_id]
            # A deleted destination's delivery is recorded as failed at once, without a slot.
            slot = None
            if dest is not None:
                slot = self.slots.start(d.destination_id, dest.concurrency, d.project_id)
                if slot is None:
                    over.append(d)
                    continue
            task = asyncio.create_task(self._run_one(d, dest, slot))
            self._inflight[task] = d
            self._began[task] = (clock.now(), time.perf_counter())
            task.add_done_callback(self._task_done)
        if over:
            # Leased in one batch beyond a destination's limit: due again at once, and left out of
            # leases while the destination is full, so they wait in the table, not here.
            self._release_later(over)

    def _release_later(self, leased: list[LeasedDelivery]) -> None:
        """:meth:`_release` in a task of its own (awaited at shutdown with those starting)."""
        release = asyncio.create_task(self._release(leased))
        self._starting.add(release)
        release.add_done_callback(self._starting.discard)

    async def _release(self, leased: list[LeasedDelivery]) -> None:
        """Hand leases back, due at once. Tried again after a lost connection: one session ended
        (pg_terminate_backend, a failover) had the deliveries wait out their whole lease."""
        for delay in (*RELEASE_RETRY_DELAYS, None):
            try:
                await self.store.release_leases(leased)
                return
            except CONNECTION_LOST as exc:
                if delay is not None:
                    await asyncio.sleep(delay)
                    continue
                log.warning(
                    "releasing %d leases failed: database unavailable: %s; they are retaken when they expire",
                    len(leased),
                    reason(exc),
                )
            except Exception:
                log.exception("releasing %d leases failed; they are retaken when they expire", len(leased))
            return

    def _retire(self, instance: Any) -> None:
        """Close a replaced destination (its pools, connections) once its sends are done."""
        if hasattr(instance, "close"):
            task = asyncio.create_task(self._close_later(instance, RETIRE_AFTER_SECONDS))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_later(self, instance: Any, delay: float) -> None:
        # A send that started before the change may still be using it: the longest timeout
        # a destination may have is 60 s.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(delay)
        try:
            await instance.close()
        except Exception:
            log.warning("closing a destination failed", exc_info=True)

    async def _close_all(self) -> None:
        for task in list(self._closing):
            task.cancel()  # the sleep ends early; the close still runs
        await asyncio.gather(*self._closing, return_exceptions=True)
        for cached in self._dests.values():
            if hasattr(cached.instance, "close"):
                try:
                    await cached.instance.close()
                except Exception:
                    log.warning("closing a destination failed", exc_info=True)
        self._dests.clear()

    def _task_done(self, task: asyncio.Task[None]) -> None:
        d = self._inflight.pop(task, None)
        self._began.pop(task, None)
        if d is not None and not task.cancelled() and (exc := task.exception()) is not None:
            # Past even _failed_unexpectedly (a bug in it): said now, with the delivery, not as
            # "Task exception was never retrieved" whenever the task is collected. Its lease is
            # kept: the delivery is attempted again once the lease expires.
            log.error(
                "the attempt at delivery %s failed unexpectedly; attempted again when its lease expires",
                d.id,
                exc_info=exc,
            )
        if self._backlogged:
            # The last lease was cut short by a lack of free slots (or was full): more may be
            # due. Otherwise the table has nothing due that a poll or a wake would not bring.
            self.wake.set()

    async def _drain(self) -> None:
        """Let in-flight attempts finish (up to the grace period) before the process exits."""
        if not self._inflight:
            return
        log.info("waiting for %d in-flight deliveries", len(self._inflight))
        _done, pending = await asyncio.wait(set(self._inflight), timeout=self.settings.shutdown_grace_seconds)
        cut_short = [self._cut_short(task) for task in pending if task in self._inflight]
        for task in pending:
            task.cancel()
        if pending:
            # Wait for the cancellations to land: until they leave ``_inflight`` the writer
            # would wait for their results forever and the process would never exit.
            await asyncio.wait(pending, timeout=5)
            await self._release_cut_short(cut_short)

    def _cut_short(self, task: asyncio.Task[None]) -> tuple[LeasedDelivery, AttemptResult]:
        """The attempt ``task`` makes, as cut short now: no answer, due again at once."""
        d = self._inflight[task]
        return d, self._unanswered(d, task, CUT_SHORT_ERROR, "retrying", clock.now())

    async def _release_cut_short(self, cut_short: list[tuple[LeasedDelivery, AttemptResult]]) -> None:
        """Hand back deliveries whose attempts outlasted the grace period, due at once, for
        another worker (or this one restarted) instead of waiting out the lease. The receiver
        may have seen the request: it is logged (the next attempt is numbered after it, with the
        same delivery id), and does not count toward the retry schedule, so restarting workers
        never makes a delivery dead."""
        log.info(
            "logging and releasing %d deliveries whose attempts outlasted the grace period", len(cut_short)
        )
        try:
            await self.store.release_leases([], [attempt for _, attempt in cut_short])
            # Logged as attempts, so counted as such: the metric sums to the attempt log's rows.
            self._count_attempts("retrying", len(cut_short))
        except CONNECTION_LOST as exc:
            log.error(
                "could not log %d attempts cut short by the shutdown (database unavailable: %s): their "
                "deliveries are attempted again when their leases expire, and these attempts are "
                "missing from their logs: %s",
                len(cut_short),
                reason(exc),
                ", ".join(f"{d.id} (attempt {d.attempts + 1})" for d, _ in cut_short[:50]),
            )
        except Exception:
            log.exception("logging %d attempts cut short failed; releasing their deliveries", len(cut_short))
            await self._release([d for d, _ in cut_short])
