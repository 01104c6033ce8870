"""The database clock: offsets measured against the database's clock (ingestlayer.clock)."""

from __future__ import annotations

import logging

import pytest

from ingestlayer.clock import DatabaseClock


class FakeWall:
    """This machine's clock, advanced by hand."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


async def test_now_follows_the_database_clock_from_the_reading_with_the_shortest_trip() -> None:
    wall = FakeWall(1000.0)
    clock = DatabaseClock(wall)
    # Three readings of a database clock 120 s behind ours; the second comes back fastest.
    trips = iter([(0.4, 880.1), (0.02, 880.01), (0.3, 880.2)])

    async def read() -> float:
        trip, theirs = next(trips)
        wall.t += trip / 2
        value = theirs + (wall.t - 1000.0)
        wall.t += trip / 2
        return value

    offset = await clock.sync_with(read)
    assert offset == pytest.approx(-120.0, abs=0.011)
    wall.t = 5000.0
    assert clock.now() == pytest.approx(4880.0, abs=0.011)


@pytest.mark.parametrize(
    ("ahead", "warnings"),
    [
        (300.0, ["this machine's clock is 300.0 s behind the database's; stored times use the database's"]),
        (-90.0, ["this machine's clock is 90.0 s ahead of the database's; stored times use the database's"]),
        (0.002, []),  # in step: nothing to say
    ],
)
async def test_an_offset_of_a_second_or_more_is_logged_once(
    ahead: float, warnings: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    wall = FakeWall(1000.0)
    clock = DatabaseClock(wall)

    async def database_clock() -> float:
        return wall.t + ahead

    with caplog.at_level(logging.WARNING, logger="ingestlayer.clock"):
        await clock.sync_with(database_clock)
        await clock.sync_with(database_clock)
    assert [r.getMessage() for r in caplog.records] == warnings
    assert clock.now() == pytest.approx(1000.0 + ahead)
