"""Reading events and deliveries (API, CLI, dashboard), and replaying deliveries."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, update

from ingestlayer import clock
from ingestlayer.records import StoredEvent
from ingestlayer.store import rows as rowmap
from ingestlayer.store.base import StoreBase
from ingestlayer.store.retention import (
    PURGE_PAUSE_SECONDS,
    PURGE_TARGET_SECONDS,
    REPLAY_BATCH,
    next_batch_size,
)
from ingestlayer.store.schema import attempts, deliveries, events
from ingestlayer.store.stats import id_bound, newest_of_prefix
from ingestlayer.store.type_prefix import starts_with

# How far an event's id may be from when it was received: ids are made a moment after the time
# is read, and held back by an earlier id when the clock steps back. Kept wide; only the
# events received this close outside a since/until window are read and left out.
ID_TIME_MARGIN_SECONDS = 300.0

# The columns rows.stored_event reads, in its order.
_EVENT_SELECT = [events.c[name] for name in rowmap.EVENT_COLUMNS.split(", ")]


class ListingsMixin(StoreBase):
    """Events and deliveries as the API, CLI and dashboard list them, and replays of them."""

    async def get_event(self, project_id: str, event_id: str) -> StoredEvent | None:
        async with self.engines.read.connect() as conn:
            row = (
                await conn.execute(
                    select(*_EVENT_SELECT).where(events.c.project_id == project_id, events.c.id == event_id)
                )
            ).first()
            return rowmap.stored_event(row) if row else None

    async def list_events(
        self,
        project_id: str,
        *,
        type_: str | None = None,
        before: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int = 50,
    ) -> list[StoredEvent]:
        conds = [events.c.project_id == project_id]
        prefix: list[Any] = []
        if type_:
            if type_.endswith("*"):
                # Not LIKE: on SQLite it listed Invoice.paid under invoice.* (type_prefix).
                if type_[:-1]:
                    prefix = starts_with(self.dialect, events.c.type, type_[:-1])
            else:
                conds.append(events.c.type == type_)
        if before:
            conds.append(events.c.id < before)
        # received_at has no index: bounded by the id too (evt_ + ULID of when it was received),
        # a window is a range of (project_id, id), not a walk of every event after it.
        if since is not None:
            conds.append(events.c.received_at >= since)
            conds.append(events.c.id >= id_bound("evt", since - ID_TIME_MARGIN_SECONDS))
        if until is not None:
            conds.append(events.c.received_at < until)
            conds.append(events.c.id < id_bound("evt", until + ID_TIME_MARGIN_SECONDS))
        async with self.engines.read.connect() as conn:
            if prefix and self.dialect == "sqlite":
                # The prefix is a range of types there, but not of ids: listed by it, every event
                # of every matching type was read and sorted (a third of a project, for user.*).
                # A few types are each an ordered walk of (project_id, type, id), merged.
                # (PostgreSQL's prefix is a LIKE, and its types sort by its collation, which no
                # range bounds: it walks (project_id, id) newest first and stops at a page.)
                ids = await newest_of_prefix(conn, project_id, conds, prefix, limit)
                if ids is not None:
                    conds.append(events.c.id.in_(ids))
                    prefix = []
            rows = await conn.execute(
                select(*_EVENT_SELECT).where(*conds, *prefix).order_by(events.c.id.desc()).limit(limit)
            )
            return [rowmap.stored_event(r) for r in rows]

    async def list_deliveries(
        self,
        project_id: str,
        *,
        status: Sequence[str] | None = None,
        destination_id: str | None = None,
        event_id: str | None = None,
        before: str | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        conds = [deliveries.c.project_id == project_id]
        if event_id:
            # An event has few deliveries: find them by event id alone (that index), and check
            # the project after; with both in SQL, SQLite walks the project's whole index.
            conds = [deliveries.c.event_id == event_id]
        if status:
            conds.append(deliveries.c.status.in_(list(status)))
        if destination_id:
            conds.append(deliveries.c.destination_id == destination_id)
        if before:
            conds.append(deliveries.c.id < before)
        cols = [c for c in deliveries.c if c.name not in ("body", "lease_token")]
        async with self.engines.read.connect() as conn:
            rows = await conn.execute(
                select(*cols).where(*conds).order_by(deliveries.c.id.desc()).limit(limit)
            )
            return [dict(r._mapping) for r in rows if r.project_id == project_id]

    async def has_deliveries_to(self, project_id: str, destination_id: str) -> bool:
        """Whether the project has any delivery to this destination (one deleted, say)."""
        async with self.engines.read.connect() as conn:
            query = select(deliveries.c.project_id).where(deliveries.c.destination_id == destination_id)
            # By the destination's index; checked against the project after, as list_deliveries does.
            rows = await conn.execute(query.limit(1))
            return any(r.project_id == project_id for r in rows)

    async def get_delivery(self, project_id: str, delivery_id: str) -> dict[str, Any] | None:
        async with self.engines.read.connect() as conn:
            row = (
                await conn.execute(
                    select(deliveries).where(
                        deliveries.c.project_id == project_id, deliveries.c.id == delivery_id
                    )
                )
            ).first()
            if row is None:
                return None
            found = dict(row._mapping)
            found.pop("lease_token", None)
            arows = await conn.execute(
                # In the order they began: an attempt recorded late (its worker was paused past its
                # lease, and another took the delivery over) shows where it happened.
                select(attempts)
                .where(attempts.c.delivery_id == delivery_id)
                .order_by(attempts.c.started_at, attempts.c.id)
            )
            found["attempt_log"] = [dict(a._mapping) for a in arows]
            return found

    async def replay(
        self,
        project_id: str,
        delivery_ids: Sequence[str] | None = None,
        *,
        status: Sequence[str] | None = None,
        destination_ids: Sequence[str] | None = None,
        since: float | None = None,
        until: float | None = None,
        after: str | None = None,
        limit: int = 10_000,
        batch: int = REPLAY_BATCH,
        pause: float = PURGE_PAUSE_SECONDS,
        target_seconds: float = PURGE_TARGET_SECONDS,
    ) -> list[str]:
        """Make deliveries due again on the same ids, starting the retry schedule afresh.

        A delivery that is being attempted right now is left alone. Returns the ids replayed:
        the first ``limit`` that match (to one of ``destination_ids``, if given; after the id
        ``after``, if given), in id order.

        They are replayed ``batch`` per transaction at most, with ``pause`` (or as long as the
        last transaction took, if longer) between: on SQLite a transaction holds the only
        writer, and 100,000 in one stalled ingest for 0.7 s. A transaction that took longer than
        ``target_seconds`` halves the next batch, as the retention purge's do: 1,000 at a time
        held the writer 40-110 ms at 300,000 deliveries, and ingest's p99 reached 200 ms.

        The matching deliveries are found on a reader, walking ids upward, and checked again as
        they are updated; one replayed by an earlier batch is never picked again, even if it has
        ended again meanwhile.
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        conds = [deliveries.c.project_id == project_id, deliveries.c.status != "delivering"]
        if delivery_ids is not None:
            conds.append(deliveries.c.id.in_(list(delivery_ids)))
        if status:
            conds.append(deliveries.c.status.in_(list(status)))
        if destination_ids is not None:
            conds.append(deliveries.c.destination_id.in_(list(destination_ids)))
        if since is not None:
            conds.append(deliveries.c.created_at >= since)
        if until is not None:
            conds.append(deliveries.c.created_at < until)
        replayed: list[str] = []
        most = batch
        # after: the keyset cursor, the last delivery id looked at
        while len(replayed) < limit:
            size = min(most, limit - len(replayed))
            query = select(deliveries.c.id).where(*conds)
            if after is not None:
                query = query.where(deliveries.c.id > after)
            async with self.engines.read.connect() as conn:
                picked = list((await conn.execute(query.order_by(deliveries.c.id).limit(size))).scalars())
            if not picked:
                break
            async with self.engines.write.begin() as conn:
                # Timed from when the writer is ours: a wait for another connection's lock is
                # not time this transaction held it, to be left to others after.
                started = time.monotonic()
                now = clock.now()
                res = await conn.execute(
                    update(deliveries)
                    .where(deliveries.c.id.in_(picked), *conds)
                    .values(
                        status="pending",
                        due_at=now,
                        retry_base=deliveries.c.attempts,
                        finished_at=None,
                        updated_at=now,
                    )
                    .returning(deliveries.c.id)
                )
                replayed.extend(sorted(res.scalars().all()))
            held = time.monotonic() - started
            if len(picked) < size:
                break
            after = picked[-1]
            most = next_batch_size(most, held, batch, target_seconds)
            if len(replayed) < limit:
                await asyncio.sleep(max(pause, held))
        return replayed
