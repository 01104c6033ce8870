"""Driving a :class:`Router` pass by pass in tests."""

from __future__ import annotations

import asyncio

from ingestlayer.delivery.router import Router


async def route_all(router: Router, timeout: float = 30.0) -> int:
    """Run passes until nothing is due, handed over or being routed in the background (events
    whose pipelines may wait are routed in tasks, and stored by a later pass). Returns how many
    events the passes took or finished."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    took = 0
    while True:
        n = await router.run_once()
        took += n
        if n == 0 and router.held() == 0 and router.backlog() == 0:
            return took
        assert loop.time() < deadline, f"{router.held()} events still being routed after {timeout:g}s"
        if n == 0:
            await asyncio.sleep(0.01)
