"""Sortable, prefixed identifiers (``evt_01J…``).

ULIDs keep ids in time order, so the primary key doubles as the time index for keyset
pagination. Within one process they are also monotonic: ids made in the same millisecond
count up instead of taking random order, so "newest first" is exact for a batch.
"""

from __future__ import annotations

import secrets
import time

from ulid import ULID

_RANDOM_BITS = 80
_state = {"ms": 0, "rand": 0}


def _next_value() -> int:
    ms = time.time_ns() // 1_000_000
    if ms <= _state["ms"]:
        ms = _state["ms"]
        rand = _state["rand"] + 1
        if rand >= 1 << _RANDOM_BITS:  # 2^80 ids in one millisecond: borrow the next one
            ms, rand = ms + 1, secrets.randbits(_RANDOM_BITS - 1)
    else:
        # Half the range leaves room to count up within the millisecond.
        rand = secrets.randbits(_RANDOM_BITS - 1)
    _state["ms"], _state["rand"] = ms, rand
    return (ms << _RANDOM_BITS) | rand


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID.from_int(_next_value())}"


def new_key(kind: str) -> str:
    """A new API key: ``il_ingest_…`` or ``il_admin_…`` with 32 bytes of randomness."""
    return f"il_{kind}_{secrets.token_urlsafe(32)}"
