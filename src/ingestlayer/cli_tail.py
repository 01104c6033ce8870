"""``ingestlayer tail``: a live view of new events and of delivery outcomes.

The API lists events and deliveries newest first, paged with ``before`` (an id). Each poll pages
down a listing from its newest row to a *floor*, the newest id seen so far less an overlap (ids
are ULIDs: a time turns into an id), however many pages that takes: nothing that arrived between
polls is skipped. Rows are remembered by id until they fall below the floor, so the overlap reads
rows again without printing them twice. The overlap is there for rows that become visible late:
an id is made before its row commits (a delivery when its event is routed, which may wait on a
slow step for up to the routing lease, 60 s).

Deliveries change after they appear. Each is remembered with the last outcome shown for it
(``delivered``, ``failed`` for a failed attempt that will be retried, ``dead``, and the attempt
number), and a line is printed when that changes. A delivery still in flight when it falls below
the floor, or already in flight when tail starts, is looked up by its event once it is due, until
it finishes.

``--last N`` shows the N latest outcomes by when they happened (``updated_at``), which for an older
delivery retried late is not where its id lists it. Those shown are remembered as any other, so
polling shows each again only when its outcome changes.
"""

from __future__ import annotations

import asyncio
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from ingestlayer.api.render import delivery_json, event_json
from ingestlayer.cli_backend import Backend, CliError, LocalBackend
from ingestlayer.ids import encode_ulid
from ingestlayer.pipeline.matching import TypeMatcher
from ingestlayer.replay_scope import listed_destination
from ingestlayer.timefmt import parse_iso

Row = dict[str, Any]
Fetch = Callable[[str | None, int], Awaitable[list[Row]]]

PAGE = 500  # the API's largest page
EVENT_OVERLAP = 30.0  # seconds
DELIVERY_OVERLAP = 60.0  # the routing lease: how late a delivery's row may commit after its id
IN_FLIGHT_AT_START = 1000  # deliveries in flight at the start that are followed to their outcome
LOOKUPS_PER_POLL = 50  # events whose in-flight deliveries (below the floor, due) are looked up
MAX_PAGES = 20  # for --last and the in-flight deliveries at the start (`tail --help` says 10,000)
OUTCOMES = {"delivered": "delivered", "retrying": "failed", "dead": "dead"}
IN_FLIGHT = ("pending", "delivering", "retrying")
_COLOURS = {"delivered": "green", "failed": "yellow", "dead": "red"}
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
# Above every delivery id: the first page is asked for with it, because a listing's first page
# (no `before`) also counts every delivery of the project, which a poll does not need.
_TOP_DELIVERY = "dlv_" + "Z" * 26


@dataclass(frozen=True)
class TailOptions:
    type_pattern: str | None = None
    destination: str | None = None
    outcomes: frozenset[str] = frozenset(OUTCOMES.values())
    events: bool = True
    deliveries: bool = True
    last: int = 0


@dataclass
class _Delivery:
    status: str
    event_id: str
    due: float | None  # when a retrying delivery is next attempted
    shown: tuple[str, int] | None  # (outcome, attempt) last printed, or there at the start
    looked_up: float = 0.0


def floor_id(newest: str, overlap: float) -> str:
    """The id of the same kind made ``overlap`` seconds before ``newest`` was."""
    prefix, ulid = newest.split("_", 1)
    ms = 0
    for ch in ulid[:10]:  # the first 10 digits of a ULID are its milliseconds
        ms = ms * 32 + _CROCKFORD.index(ch)
    return f"{prefix}_{encode_ulid(max(0, ms - int(overlap * 1000)) << 80)}"


async def page_down(fetch: Fetch, newest: str | None, overlap: float) -> list[Row]:
    """Every row from the newest down to the floor, oldest first."""
    rows: list[Row] = []
    before: str | None = None
    floor: str | None = None
    while True:
        page = await fetch(before, PAGE)
        if before is None:
            top = max(filter(None, (newest, page[0]["id"] if page else None)), default=None)
            floor = floor_id(top, overlap) if top else None
        for row in page:
            if floor is not None and row["id"] < floor:
                return rows[::-1]
            rows.append(row)
        if len(page) < PAGE:
            return rows[::-1]
        before = page[-1]["id"]


async def newest_rows(fetch: Fetch, n: int, keep: Callable[[Row], bool]) -> list[Row]:
    """The newest ``n`` rows that ``keep`` accepts (within MAX_PAGES pages), oldest first."""
    found: list[Row] = []
    before: str | None = None
    for _ in range(MAX_PAGES):
        page = await fetch(before, PAGE)
        found += [r for r in page if keep(r)]
        if len(found) >= n or len(page) < PAGE:
            break
        before = page[-1]["id"]
    return found[:n][::-1]


