"""Retention: purging finished deliveries, their attempts and their events once old."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sqlalchemy import delete, exists, select

from ingestlayer.store.base import StoreBase
from ingestlayer.store.schema import attempts, deliveries, events, route_jobs

DUE_STATUSES = ("pending", "retrying", "delivering")
# Retention purges (and bulk replays) run in short transactions beside ingest: on SQLite each
# one holds the only writer. 500 events with a delivery and an attempt each are about 10 ms.
PURGE_BATCH = 500
PURGE_TARGET_SECONDS = 0.025
PURGE_PAUSE_SECONDS = 0.01
REPLAY_BATCH = 1000


def next_batch_size(size: int, held: float, most: int, target_seconds: float) -> int:
    """The next batch's size after a transaction that held the writer ``held`` seconds: halved
    over the target (down to one), doubled under half of it (up to ``most``)."""
    if held > target_seconds:
        return max(1, size // 2)
    if held < target_seconds / 2:
        return min(most, size * 2)
    return size


class RetentionMixin(StoreBase):
    """The retention purge, in short transactions beside ingest."""

    async def purge_older_than(
        self,
        cutoff: float,
        batch: int = PURGE_BATCH,
        *,
        target_seconds: float = PURGE_TARGET_SECONDS,
        pause: float = PURGE_PAUSE_SECONDS,
        progress: Callable[[], None] | None = None,
    ) -> int:
        """Retention: delete finished deliveries, their attempts and events older than ``cutoff``.

        Old events are walked in id order, at most ``batch`` per transaction. One still owed work
        (an unfinished delivery or a route job) is kept and stepped over, so the purgeable events
        behind it still go however many kept ones come first. Returns how many events went.

        SQLite has one writer, so every transaction here stalls ingest while it is open: the
        walk itself (past kept events, and past every recent one at the end) reads on a reader
        connection, a transaction that took longer than ``target_seconds`` halves the next
        batch (events with many deliveries and attempts cost more), and the writer is left to
        others for ``pause`` (or as long as the transaction took, if longer) between batches.
        ``progress`` is called after each batch (the purge of a long backlog goes on for minutes).
        """
        if batch < 1:
            raise ValueError("batch must be at least 1")
        removed = 0
        size = batch
        after: str | None = None  # keyset cursor: the last event id looked at
        while True:
            async with self.engines.read.connect() as conn:
                query = select(events.c.id).where(events.c.received_at < cutoff)
                if after is not None:
                    query = query.where(events.c.id > after)
                old = await conn.execute(query.order_by(events.c.id).limit(size))
                ids = list(old.scalars().all())
            if not ids:
                return removed
            async with self.engines.write.begin() as conn:
                started = time.monotonic()  # from when the writer is ours (see replay)
                # Route jobs first, then deliveries, each locked (PostgreSQL; SQLite's writer
                # holds the database). The router deletes an event's route job and inserts its
                # deliveries in one commit: read in the other order, under READ COMMITTED, a
                # commit landing between the two reads hid both, and the event went with the
                # deliveries it had just been given. Read in this order, a route job gone from
                # the first read left its deliveries visible to the second. A replay that turns
                # a finished delivery back to pending either commits first and is seen here, or
                # waits for the lock and finds it gone.
                routing = await conn.execute(
                    select(route_jobs.c.event_id).where(route_jobs.c.event_id.in_(ids)).with_for_update()
                )
                keep = set(routing.scalars().all())
                owned = await conn.execute(
                    select(deliveries.c.event_id, deliveries.c.status)
                    .where(deliveries.c.event_id.in_(ids))
                    .with_for_update()
                )
                keep.update(event_id for event_id, status in owned if status in DUE_STATUSES)
                gone = [i for i in ids if i not in keep]
                if gone:
                    # Only finished deliveries go, and an event only with nothing left of its
                    # own: whatever this transaction did not see stays with its event.
                    finished = deliveries.c.event_id.in_(gone) & deliveries.c.status.not_in(DUE_STATUSES)
                    dids = select(deliveries.c.id).where(finished).scalar_subquery()
                    await conn.execute(delete(attempts).where(attempts.c.delivery_id.in_(dids)))
                    await conn.execute(delete(deliveries).where(finished))
                    unowned = (
                        events.c.id.in_(gone)
                        & ~exists().where(deliveries.c.event_id == events.c.id)
                        & ~exists().where(route_jobs.c.event_id == events.c.id)
                    )
                    res = await conn.execute(delete(events).where(unowned))
                    # Another process's purge may have taken some since they were read.
                    removed += res.rowcount
            held = time.monotonic() - started
            if progress is not None:
                progress()
            # A short batch was the last of the old events; otherwise go on after it (past the
            # kept ones too: they stay, and the cursor still moves, so the walk ends).
            if len(ids) < size:
                return removed
            after = ids[-1]
            size = next_batch_size(size, held, batch, target_seconds)
            await asyncio.sleep(max(pause, held))
