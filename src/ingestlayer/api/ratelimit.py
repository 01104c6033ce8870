"""Per-project ingest rate limits, shared by ``POST /v1/events``, signed webhook ingress, and
``POST /v1/identify`` and ``/v1/group``.

A token bucket per project: ``rate`` events a second, with one second of burst. One api process
keeps it in memory (:class:`RateLimiter`). Where several api processes share a PostgreSQL
database, each would let a project send the whole limit, so :class:`SharedRateLimiter` keeps
the bucket in the database and lets each process take a slice of it at a time and spend it
itself: the limit holds across processes, for one database write per slice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import Request

from ingestlayer import clock
from ingestlayer.api.errors import ApiError, unavailable_error
from ingestlayer.store.unavailable import DATABASE_UNAVAILABLE

# How much of a second's tokens a process takes from the shared bucket at once: more writes
# per second with smaller slices, and up to a slice per process left unspent when traffic
# moves to another process.
SLICES_PER_SECOND = 20

# (project, rate, deficit, want) -> (tokens taken, seconds to wait); Store.take_rate_tokens.
TakeShared = Callable[[str, float, float, float], Awaitable[tuple[float, float | None]]]


def too_many(wait: float) -> ApiError:
    return ApiError(
        429,
        "ingest rate limit exceeded for this project",
        headers={"Retry-After": str(max(1, round(wait + 0.5)))},
    )


class RateLimiter:
    """Per-project token bucket in this process; ``rate`` events/s with one second of burst.
    0 disables it."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, project_id: str, n: int) -> float | None:
        """Take ``n`` tokens; return None if allowed, else seconds to wait."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        tokens, last = self._buckets.get(project_id, (self.rate, now))
        tokens = min(self.rate, tokens + (now - last) * self.rate)
        # A batch larger than the burst is let through once the bucket is full, leaving a debt
        # that later requests wait out; otherwise it could never pass, whatever Retry-After said.
        need = min(n, self.rate)
        if tokens >= need:
            self._buckets[project_id] = (tokens - n, now)
            return None
        self._buckets[project_id] = (tokens, now)
        return max(0.001, (need - tokens) / self.rate)

    async def check(self, project_id: str, n: int) -> None:
        """Take ``n`` tokens or raise the 429 that says when to come back."""
        wait = self.take(project_id, n)
        if wait is not None:
            raise too_many(wait)


class SharedRateLimiter(RateLimiter):
    """The same bucket, stored in the database and shared by every process using it.

    This process spends tokens it took from the shared bucket; when they run out, one request
    per project takes the next slice (the others wait for it), and while the shared bucket is
    empty, requests it certainly cannot hold yet are refused here without asking the database."""

    def __init__(self, rate: float, take_shared: TakeShared) -> None:
        super().__init__(rate)
        self._take_shared = take_shared
        self._held: dict[str, float] = {}  # tokens taken from the shared bucket, not yet spent
        self._taking: dict[str, asyncio.Future[None]] = {}
        # The shared bucket's level when it last refused a request, and when (the database's
        # clock): it can hold no more than that plus what refilled since.
        self._refused_at: dict[str, tuple[float, float]] = {}

    async def check(self, project_id: str, n: int) -> None:
        if self.rate <= 0:
            return
        while True:
            held = self._held.get(project_id, 0.0)
            if held >= n:
                self._held[project_id] = held - n
                return
            taking = self._taking.get(project_id)
            if taking is None:
                break
            await asyncio.shield(taking)  # another request is taking a slice: then look again
        now = clock.now()
        deficit = n - held
        need = min(deficit, self.rate)
        refused = self._refused_at.get(project_id)
        if refused is not None:
            at_most = min(self.rate, refused[1] + (now - refused[0]) * self.rate)
            if at_most < need:  # certainly not there yet: no need to ask
                raise too_many((need - at_most) / self.rate)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._taking[project_id] = done
        try:
            taken, wait = await self._take_shared(
                project_id, self.rate, deficit, max(deficit, self.rate / SLICES_PER_SECOND)
            )
        except DATABASE_UNAVAILABLE as exc:
            raise unavailable_error(exc, "the rate limit could not be checked") from None
        finally:
            del self._taking[project_id]
            done.set_result(None)
        if wait is not None:
            self._refused_at[project_id] = (now, need - wait * self.rate)
            raise too_many(wait)
        self._refused_at.pop(project_id, None)
        # Others may have spent what was held meanwhile: what they left, plus the slice, less n
        # (below zero, a debt the next slice pays).
        self._held[project_id] = self._held.get(project_id, 0.0) + taken - n


async def spend_ingest_allowance(request: Request, project_id: str, n: int = 1) -> None:
    """Spend ``n`` of the project's ingest allowance (the app's ``ingest_limiter``), or raise
    the 429; for the routes beside ``POST /v1/events``, which has the limiter itself."""
    limiter: RateLimiter | None = getattr(request.app.state, "ingest_limiter", None)
    if limiter is not None:
        await limiter.check(project_id, n)
