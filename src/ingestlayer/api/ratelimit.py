"""Per-project ingest rate limits, shared by ``POST /v1/events`` and signed webhook ingress."""

from __future__ import annotations

import time

from ingestlayer.api.errors import ApiError


class RateLimiter:
    """Per-project token bucket; ``rate`` events/s with one second of burst. 0 disables it."""

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

    def check(self, project_id: str, n: int) -> None:
        """Take ``n`` tokens or raise the 429 that says when to come back."""
        wait = self.take(project_id, n)
        if wait is not None:
            raise ApiError(
                429,
                "ingest rate limit exceeded for this project",
                headers={"Retry-After": str(max(1, round(wait + 0.5)))},
            )
