"""Waiting for work: an in-process wake-up, or the poll interval for work from other processes."""

from __future__ import annotations

import asyncio


async def wait_for_work(wake: asyncio.Event, stop: asyncio.Event, timeout: float) -> None:
    """Return when ``wake`` or ``stop`` is set, or after ``timeout`` seconds.

    Callers clear ``wake`` *before* looking for work, never after: a wake-up that arrives while
    they look is then kept, and answered at once instead of one poll interval later.
    """
    if wake.is_set() or stop.is_set():
        return
    waiters = [asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
