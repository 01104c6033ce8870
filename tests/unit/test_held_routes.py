"""Events of a project with no room left are put in line: due again about when the project can
take them, one route's time (over its concurrency) apart, so its backlog is neither leased over
and over nor left waiting while its model is idle, nor due all at once ahead of other projects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from ingestlayer.delivery import held_routes
from ingestlayer.delivery.held_routes import PUT_OFF_FIRST_SECONDS, PUT_OFF_MAX_SECONDS, HeldRoutes, Routed
from ingestlayer.records import StoredEvent


def _event(n: int, project: str = "prj_a") -> StoredEvent:
    return StoredEvent(f"evt_{project}_{n}", project, "ticket.created", "{}", None, "api", 0.0, 0.0)


async def _never() -> Routed:
    await asyncio.Event().wait()
    return Routed()


def _answering_after(seconds: float) -> Callable[[], Awaitable[Routed]]:
    async def route() -> Routed:
        await asyncio.sleep(seconds)
        return Routed()

    return route


async def _fill(
    held: HeldRoutes, project: str, route: Callable[[], Awaitable[Routed]] = _never, first: int = 0
) -> None:
    n = first
    while held.has_room(project):
        held.start(_event(n, project), 1.0, 1, route, lambda: None)
        n += 1
    await asyncio.sleep(0)  # the routes take their slots


@pytest.fixture
def small(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two running at once, six held."""
    monkeypatch.setattr(held_routes, "PROJECT_CONCURRENCY", 2)
    monkeypatch.setattr(held_routes, "PROJECT_HELD", 6)


async def test_the_line_starts_once_the_events_held_would_be_started_and_goes_a_route_apart(
    small: None,
) -> None:
    held = HeldRoutes(60.0)
    await _fill(held, "prj_a")
    assert len(held) == 6 and len(held.running()) == 6  # tasks, two of them holding a slot
    delays = held.put_off("prj_a", 4)
    # Four held wait for a slot: the line starts after them (1 s a route, 2 at once: 0.5 s each).
    gap = held_routes.ASSUMED_ROUTE_SECONDS / 2
    assert delays == pytest.approx([4 * gap + gap * i for i in range(1, 5)], abs=0.05)
    # The next pass's surplus goes behind them.
    more = held.put_off("prj_a", 2)
    assert more == pytest.approx([delays[-1] + gap, delays[-1] + 2 * gap], abs=0.05)
    await held.stop()


async def test_a_model_that_stopped_answering_spaces_the_line_by_its_oldest_call(small: None) -> None:
    held = HeldRoutes(60.0)
    await _fill(held, "prj_a")
    await asyncio.sleep(3.0)  # longer than a route is assumed to take: the calls are stuck
    first, second = held.put_off("prj_a", 2)
    # At least 3 s a route, two at once: 1.5 s apart, after the four waiting (6 s).
    assert second - first >= 1.5
    assert first >= 4 * 1.5
    await held.stop()


async def test_routes_that_answer_fast_keep_the_line_short(small: None) -> None:
    held = HeldRoutes(60.0)
    for n in range(6):
        held.start(_event(n), 1.0, 1, _answering_after(0.02), lambda: None)
    await asyncio.sleep(0.3)
    held.forget(held.finished())
    await _fill(held, "prj_a", first=10)
    delays = held.put_off("prj_a", 50)
    assert delays[0] == pytest.approx(PUT_OFF_FIRST_SECONDS, abs=0.1)  # four waiting: 0.04 s of work
    assert delays[-1] < PUT_OFF_FIRST_SECONDS + 2.0  # 50 more at ~0.01 s each
    await held.stop()


async def test_the_line_is_never_longer_than_the_maximum(small: None) -> None:
    held = HeldRoutes(60.0)
    await _fill(held, "prj_a")
    delays = held.put_off("prj_a", 1000)  # 500 s of routes at 0.5 s each
    assert max(delays) == PUT_OFF_MAX_SECONDS
    assert delays == sorted(delays)
    await held.stop()


async def test_at_shutdown_routes_not_started_are_given_back_first(small: None) -> None:
    held = HeldRoutes(60.0)
    await _fill(held, "prj_a")
    waiting = await held.cancel_waiting()
    assert len(waiting) == 4 and all(h.started_at is None for h in waiting)
    assert len(held) == 2 and len(held.running()) == 2
    finished, cut = await held.stop()
    assert finished == [] and len(cut) == 2 and len(held) == 0