async def latest_outcomes(fetch: Fetch, n: int, keep: Callable[[Row], bool]) -> list[Row]:
    """The ``n`` rows that ``keep`` accepts with the latest outcomes (``updated_at``, then id),
    among the newest MAX_PAGES pages of deliveries, oldest outcome first. Listings go by id, the
    order deliveries were made in, and an older delivery's outcome may be the newer (a retry
    that ran late, a replay): each of those pages is read, as no id tells where they stop."""
    found: list[Row] = []
    before: str | None = None
    for _ in range(MAX_PAGES):
        page = await fetch(before, PAGE)
        found += [r for r in page if keep(r)]
        # Only the latest n are kept as pages are read.
        found = sorted(found, key=_outcome_order, reverse=True)[:n]
        if len(page) < PAGE:
            break
        before = page[-1]["id"]
    return found[::-1]


def _outcome_order(row: Row) -> tuple[str, str]:
    return (row.get("updated_at") or "", row["id"])


class Source:
    """The two listings, from a server over REST or from the database."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    async def events(self, type_: str | None, before: str | None, limit: int) -> list[Row]:
        b = self.backend
        if isinstance(b, LocalBackend):
            found = await b.store.list_events(await b.project_id(), type_=type_, before=before, limit=limit)
            return [event_json(e) for e in found]
        query = {"limit": limit, "type": type_, "before": before}
        return list((await b.call("GET", "/v1/events?" + _encode(query.items())))["data"])

    async def deliveries(
        self,
        *,
        destination: str | None,
        status: tuple[str, ...] = (),
        event_id: str | None = None,
        before: str | None = None,
        limit: int = PAGE,
    ) -> list[Row]:
        b = self.backend
        if isinstance(b, LocalBackend):
            pid = await b.project_id()
            cfg = await b.store.load_project_config(pid)
            names = {d.id: d.name for d in cfg.destinations.values()}
            dest_id = None
            if destination:  # as the API reads it: by name, id, an endpoint's ep_ id, a deleted one's
                dest_id = await listed_destination(b.store, cfg, destination)
                if dest_id is None:
                    raise CliError(f"no destination {destination!r}")
            found = await b.store.list_deliveries(
                pid, status=status, destination_id=dest_id, event_id=event_id, before=before, limit=limit
            )
            return [delivery_json(d, names) for d in found]
        query = [
            ("limit", limit),
            ("destination", destination),
            ("event_id", event_id),
            ("before", before),
            *(("status", s) for s in status),
        ]
        return list((await b.call("GET", "/v1/deliveries?" + _encode(query)))["data"])


def _encode(pairs: Any) -> str:
    return urllib.parse.urlencode([(k, v) for k, v in pairs if v is not None])


class Tail:
    def __init__(self, source: Source, options: TailOptions, emit: Callable[[str], None]) -> None:
        self.source = source
        self.opt = options
        self.emit = emit
        pattern = options.type_pattern
        self.matches: Callable[[str], bool] = TypeMatcher([pattern]) if pattern else lambda _: True
        # The API filters by a type or a prefix ending in *; other patterns are matched here.
        self.api_type = pattern if pattern and "*" not in pattern[:-1] else None
        self.events_seen: set[str] = set()
        self.newest_event: str | None = None
        self.deliveries: dict[str, _Delivery] = {}
        self.newest_delivery: str | None = None
        self.lines: list[tuple[str, str]] = []  # (time, line) of the poll under way

    async def start(self) -> None:
        """Remember what is there without printing it (except the newest ``last``)."""
        await self.poll(quiet=True)
        if self.opt.deliveries:
            in_flight = await newest_rows(
                lambda before, limit: self._deliveries(before, limit, IN_FLIGHT),
                IN_FLIGHT_AT_START,
                lambda r: self.matches(r["event_type"]),
            )
            for row in in_flight:
                self._observe(row, quiet=True)
        n = self.opt.last
        if n and self.opt.events:
            for row in await newest_rows(self._events, n, lambda r: self.matches(r["type"])):
                self.events_seen.add(row["id"])
                self._event_line(row)
        if n and self.opt.deliveries:
            statuses = tuple(s for s, o in OUTCOMES.items() if o in self.opt.outcomes)

            async def outcomes(before: str | None, limit: int) -> list[Row]:
                return await self._deliveries(before, limit, statuses)

            for row in await latest_outcomes(outcomes, n, lambda r: self.matches(r["event_type"])):
                self._observe(row, quiet=False, again=True)
        self._flush()

    async def poll(self, *, quiet: bool = False) -> None:
        if self.opt.events:
            rows = await page_down(self._events, self.newest_event, EVENT_OVERLAP)
            for row in rows:
                if row["id"] not in self.events_seen and self.matches(row["type"]):
                    self.events_seen.add(row["id"])
                    if not quiet:
                        self._event_line(row)
            if rows:
                self.newest_event = max(self.newest_event or "", rows[-1]["id"])
            if self.newest_event:
                floor = floor_id(self.newest_event, EVENT_OVERLAP)
                self.events_seen = {i for i in self.events_seen if i >= floor}
        if self.opt.deliveries:
            rows = await page_down(self._deliveries, self.newest_delivery, DELIVERY_OVERLAP)
            for row in rows:
                if self.matches(row["event_type"]):
                    self._observe(row, quiet=quiet)
            if rows:
                self.newest_delivery = max(self.newest_delivery or "", rows[-1]["id"])
            if self.newest_delivery:
                await self._below_floor(floor_id(self.newest_delivery, DELIVERY_OVERLAP), quiet)
        self._flush()

    async def _below_floor(self, floor: str, quiet: bool) -> None:
        """Forget finished deliveries below the floor; look up those in flight once due."""
        now = time.time()
        due: dict[str, list[str]] = {}  # event id -> its deliveries due
        for did, d in sorted(self.deliveries.items(), key=lambda item: item[1].looked_up):
            if did >= floor:
                continue
            if d.status not in IN_FLIGHT:
                del self.deliveries[did]
            elif d.due is None or d.due <= now:
                due.setdefault(d.event_id, []).append(did)
        # Least recently looked up first, so a long backlog is gone through in turn.
        for event_id in list(due)[:LOOKUPS_PER_POLL]:
            rows = {r["id"]: r for r in await self._deliveries(None, PAGE, (), event_id)}
            for did in due[event_id]:
                if did not in rows:  # gone (its destination or project deleted): stop looking
                    del self.deliveries[did]
                    continue
                self._observe(rows[did], quiet=quiet)
                self.deliveries[did].looked_up = now

    def _observe(self, row: Row, *, quiet: bool, again: bool = False) -> None:
        """Remember a delivery's state; print its outcome if it is new (or ``again``)."""
        outcome = OUTCOMES.get(row["status"])
        key = (outcome, int(row["attempt_count"])) if outcome else None
        known = self.deliveries.get(row["id"])
        shown = known.shown if known else None
        if key is not None and (key != shown or again):
            shown = key
            if not quiet and outcome in self.opt.outcomes:
                self.lines.append((row["updated_at"] or "", _delivery_line(row, key[0], key[1])))
        due = row.get("next_attempt_at")
        self.deliveries[row["id"]] = _Delivery(
            status=row["status"],
            event_id=row["event_id"],
            due=parse_iso(due) if due else None,
            shown=shown,
            looked_up=known.looked_up if known else 0.0,
        )

    def _event_line(self, row: Row) -> None:
        line = f"[cyan]{'event':<9}[/cyan]  {row['id']}  {_text(row['type'])}  from {_text(row['source'])}"
        self.lines.append((row["received_at"] or "", line))

    def _flush(self) -> None:
        # By time, and in the order found for equal times (events by id, oldest first).
        for at, line in sorted(self.lines, key=lambda pair: pair[0]):
            self.emit(f"{at}  {line}")
        self.lines = []

    async def _events(self, before: str | None, limit: int) -> list[Row]:
        return await self.source.events(self.api_type, before, limit)

    async def _deliveries(
        self, before: str | None, limit: int, status: tuple[str, ...] = (), event_id: str | None = None
    ) -> list[Row]:
        return await self.source.deliveries(
            destination=self.opt.destination,
            status=status,
            event_id=event_id,
            before=before or _TOP_DELIVERY,
            limit=limit,
        )


