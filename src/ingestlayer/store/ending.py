"""Ending deliveries ``dead`` outside an attempt: those that wait for a destination that was
deleted or disabled."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, exists, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ingestlayer import clock, metrics
from ingestlayer.store.base import StoreBase
from ingestlayer.store.schema import attempts, deliveries, destinations

# What a delivery to a destination that no longer exists, or is disabled, ends with (the
# dispatcher's words too).
DELETED_DESTINATION_ERROR = "destination was deleted"
DISABLED_DESTINATION_ERROR = "destination is disabled"


def _destination_off() -> ColumnElement[bool]:
    """The delivery's destination is deleted or disabled, as its row is now. Checked by the
    statements that end deliveries, not only read before them: the change that called for it
    (a disable, a delete) committed earlier, in a transaction of its own, and another may have
    undone it since (enabled again): its deliveries then wait for their attempts as before."""
    return ~exists().where(destinations.c.id == deliveries.c.destination_id, destinations.c.enabled)


class EndingMixin(StoreBase):
    """Deliveries of deleted or disabled destinations, ended as the dispatcher would end them."""

    async def end_waiting_deliveries(
        self, project_id: str, destination_id: str, error: str, *, batch: int = 1000
    ) -> list[str]:
        """End a destination's deliveries that wait for an attempt (``pending`` or ``retrying``)
        as ``dead`` now, as the dispatcher ends one it finds the destination disabled for: one
        more attempt logged with ``error`` and no status code, ``last_error`` set, finished.

        Deliveries being attempted right now (``delivering``) are left to their attempt, whose
        record ends them if it fails (:meth:`end_stranded_retries`). Each
        batch is one transaction, so a long backlog does not hold SQLite's writer for long.
        The ended deliveries stay listed and can be replayed, and are counted in the
        ``dead`` attempts metric. Returns their ids.
        """
        ended: list[str] = []
        waiting = ("pending", "retrying")
        while True:
            async with self.engines.write.begin() as conn:
                picked = (
                    select(deliveries.c.id)
                    .where(
                        deliveries.c.project_id == project_id,
                        deliveries.c.destination_id == destination_id,
                        deliveries.c.status.in_(waiting),
                        _destination_off(),
                    )
                    .order_by(deliveries.c.id)
                    .limit(batch)
                )
                ids = list((await conn.execute(picked)).scalars().all())
                if not ids:
                    return ended
                ended += await self._end_dead(conn, ids, waiting, error)
            if len(ids) < batch:
                return ended

    async def end_stranded_retries(self, delivery_ids: Sequence[str]) -> list[str]:
        """End ``dead`` now the deliveries among these that wait for a retry of a destination
        deleted or disabled while their attempt ran, as :meth:`end_waiting_deliveries` ends the
        ones that were waiting then. That call leaves the attempts in flight alone, so without
        this one such a delivery stayed "retrying" until its next attempt (hours away on the
        default schedule). Returns their ids."""
        # Read first: a write transaction would take SQLite's write lock from ingest for every
        # batch holding a retry, and almost always find nothing to end. By primary keys only: with
        # the status in the query, PostgreSQL walked the index of due deliveries for a few hundred
        # ids (26-38 ms on a large backlog, for every batch).
        async with self.engines.read.connect() as conn:
            waiting = {
                did: dest
                for did, dest, status in await conn.execute(
                    select(deliveries.c.id, deliveries.c.destination_id, deliveries.c.status).where(
                        deliveries.c.id.in_(list(delivery_ids))
                    )
                )
                if status == "retrying"
            }
            if not waiting:
                return []
            live = {
                dest: enabled
                for dest, enabled in await conn.execute(
                    select(destinations.c.id, destinations.c.enabled).where(
                        destinations.c.id.in_(set(waiting.values()))
                    )
                )
            }
        by_error: dict[str, list[str]] = {}
        for did, dest in waiting.items():
            if dest not in live:
                by_error.setdefault(DELETED_DESTINATION_ERROR, []).append(did)
            elif not live[dest]:
                by_error.setdefault(DISABLED_DESTINATION_ERROR, []).append(did)
        ended: list[str] = []
        if by_error:
            async with self.engines.write.begin() as conn:
                for error, ids in by_error.items():
                    ended += await self._end_dead(conn, ids, ("retrying",), error)
        return ended

    async def _end_dead(
        self, conn: AsyncConnection, ids: Sequence[str], statuses: Sequence[str], error: str
    ) -> list[str]:
        """End these deliveries ``dead`` with ``error`` where their status is still one of
        ``statuses``: one more attempt logged with ``error`` and no status code, ``last_error``
        set, finished. Returns the ids ended."""
        now = clock.now()
        # The status is checked again by the update: a delivery leased meanwhile (PostgreSQL
        # re-reads a row another transaction changed) is left to its attempt. So is the
        # destination: one enabled again since it was read is left to go on.
        res = await conn.execute(
            update(deliveries)
            .where(
                deliveries.c.id.in_(list(ids)),
                deliveries.c.status.in_(list(statuses)),
                _destination_off(),
            )
            .values(
                status="dead",
                attempts=deliveries.c.attempts + 1,
                due_at=None,
                lease_token=None,
                last_status_code=None,
                last_error=error,
                finished_at=now,
                updated_at=now,
            )
            .returning(deliveries.c.id, deliveries.c.project_id, deliveries.c.attempts)
        )
        done = res.all()
        if done:
            await conn.execute(
                insert(attempts),
                [
                    {
                        "delivery_id": did,
                        "project_id": project_id,
                        "n": n,
                        "started_at": now,
                        "duration_ms": 0.0,
                        "status_code": None,
                        "error": error,
                        "response_excerpt": None,
                        "next_retry_at": None,
                        "worker": self.worker_id,
                    }
                    for did, project_id, n in done
                ],
            )
        # Counted as the dispatcher counts an attempt that ends a delivery dead.
        metrics.ATTEMPTS.labels(result="dead").inc(len(done))
        return [did for did, _, _ in done]
