"""Leases take each destination's deliveries only up to its room (its free concurrency), and
find the other destinations' due deliveries behind a full destination's backlog, however long."""

from __future__ import annotations

import time

from ingestlayer.ids import new_id
from ingestlayer.records import LeasedDelivery, NewDelivery, NewEvent
from ingestlayer.store.lease_window import LEASE_WINDOW, Room
from ingestlayer.store.store import Store


async def _deliveries(store: Store, pid: str, destination_id: str, n: int) -> list[str]:
    """``n`` due deliveries to ``destination_id``, routed the usual way; their ids."""
    now = time.time()
    events = [NewEvent(new_id("evt"), pid, "a.b", "{}", None, "api", now, now) for _ in range(n)]
    await store.insert_events(events)
    ids: list[str] = []
    while True:
        lease = await store.lease_route_jobs(500, 60.0)
        if not lease.events:
            return ids
        new = [
            NewDelivery(new_id("dlv"), pid, e.id, "a.b", "pip_x", destination_id, "{}") for e in lease.events
        ]
        await store.complete_routing(lease, new, {})
        ids.extend(d.id for d in new)


def _by_destination(leased: list[LeasedDelivery]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for d in leased:
        out.setdefault(d.destination_id, set()).add(d.id)
    return out


async def test_a_full_destinations_backlog_does_not_hide_the_others(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("room")
        # The full destination's backlog is older than everything else and longer than the
        # window a lease looks at before it looks destination by destination.
        backlog = await _deliveries(store, pid, "dst_full", 256 + LEASE_WINDOW + 200)
        others = await _deliveries(store, pid, "dst_other", 5)
        third = await _deliveries(store, pid, "dst_third", 3)

        leased = await store.lease_deliveries(256, 60.0, Room({"dst_full": 0}, 32))
        assert sorted(d.id for d in leased) == sorted(others + third)

        # Nothing but the full destination is due now: nothing is leased.
        assert await store.lease_deliveries(256, 60.0, Room({"dst_full": 0}, 32)) == []

        # Room for two: the two oldest of its backlog, no more.
        leased = await store.lease_deliveries(256, 60.0, Room({"dst_full": 2}, 32))
        assert len(leased) == 2 and {d.id for d in leased} <= set(backlog)
    finally:
        await store.close()


async def test_a_lease_takes_each_destination_up_to_its_room_oldest_first(db_url: str) -> None:
    store = Store.from_url(db_url)
    try:
        pid, _, _ = await store.create_project("room")
        a = await _deliveries(store, pid, "dst_a", 10)
        b = await _deliveries(store, pid, "dst_b", 10)
        c = await _deliveries(store, pid, "dst_c", 10)

        # dst_a has 3 slots free, dst_b none, any other destination the default of 4.
        leased = await store.lease_deliveries(100, 60.0, Room({"dst_a": 3, "dst_b": 0}, 4))
        first = _by_destination(leased)
        assert {k: len(v) for k, v in first.items()} == {"dst_a": 3, "dst_c": 4}
        assert first["dst_a"] <= set(a) and first["dst_c"] <= set(c)

        # With room for all, the rest come in due order up to the lease's size: dst_a's
        # remaining seven (routed first), then five of dst_b's.
        second = _by_destination(await store.lease_deliveries(12, 60.0, Room({}, 100)))
        assert second["dst_a"] == set(a) - first["dst_a"]
        assert len(second["dst_b"]) == 5 and second["dst_b"] <= set(b)
        assert "dst_c" not in second
    finally:
        await store.close()
