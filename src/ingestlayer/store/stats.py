"""The dashboard's read queries: time-bucketed aggregates and searches, each backed by an index.

Index use (see ``docs/dashboard.md`` for the measured plans):

- Events are found by id, never by ``received_at``: ids are ``evt_`` + ULID, so a time is turned
  into an id bound (the ULID of that millisecond with the least randomness) and a time range is
  an id range on ``ix_events_project_id_id`` (or ``ix_events_project_type_id`` for one type).
- Attempts are read by time on ``ix_attempts_project_started`` (project_id, started_at).
- Deliveries are counted and listed on ``ix_deliveries_project_status_id`` and joined by id.

Buckets are aligned to multiples of their width, so a bucket that closed a while ago never
changes (bar retention purges); those are kept in a small in-process cache and a page view only
queries the buckets that are still open. "Now" is the database's clock (:mod:`ingestlayer.clock`),
which stamps every attempt: a machine whose own clock is off would otherwise leave the newest
attempts out of the window, or cache a bucket as closed while attempts still land in it.

An attempt succeeded when it has no error: every destination reports a failure with an error
and a success without one, whatever its status code (SMTP answers 250, the PostgreSQL
destination has none, Slack answers 200 to a message it refused).
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, TextClause, case, cast, func, select, text
from ulid import ULID

from ingestlayer import clock as db_clock
from ingestlayer.store.db import Engines
from ingestlayer.store.schema import attempts, deliveries, events
from ingestlayer.store.type_prefix import starts_with

# Window name -> (bucket width in seconds, number of buckets).
RANGES: dict[str, tuple[int, int]] = {"1h": (60, 60), "24h": (900, 96), "7d": (3600, 168)}
# A bucket that ended longer ago than this is final: the longest attempt (60 s timeout) has been
# recorded by then, and events are committed within milliseconds of getting their id.
SETTLE_SECONDS = 180.0
# Closed buckets never change (bar retention purges), so they are kept for hours.
CACHE_TTL_SECONDS = 6 * 3600.0
CACHE_MAX_ENTRIES = 50_000
PREVIEW_CHARS = 160
# Success and latency are computed from at most about this many attempts per query; beyond it,
# from an even sample (every k-th attempt by id). Counts are always exact.
SAMPLE_TARGET = 50_000
# The delivery logs filtered to at most this many deliveries read their attempts by delivery.
FEW_DELIVERIES = 10_000
# A type prefix matching at most this many distinct types is searched type by type.
MAX_PREFIX_TYPES = 24

# Latency histogram: 20 bins per decade of milliseconds (each 1/20 of the decade's upper bound,
# so about 5-50 % wide), 0 ms to 100 s, then one overflow bin. Percentiles interpolate in a bin.
_DECADES = 5
OVERFLOW_BIN = 20 * _DECADES


STATUSES = ("pending", "delivering", "retrying", "delivered", "dead")


@functools.lru_cache(maxsize=8)
def _attempt_counts_sql(n: int) -> TextClause:
    # Counts on (project_id, started_at) only: no row is read.
    return text(
        "SELECT "
        + ", ".join(
            f"(SELECT count(*) FROM attempts WHERE project_id = :p"
            f" AND started_at >= :a{i} AND started_at < :b{i}) AS c{i}"
            for i in range(n)
        )
    )


@functools.lru_cache(maxsize=8)
def _event_counts_sql(n: int) -> TextClause:
    # Counts on the (project_id, id) index only: ids are evt_ + ULID, so a time span is an id span.
    return text(
        "SELECT "
        + ", ".join(
            f"(SELECT count(*) FROM events WHERE project_id = :p AND id >= :a{i} AND id < :b{i}) AS c{i}"
            for i in range(n)
        )
    )


def id_bound(prefix: str, ts: float) -> str:
    """The smallest id of that prefix made at or after ``ts``: ``prefix_`` + ULID(ms, 0…0)."""
    ms = min(max(0, int(ts * 1000)), (1 << 48) - 1)
    return f"{prefix}_{ULID.from_bytes(ms.to_bytes(6, 'big') + bytes(10))}"


def bin_range(b: int) -> tuple[float, float]:
    """The [low, high) milliseconds of latency bin ``b``."""
    if b >= OVERFLOW_BIN:
        top = float(10**_DECADES)
        return top, top
    decade, j = divmod(b, 20)
    width = 10.0**decade / 2
    return j * width, (j + 1) * width


def percentile(hist: dict[int, int], q: float, longest: float | None = None) -> float | None:
    """The ``q`` quantile (0..1) of a latency histogram, interpolated within its bin, and no more
    than ``longest``, the longest duration seen: interpolating in a wide bin (10-15 s) could
    otherwise answer a p95 longer than every attempt measured."""
    total = sum(hist.values())
    if total == 0:
        return None
    target = q * total
    cum = 0
    for b in sorted(hist):
        count = hist[b]
        if count and cum + count >= target:
            lo, hi = bin_range(b)
            value = lo + (hi - lo) * max(0.0, target - cum) / count
            return value if longest is None else min(value, longest)
        cum += count
    return bin_range(max(hist))[1]  # pragma: no cover - cum reaches total above


async def distinct_types(conn: Any, project_id: str, prefix: list[Any]) -> list[str] | None:
    """The project's distinct event types matching ``prefix`` (type_prefix.starts_with): a loose
    index scan of (project_id, type, id), one seek per type.

    None when there are more than :data:`MAX_PREFIX_TYPES` of them.
    """
    types: list[str] = []
    last: str | None = None
    while len(types) <= MAX_PREFIX_TYPES:
        conds = [events.c.project_id == project_id, *prefix]
        if last is not None:
            conds.append(events.c.type > last)
        # ORDER BY … LIMIT 1 walks the index and stops; min() with a range scans it.
        nxt = await conn.scalar(select(events.c.type).where(*conds).order_by(events.c.type).limit(1))
        if nxt is None:
            return types
        types.append(str(nxt))
        last = str(nxt)
    return None


async def newest_of_prefix(
    conn: Any, project_id: str, conds: list[Any], prefix: list[Any], limit: int
) -> list[str] | None:
    """The ids of the ``limit`` newest events meeting ``conds`` whose type matches ``prefix``,
    newest first, found type by type (each an ordered walk of (project_id, type, id)) and
    merged; None when more than :data:`MAX_PREFIX_TYPES` types match, where one range scan and
    a sort costs less."""
    types = await distinct_types(conn, project_id, prefix)
    if types is None:
        return None
    newest: list[str] = []
    for t in types:
        query = select(events.c.id).where(*conds, events.c.type == t).order_by(events.c.id.desc())
        newest += (await conn.execute(query.limit(limit))).scalars()
    return sorted(newest, reverse=True)[:limit]


@dataclass(slots=True)
class AttemptBucket:
    attempts: int = 0  # exact
    ok: int = 0  # attempts without an error; exact, or estimated when sampled
    hist: dict[int, int] = field(default_factory=dict)  # latency bin -> attempts (estimated if sampled)
    sample_every: int = 1
    longest: float | None = None  # the longest duration read (of the sample, when sampled), ms

    def merge(self, other: AttemptBucket) -> None:
        self.attempts += other.attempts
        self.ok += other.ok
        self.sample_every = max(self.sample_every, other.sample_every)
        if other.longest is not None:
            self.longest = other.longest if self.longest is None else max(self.longest, other.longest)
        for b, n in other.hist.items():
            self.hist[b] = self.hist.get(b, 0) + n


@dataclass(slots=True)
class SeriesPoint:
    start: float
    end: float
    events: int
    attempts: int
    ok: int
    p50: float | None
    p95: float | None

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.attempts if self.attempts else None


@dataclass(slots=True)
class Series:
    range_key: str
    width: int
    start: float
    end: float
    points: list[SeriesPoint]
    events: int
    attempts: int
    ok: int
    p50: float | None
    p95: float | None
    sample_every: int = 1  # > 1: success and latency estimated from 1 in this many attempts

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.attempts if self.attempts else None


@dataclass(slots=True)
class EventRow:
    id: str
    type: str
    source: str
    occurred_at: float
    received_at: float
    preview: str


@dataclass(slots=True)
class AttemptRow:
    id: int
    delivery_id: str
    n: int
    started_at: float
    duration_ms: float
    status_code: int | None
    error: str | None
    response_excerpt: str | None
    next_retry_at: float | None
    event_id: str
    event_type: str
    destination_id: str
    delivery_status: str


class _BucketCache:
    """Values of closed buckets, by (project, kind, width, start); LRU with a TTL."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._data: OrderedDict[tuple[str, str, int, float], tuple[float, Any]] = OrderedDict()

    def get(self, key: tuple[str, str, int, float]) -> Any:
        hit = self._data.get(key)
        if hit is None:
            return None
        if hit[0] < self._clock():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return hit[1]

    def put(self, key: tuple[str, str, int, float], value: Any) -> None:
        self._data[key] = (self._clock() + CACHE_TTL_SECONDS, value)
        self._data.move_to_end(key)
        while len(self._data) > CACHE_MAX_ENTRIES:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()


