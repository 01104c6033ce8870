"""Leasing within each destination's concurrency limit.

A destination at its limit must not get more deliveries leased here, yet its due deliveries
stay in the table, oldest first in the due index. Filtering them out of a scan in due order
walks the whole backlog on every lease: 21 ms over 200,000 such rows on SQLite (on the event
loop) and 41 ms on PostgreSQL, measured. So a lease that a destination's room could cut short
looks at a window of the oldest due rows first, taking each destination's rows up to its room;
only when that window leaves the lease short does it look destination by destination, through
``ix_deliveries_due_destination`` (destination_id, due_at): first which destinations have rows
in a due status (a skip scan, one index seek each), then each one's oldest due rows. Both cost
index seeks, not the backlog's length. SQLite does this in Python inside its write
transaction; PostgreSQL in one statement for the window and, when needed, one for the rest.

When every destination has room for the whole lease, the dispatcher leases no more than the
least room, and the plain lease in due order (one statement) is used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ingestlayer.records import LeasedDelivery

# Due rows looked at, beyond the lease's own size, before looking destination by destination.
LEASE_WINDOW = 64

DUE = "status IN ('pending', 'retrying', 'delivering')"  # matches the partial due indexes

# Each destination with rows in a due status, in one index seek per destination: a recursive
# common table expression ``d(id)`` (its last row is NULL), to follow WITH RECURSIVE.
DUE_DESTINATIONS_CTE = f"""d(id) AS (
    SELECT (SELECT min(destination_id) FROM deliveries WHERE {DUE})
    UNION ALL
    SELECT (SELECT min(destination_id) FROM deliveries WHERE {DUE} AND destination_id > d.id)
    FROM d WHERE d.id IS NOT NULL
)"""
DUE_DESTINATIONS = f"WITH RECURSIVE {DUE_DESTINATIONS_CTE} SELECT id FROM d WHERE id IS NOT NULL"


@dataclass(frozen=True)
class Room:
    """How many more attempts each destination may start in this process: ``known`` by id,
    ``default`` for any other."""

    known: Mapping[str, int]
    default: int

    def of(self, destination_id: str) -> int:
        return self.known.get(destination_id, self.default)

    def after(self, leased: Iterable[LeasedDelivery]) -> Room:
        """The room left once ``leased`` are taken."""
        known = dict(self.known)
        for d in leased:
            known[d.destination_id] = known.get(d.destination_id, self.default) - 1
        return Room(known, self.default)

    def smallest_known(self) -> int:
        """The least room of the destinations listed (the default when none is)."""
        return min(self.known.values()) if self.known else self.default

    def may_cut(self, limit: int) -> bool:
        """Whether some destination's room is smaller than a lease of ``limit``."""
        return limit > self.default or any(n < limit for n in self.known.values())


def from_window(rows: Sequence[tuple[str, str]], room: Room, limit: int, size: int) -> list[str] | None:
    """The ids to lease among a window of due ``(id, destination_id)`` rows in due order, each
    destination's up to its room; None when the window was full and left the lease short: more
    may lie beyond it, behind the backlog of destinations that have no room."""
    left: dict[str, int] = {}
    picked: list[str] = []
    for rid, did in rows:
        n = left.get(did)
        if n is None:
            n = room.of(did)
        if n > 0:
            picked.append(rid)
            if len(picked) == limit:
                return picked
        left[did] = n - 1
    return picked if len(rows) < size else None


def destinations_with_room(destination_ids: Iterable[str], room: Room) -> list[tuple[str, int]]:
    return [(did, n) for did in destination_ids if (n := room.of(did)) > 0]


def oldest_first(candidates: Iterable[tuple[float, str]], limit: int) -> list[str]:
    """The ids of the ``limit`` oldest ``(due_at, id)`` candidates."""
    return [rid for _, rid in sorted(candidates)[:limit]]