def _text(value: Any, limit: int = 200) -> str:
    """One line of plain text, whatever the value holds."""
    flat = " ".join(str(value).split())
    return escape(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def _delivery_line(row: Row, outcome: str, attempt: int) -> str:
    colour = _COLOURS[outcome]
    result = " ".join(str(x) for x in (row["last_status_code"], row["last_error"]) if x not in (None, ""))
    parts = [
        f"[{colour}]{outcome:<9}[/{colour}]",
        row["id"],
        f"{_text(row['event_type'])} -> {_text(row['destination'])}",
        f"attempt {attempt}",
        _text(result or "-"),
    ]
    if outcome == "failed" and row.get("next_attempt_at"):
        parts.append(f"retry at {row['next_attempt_at']}")
    parts.append(f"event {row['event_id']}")
    return "  ".join(parts)


async def follow(
    backend: Backend,
    options: TailOptions,
    emit: Callable[[str], None],
    *,
    interval: float,
    duration: float | None,
    ready: Callable[[], None],
) -> None:
    """Start from what is there (then call ``ready``), and poll every ``interval`` until
    ``duration`` seconds have passed (with a last poll then), or for ever if it is None: until
    the task is cancelled (Ctrl-C)."""
    tail = Tail(Source(backend), options, emit)
    await tail.start()
    ready()
    deadline = None if duration is None else time.monotonic() + duration
    while True:
        wait = interval if deadline is None else min(interval, deadline - time.monotonic())
        await asyncio.sleep(max(0.0, wait))
        await tail.poll()
        if deadline is not None and time.monotonic() >= deadline:
            return