class DashboardStats:
    """Aggregates and searches for the dashboard. One per process (it caches closed buckets)."""

    def __init__(self, engines: Engines, *, clock: Callable[[], float] = db_clock.now) -> None:
        self.engines = engines
        self.dialect = engines.dialect
        self.clock = clock
        self.cache = _BucketCache(clock)

    def _floor(self, expr: Any) -> Any:
        # Every value floored here is >= 0: SQLite's CAST truncates, PostgreSQL's rounds.
        if self.dialect == "postgresql":
            return cast(func.floor(expr), Integer)
        return cast(expr, Integer)

    # ---- overview ----------------------------------------------------------------------------

    def window(self, range_key: str) -> tuple[int, list[float]]:
        width, n = RANGES[range_key]
        last = (self.clock() // width) * width
        return width, [last - (n - 1 - i) * width for i in range(n)]

    async def series(self, project_id: str, range_key: str) -> Series:
        """Events, attempts, success and latency per bucket over the window ``range_key``."""
        now = self.clock()
        width, starts = self.window(range_key)
        settled = now - SETTLE_SECONDS
        ev_counts: list[int | None] = []
        at_buckets: list[AttemptBucket | None] = []
        for s in starts:
            final = s + width <= settled
            ev_counts.append(self.cache.get((project_id, "ev", width, s)) if final else None)
            at_buckets.append(self.cache.get((project_id, "at", width, s)) if final else None)

        missing_ev = [i for i, c in enumerate(ev_counts) if c is None]
        if missing_ev:
            found = await self._event_counts(project_id, [(starts[i], starts[i] + width) for i in missing_ev])
            for i, count in zip(missing_ev, found, strict=True):
                ev_counts[i] = count
                if starts[i] + width <= settled:
                    self.cache.put((project_id, "ev", width, starts[i]), count)

        missing_at = [i for i, b in enumerate(at_buckets) if b is None]
        if missing_at:
            first = missing_at[0]  # open buckets are the newest: query one contiguous tail
            got = await self._attempt_buckets(project_id, starts[first], width, len(starts) - first)
            for i in range(first, len(starts)):
                if at_buckets[i] is None:
                    bucket = got.get(i - first, AttemptBucket())
                    at_buckets[i] = bucket
                    if starts[i] + width <= settled:
                        self.cache.put((project_id, "at", width, starts[i]), bucket)

        total = AttemptBucket()
        points: list[SeriesPoint] = []
        for s, maybe_count, maybe_bucket in zip(starts, ev_counts, at_buckets, strict=True):
            assert maybe_count is not None and maybe_bucket is not None
            count, bucket = maybe_count, maybe_bucket
            total.merge(bucket)
            points.append(
                SeriesPoint(
                    start=s,
                    end=s + width,
                    events=count,
                    attempts=bucket.attempts,
                    ok=bucket.ok,
                    p50=percentile(bucket.hist, 0.5, bucket.longest),
                    p95=percentile(bucket.hist, 0.95, bucket.longest),
                )
            )
        return Series(
            range_key=range_key,
            width=width,
            start=starts[0],
            end=now,
            points=points,
            events=sum(p.events for p in points),
            attempts=total.attempts,
            ok=total.ok,
            p50=percentile(total.hist, 0.5, total.longest),
            p95=percentile(total.hist, 0.95, total.longest),
            sample_every=total.sample_every,
        )

    async def _event_counts(self, project_id: str, spans: Sequence[tuple[float, float]]) -> list[int]:
        """Events per [start, end) span: one index range count each, in one statement.

        Plain SQL text: compiling ~170 scalar subqueries through the expression language cost
        10-20 ms a call, the counting itself a millisecond or two.
        """
        out: list[int] = []
        async with self.engines.read.connect() as conn:
            for i in range(0, len(spans), 100):  # keeps the parameter count modest
                chunk = spans[i : i + 100]
                params: dict[str, Any] = {"p": project_id}
                for j, (lo, hi) in enumerate(chunk):
                    params[f"a{j}"] = id_bound("evt", lo)
                    params[f"b{j}"] = id_bound("evt", hi)
                row = (await conn.execute(_event_counts_sql(len(chunk)), params)).one()
                out.extend(int(v or 0) for v in row)
        return out

    async def _attempt_buckets(
        self, project_id: str, t0: float, width: int, n: int
    ) -> dict[int, AttemptBucket]:
        """Attempts from ``t0`` over ``n`` buckets: count, 2xx count and latency histogram each.

        Counts are exact (index-only range counts). Success and latency need each row, and the
        GROUP BY sorts them: past :data:`SAMPLE_TARGET` attempts they are estimated from every
        k-th attempt by id (ids are assigned in insertion order, independent of the outcome).
        """
        counts = await self._attempt_counts(project_id, t0, width, n)
        total = sum(counts)
        if total == 0:
            return {}
        every = max(1, math.ceil(total / SAMPLE_TARGET))
        d = attempts.c.duration_ms
        steps = [(d < 10.0 ** (k + 1), 20 * k + self._floor(d / (10.0**k / 2))) for k in range(_DECADES)]
        latency_bin = case(*steps, else_=OVERFLOW_BIN)
        # Not "status 2xx": see the module's docstring.
        ok = case((attempts.c.error.is_(None), 1), else_=0)
        bucket = self._floor((attempts.c.started_at - t0) / width)
        conds = [
            attempts.c.project_id == project_id,
            attempts.c.started_at >= t0,
            attempts.c.started_at < t0 + width * n,
        ]
        if every > 1:
            conds.append(attempts.c.id % every == 0)
        stmt = (
            select(
                bucket.label("b"),
                latency_bin.label("l"),
                func.count().label("n"),
                func.sum(ok).label("ok"),
                # Free in the same pass: caps the percentiles interpolated in its bucket's bins.
                func.max(d).label("longest"),
            )
            .where(*conds)
            .group_by("b", "l")
        )
        seen: dict[int, AttemptBucket] = {}
        async with self.engines.read.connect() as conn:
            for b, lat, count, oks, longest in await conn.execute(stmt):
                slot = seen.setdefault(int(b), AttemptBucket())
                slot.attempts += int(count)
                slot.ok += int(oks or 0)
                if longest is not None:
                    slot.longest = max(float(longest), slot.longest or 0.0)
                slot.hist[int(lat)] = slot.hist.get(int(lat), 0) + int(count) * every
        out: dict[int, AttemptBucket] = {}
        for i, exact in enumerate(counts):
            if not exact:
                continue
            got = seen.get(i, AttemptBucket())
            share = got.ok / got.attempts if got.attempts else 1.0
            out[i] = AttemptBucket(
                attempts=exact,
                ok=exact if every == 1 and got.ok == exact else round(share * exact),
                hist=got.hist,
                sample_every=every,
                longest=got.longest,
            )
        return out

    async def _attempt_counts(self, project_id: str, t0: float, width: int, n: int) -> list[int]:
        out: list[int] = []
        async with self.engines.read.connect() as conn:
            for i in range(0, n, 100):
                m = min(100, n - i)
                params: dict[str, Any] = {"p": project_id}
                for j in range(m):
                    params[f"a{j}"] = t0 + (i + j) * width
                    params[f"b{j}"] = t0 + (i + j + 1) * width
                row = (await conn.execute(_attempt_counts_sql(m), params)).one()
                out.extend(int(v or 0) for v in row)
        return out

    # ---- event search ------------------------------------------------------------------------

    async def search_events(
        self,
        project_id: str,
        *,
        type_: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[EventRow]:
        """Newest first; ``type_`` exact or a prefix ending in ``*``; keyset on ``before``."""
        conds = [events.c.project_id == project_id]
        if since is not None:
            conds.append(events.c.id >= id_bound("evt", since))
        if until is not None:
            conds.append(events.c.id < id_bound("evt", until))
        if before:
            conds.append(events.c.id < before)
        async with self.engines.read.connect() as conn:
            if type_ and type_.endswith("*") and type_[:-1]:
                prefix = starts_with(self.dialect, events.c.type, type_[:-1])
                ids = await newest_of_prefix(conn, project_id, conds, prefix, limit)
                if ids is None:  # many types share the prefix: one range scan and a sort
                    return await self._events(conn, [*conds, *prefix], limit)
                return await self._events(conn, [*conds, events.c.id.in_(ids)], limit)
            if type_ and not type_.endswith("*"):
                conds.append(events.c.type == type_)
            return await self._events(conn, conds, limit)

    async def _events(self, conn: Any, conds: list[Any], limit: int) -> list[EventRow]:
        stmt = (
            select(
                events.c.id,
                events.c.type,
                events.c.source,
                events.c.occurred_at,
                events.c.received_at,
                func.substr(events.c.payload, 1, PREVIEW_CHARS).label("preview"),
            )
            .where(*conds)
            .order_by(events.c.id.desc())
            .limit(limit)
        )
        rows = await conn.execute(stmt)
        return [EventRow(r.id, r.type, r.source, r.occurred_at, r.received_at, r.preview or "") for r in rows]

    async def delivery_statuses(self, project_id: str, event_ids: Sequence[str]) -> dict[str, dict[str, int]]:
        """For each event, how many of its deliveries are in each status."""
        if not event_ids:
            return {}
        # By event id alone (ix_deliveries_event_id): with project_id in the WHERE, SQLite without
        # ANALYZE statistics picks the (project_id, id) index and scans the whole project.
        stmt = (
            select(deliveries.c.event_id, deliveries.c.project_id, deliveries.c.status, func.count())
            .where(deliveries.c.event_id.in_(list(event_ids)))
            .group_by(deliveries.c.event_id, deliveries.c.project_id, deliveries.c.status)
        )
        out: dict[str, dict[str, int]] = {}
        async with self.engines.read.connect() as conn:
            for eid, pid, status, count in await conn.execute(stmt):
                if pid == project_id:
                    out.setdefault(eid, {})[status] = int(count)
        return out

    async def event_deliveries(self, project_id: str, event_id: str) -> list[dict[str, Any]]:
        """An event's deliveries (oldest first), on ix_deliveries_event_id; see above."""
        cols = [c for c in deliveries.c if c.name not in ("body", "lease_token")]
        stmt = select(*cols).where(deliveries.c.event_id == event_id).order_by(deliveries.c.id).limit(1000)
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(stmt)
            return [dict(r._mapping) for r in rows if r.project_id == project_id]

    # ---- delivery logs -----------------------------------------------------------------------

    async def list_attempts(
        self,
        project_id: str,
        *,
        status: Sequence[str] | None = None,
        destination_id: str | None = None,
        before: int | None = None,
        limit: int = 50,
    ) -> list[AttemptRow]:
        """Every attempt, newest first, with its delivery; filters apply to the delivery.

        Keyset pagination on (started_at, id): ``before`` is the id of the last attempt shown.

        Unfiltered, or filtered to many deliveries, the attempts are walked newest first on
        (project_id, started_at) until a page matches. Filtered to at most
        :data:`FEW_DELIVERIES` (the pending, those in flight, one quiet destination's dead),
        matches may be none or a handful among millions, and that walk read the project's whole
        attempt log: the attempts are then found from those deliveries instead (by delivery id)
        and sorted, however far back they are.
        """
        conds = [deliveries.c.project_id == project_id]
        if status:
            conds.append(deliveries.c.status.in_(list(status)))
        if destination_id:
            conds.append(deliveries.c.destination_id == destination_id)
        stmt = (
            select(
                attempts.c.id,
                attempts.c.delivery_id,
                attempts.c.n,
                attempts.c.started_at,
                attempts.c.duration_ms,
                attempts.c.status_code,
                attempts.c.error,
                attempts.c.response_excerpt,
                attempts.c.next_retry_at,
                deliveries.c.event_id,
                deliveries.c.event_type,
                deliveries.c.destination_id,
                deliveries.c.status.label("delivery_status"),
            )
            .select_from(attempts.join(deliveries, deliveries.c.id == attempts.c.delivery_id))
            .order_by(attempts.c.started_at.desc(), attempts.c.id.desc())
            .limit(limit)
        )
        async with self.engines.read.connect() as conn:
            few: list[str] | None = None
            if status or destination_id:
                # Read no further than the bound: a range of the deliveries' index.
                upto = select(deliveries.c.id).where(*conds).limit(FEW_DELIVERIES + 1)
                few = list((await conn.execute(upto)).scalars())
                if not few:
                    return []
            if few is not None and len(few) <= FEW_DELIVERIES:
                # By their ids, and not by project: no plan can then walk (project_id,
                # started_at), nor (PostgreSQL) hash the whole attempt log against them.
                conds.append(attempts.c.delivery_id.in_(few))
            else:
                conds.append(attempts.c.project_id == project_id)
            if before is not None:
                at = await conn.scalar(
                    select(attempts.c.started_at).where(
                        attempts.c.id == before, attempts.c.project_id == project_id
                    )
                )
                if at is None:
                    return []
                # (started_at, id) < (at, before), written so the index range is on started_at.
                conds.append(attempts.c.started_at <= at)
                conds.append((attempts.c.started_at < at) | (attempts.c.id < before))
            rows = await conn.execute(stmt.where(*conds))
            return [AttemptRow(**r._mapping) for r in rows]
