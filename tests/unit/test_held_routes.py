"""Events of a project with no room left are put off about until it will have room: spread by
how fast the project's events have been finishing, so its backlog is neither leased over and over
nor left waiting while its model is idle."""

from __future__ import annotations

import asyncio

import pytest

from ingestlayer.delivery import held_routes
from ingestlayer.delivery.held_routes import (
    ASSUMED_RATE,
    PUT_OFF_FIRST_SECONDS,
    PUT_OFF_MAX_SECONDS,
    HeldRoutes,
    Routed,
)
from ingestlayer.records import StoredEvent


def _event(n: int, project: str = "prj_a") -> StoredEvent:
    return StoredEvent(f"evt_{project}_{n}", project, "ticket.created", "{}", None, "api", 0.0, 0.0)


async def _answer_now() -> Routed:
    return Routed()


async def _never() -> Routed:
    await asyncio.Event().wait()
    return Routed()


async def _fill(held: HeldRoutes, project: str, first: int = 0) -> None:
    n = first
    while held.has_room(project):
        held.start(_event(n, project), 1.0, 1, _never, lambda: None)
        n += 1


async def test_a_full_project_with_nothing_finished_yet_is_put_off_at_the_assumed_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(held_routes, "PROJECT_HELD", 4)
    held = HeldRoutes(60.0)
    await _fill(held, "prj_a")
    assert len(held) == 4 and held.has_room("prj_b")
    delays = [held.put_off_delay("prj_a") for _ in range(100)]
    assert delays[0] == pytest.approx(PUT_OFF_FIRST_SECONDS + 1 / ASSUMED_RATE)
    assert delays == sorted(delays)  # later in line, due later
    assert delays[-1] == PUT_OFF_MAX_SECONDS
    await held.stop(0)


async def test_a_project_whose_events_finish_fast_is_put_off_briefly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(held_routes, "PROJECT_HELD", 200)
    held = HeldRoutes(60.0)
    for n in range(200):
        held.start(_event(n), 1.0, 1, _answer_now, lambda: None)
    await asyncio.sleep(0.05)
    held.forget(held.finished())
    await _fill(held, "prj_a", first=200)
    # 200 finished within a second: the 100th in line waits about half a second more.
    assert held.put_off_delay("prj_a") == pytest.approx(PUT_OFF_FIRST_SECONDS + 1 / 200, rel=0.05)
    for _ in range(98):
        held.put_off_delay("prj_a")
    assert held.put_off_delay("prj_a") == pytest.approx(PUT_OFF_FIRST_SECONDS + 100 / 200, rel=0.15)
    await held.stop(0)


async def test_the_line_starts_again_once_the_project_has_room(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(held_routes, "PROJECT_HELD", 2)
    held = HeldRoutes(60.0)
    await _fill(held, "prj_a")
    first = held.put_off_delay("prj_a")
    assert held.put_off_delay("prj_a") > first
    finished, cut = await held.stop(0)
    assert finished == [] and len(cut) == 2 and len(held) == 0
    assert held.has_room("prj_a")
    await _fill(held, "prj_a", first=10)
    assert held.put_off_delay("prj_a") == first
    await held.stop(0)
