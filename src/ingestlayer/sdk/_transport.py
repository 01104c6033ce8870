"""Pieces shared by the sync and async SDK clients: encoding, backoff, response parsing.

Nothing here does I/O; :mod:`ingestlayer.sdk.client` owns the sockets. Kept private so the public
surface stays :class:`~ingestlayer.sdk.client.Client` and friends.
"""

from __future__ import annotations

import email.utils
import json
import math
import random
import re
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dt_time
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from ingestlayer import __version__

USER_AGENT = f"ingestlayer-python/{__version__}"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
EVENTS_PATH = "/v1/events"
IDENTIFY_PATH = "/v1/identify"
GROUP_PATH = "/v1/group"

#: The server's limits (SPEC §7): at most 1000 events and 5 MiB per request.
MAX_BATCH_ITEMS = 1000
MAX_REQUEST_BYTES = 5 * 1024 * 1024
# Room for `{"batch":[`, commas and `]}` around the items.
_BATCH_OVERHEAD = 64

_BATCH_FIELD = re.compile(r"batch\[(\d+)\]")


def _json_default(value: Any) -> Any:
    """Encode the few non-JSON types people routinely put in payloads; refuse the rest."""
    if isinstance(value, datetime):
        # A naive datetime is local time, as everywhere else in Python (datetime.timestamp()).
        return (value if value.tzinfo is not None else value.astimezone()).isoformat()
    if isinstance(value, date | dt_time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        # A string keeps every digit; a float would silently round money.
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """JSON-encode ``value`` compactly as UTF-8; NaN and infinities are refused (not JSON)."""
    return json.dumps(
        value, default=_json_default, allow_nan=False, ensure_ascii=False, separators=(",", ":")
    ).encode("utf-8")


def occurred_at_value(value: datetime | str | float | None) -> str | float | None:
    """Normalise ``occurred_at``: datetimes become ISO 8601 with an offset (naive = local time)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.astimezone()).isoformat()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"occurred_at must be a datetime, an ISO 8601 string or unix seconds, got {type(value).__name__}"
        )
    return float(value)


def new_idempotency_key() -> str:
    """A fresh key for an event whose caller gave none: retries of it can then never duplicate."""
    return str(uuid.uuid4())


# base_url is never quoted in an error: see Endpoint.parse.
_UNQUOTED = "(not repeated here: it may hold a credential)"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A parsed ``base_url``: scheme, host, port and an optional path prefix (a reverse proxy's)."""

    scheme: str
    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, base_url: str) -> Endpoint:
        """Errors name the host at most, never the URL: it may hold a credential (a password,
        a token in the query), and errors end up in logs."""
        parts = urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL with a host {_UNQUOTED}")
        host = parts.hostname
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:  # urllib's message quotes what stood in the port's place
            raise ValueError(f"base_url must have a port from 0 to 65535, if any {_UNQUOTED}") from None
        if parts.username is not None or parts.password is not None:
            # Dropped, it would have been a credential the caller thinks is sent and is not.
            raise ValueError(
                f"base_url must not carry a user name or password (host {host}): the API key authenticates"
            )
        if parts.query or parts.fragment:
            raise ValueError(f"base_url must not carry a query or fragment (host {host})")
        return cls(parts.scheme, host, port, parts.path.rstrip("/"))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.prefix}"


def backoff_delay(retry: int, base: float, cap: float) -> float:
    """Delay before retry number ``retry`` (1-based): exponential, capped, with "equal jitter".

    Half the exponential step is fixed and half is random, so clients that failed together spread
    out without any of them retrying almost at once.
    """
    step = min(cap, base * 2.0 ** (retry - 1))
    return step / 2 + random.uniform(0, step / 2)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def error_details(body: bytes) -> tuple[str | None, str | None, str | None]:
    """``(code, message, field)`` from an ingestlayer error body, tolerant of anything else."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None, None, None
    err = doc.get("error") if isinstance(doc, dict) else None
    if not isinstance(err, dict):
        return None, None, None

    def text(key: str) -> str | None:
        value = err.get(key)
        return value if isinstance(value, str) else None

    return text("code"), text("message"), text("field")


def batch_index(field: str | None) -> int | None:
    """The item index named by a batch validation error's field (``batch[3].type`` → 3)."""
    if field is None:
        return None
    match = _BATCH_FIELD.match(field)
    return int(match.group(1)) if match else None


def batch_body(items: list[bytes]) -> bytes:
    """Join pre-encoded events into a ``{"batch": [...]}`` request body."""
    return b'{"batch":[' + b",".join(items) + b"]}"


def chunks(sizes: list[int], max_items: int, max_bytes: int = MAX_REQUEST_BYTES) -> Iterator[slice]:
    """Split events (by encoded size) into slices each fitting one batch request.

    An event larger than ``max_bytes`` on its own still gets a slice (the server answers 413 for it),
    so it is reported rather than silently dropped.
    """
    start = 0
    total = _BATCH_OVERHEAD
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_items or total + size + 1 > max_bytes):
            yield slice(start, i)
            start, total = i, _BATCH_OVERHEAD
        total += size + 1
    if start < len(sizes):
        yield slice(start, len(sizes))


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup over any mapping."""
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None
