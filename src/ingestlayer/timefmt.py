"""Time at the edges: epoch seconds inside, ISO 8601 (UTC, milliseconds) outside."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

# "YYYY-MM-DDTHH:MM:SS" by whole second. Every routed event formats its time (the delivery body,
# the expression context), and formatting through datetime cost about 8 % of the delivery path.
_SECONDS: dict[int, str] = {}
_SECONDS_MAX = 4096
# What renders as an ISO 8601 timestamp: the years 0001 to 9999, in epoch seconds.
MIN_TIMESTAMP, MAX_TIMESTAMP = -62135596800.0, 253402300799.0


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ``2026-11-25T19:20:40.123Z``: exactly what
    ``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")`` gives, with Z. A time
    beyond the years 0001-9999 (a retry due after 1e300 seconds, stored before delays were
    bounded) is shown as the nearest one ISO 8601 can write, not an error for every page and
    answer that shows it."""
    if ts is None:
        return None
    if not MIN_TIMESTAMP <= ts <= MAX_TIMESTAMP:
        ts = MIN_TIMESTAMP if ts < MIN_TIMESTAMP else MAX_TIMESTAMP  # NaN too: never stored
    # Split as datetime.fromtimestamp does: microseconds rounded half-even, then truncated to ms.
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        whole += 1
        us -= 1_000_000
    elif us < 0:
        whole -= 1
        us += 1_000_000
    second = int(whole)
    head = _SECONDS.get(second)
    if head is None:
        if len(_SECONDS) >= _SECONDS_MAX:
            _SECONDS.clear()
        head = _SECONDS[second] = datetime.fromtimestamp(second, UTC).isoformat()[:19]
    return f"{head}.{us // 1000:03d}Z"


def parse_iso(value: str) -> float:
    """Parse an ISO 8601 timestamp; naive times are taken as UTC. Raises ValueError."""
    dt = datetime.fromisoformat(value.strip())
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


_EPOCH = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def parse_time_filter(text: str) -> float:
    """A time given to filter by: ISO 8601 (no zone means UTC) or epoch seconds, within the
    years 0001-9999. Raises ValueError otherwise."""
    text = text.strip()
    seconds = float(text) if _EPOCH.fullmatch(text) else parse_iso(text)
    if not MIN_TIMESTAMP <= seconds <= MAX_TIMESTAMP:  # also NaN and the infinities
        raise ValueError(f"{text!r} is outside the years 0001-9999")
    return seconds
