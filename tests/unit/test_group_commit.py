"""Group commit: requests that queue up while a transaction runs share the next one; on a
database that commits concurrently, the next group is written while the last one commits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from ingestlayer.records import IngestResult, NewEvent
from ingestlayer.store.group_commit import GroupCommitter


def _event(n: int, key: str | None = None) -> NewEvent:
    return NewEvent(f"evt_{n}", "prj_1", "a.b", "{}", key, "api", 0.0, 0.0)


class SlowStore:
    """An insert that holds each transaction open until the test releases it."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.open = 0
        self.most_open = 0
        self.release = asyncio.Event()

    async def insert(self, batch: Sequence[NewEvent]) -> list[IngestResult]:
        self.groups.append([ev.id for ev in batch])
        self.open += 1
        self.most_open = max(self.most_open, self.open)
        try:
            await self.release.wait()
        finally:
            self.open -= 1
        return [IngestResult(ev.id, False) for ev in batch]


async def _submit_in_turn(committer: GroupCommitter, n: int) -> list[asyncio.Task[list[IngestResult]]]:
    tasks = []
    for i in range(n):
        tasks.append(asyncio.create_task(committer.submit([_event(i)])))
        await asyncio.sleep(0.01)  # each arrives while the previous transaction is open
    return tasks


@pytest.mark.parametrize(("inflight", "expected_open"), [(1, 1), (3, 3)])
async def test_transactions_in_flight_are_bounded(inflight: int, expected_open: int) -> None:
    store = SlowStore()
    counted: list[int] = []
    committer = GroupCommitter(
        store.insert, max_inflight=inflight, on_commit=lambda results: counted.append(len(results))
    )
    committer.start()
    tasks = await _submit_in_turn(committer, 6)
    assert store.open == expected_open
    store.release.set()
    results = await asyncio.gather(*tasks)
    # Every request gets its own event's result, whichever group carried it.
    assert [r[0].id for r in results] == [f"evt_{i}" for i in range(6)]
    assert store.most_open == expected_open
    assert sorted(i for g in store.groups for i in g) == sorted(f"evt_{i}" for i in range(6))
    assert sum(counted) == 6
    await committer.close()


async def test_close_waits_for_transactions_in_flight() -> None:
    store = SlowStore()
    committer = GroupCommitter(store.insert, max_inflight=2)
    committer.start()
    tasks = await _submit_in_turn(committer, 3)
    closing = asyncio.create_task(committer.close())
    await asyncio.sleep(0.05)
    assert not closing.done()  # two transactions are still open
    with pytest.raises(RuntimeError):
        await committer.submit([_event(99)])  # no new work once closing
    store.release.set()
    await closing
    assert all(t.done() and not t.exception() for t in tasks)


async def test_a_failed_transaction_fails_only_its_own_requests() -> None:
    calls = 0

    async def insert(batch: Sequence[NewEvent]) -> list[IngestResult]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OSError("disk full")
        return [IngestResult(ev.id, False) for ev in batch]

    committer = GroupCommitter(insert, max_inflight=2)
    committer.start()
    first = asyncio.create_task(committer.submit([_event(1)]))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(committer.submit([_event(2)]))
    with pytest.raises(OSError):
        await first
    assert (await second)[0].id == "evt_2"
    await committer.close()


async def test_requests_that_arrive_over_the_next_turns_share_the_group() -> None:
    """A group is left open for GATHER_TURNS turns of the loop: the requests that the answers of
    the last group bring back arrive over those turns, and taken at once a group held only what
    happened to be queued (a transaction, a log sync, for a few events each)."""
    store = SlowStore()
    store.release.set()
    committer = GroupCommitter(store.insert)
    committer.start()
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[list[IngestResult]]] = []

    def arrive(n: int) -> None:
        tasks.append(asyncio.create_task(committer.submit([_event(n)])))

    arrive(0)
    loop.call_soon(arrive, 1)  # next turn
    loop.call_soon(lambda: loop.call_soon(arrive, 2))  # the turn after
    await asyncio.sleep(0.05)
    await asyncio.gather(*tasks)
    assert store.groups == [["evt_0", "evt_1", "evt_2"]]
    await committer.close()
