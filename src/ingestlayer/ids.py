"""Sortable, prefixed identifiers (``evt_01J…``).

ULIDs keep ids in time order (on the database's clock, :mod:`ingestlayer.clock`), so the primary
key doubles as the time index for keyset pagination. Within one process they are also monotonic:
ids made in the same millisecond count up instead of taking random order, so "newest first" is
exact for a batch.
"""

from __future__ import annotations

import secrets
from typing import Any

from ingestlayer import clock

_RANDOM_BITS = 80
_state = {"ms": 0, "rand": 0}


def _next_value() -> int:
    # The database's clock, as every stored time: ids from processes on several machines sort
    # in the order they were made, and the dashboard buckets events by their id's time.
    ms = int(clock.now() * 1000)
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


_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32, as ULIDs use
# Two digits (10 bits) per lookup: 13 lookups per id instead of 26 divisions.
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_SHIFTS = tuple(range(120, -1, -10))


def encode_ulid(value: int) -> str:
    """The 26-character ULID text of a 128-bit value (130 bits in 5-bit digits, right-aligned)."""
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in _SHIFTS])


_RANDOM_MASK = (1 << _RANDOM_BITS) - 1


# The first 24 digits of the last id made, and the value they encode (the id's bits above the
# last two digits): consecutive ids share them, so most ids encode only their last two digits.
_head: list[Any] = [-1, ""]


def new_id(prefix: str) -> str:
    value = _next_value()
    high = value >> 10
    if high != _head[0]:
        _head[0], _head[1] = high, encode_ulid(value)[:24]
    return f"{prefix}_{_head[1]}{_PAIRS[value & 1023]}"


def random_id(prefix: str) -> str:
    """An id nobody can work out from the ids they have been given: the time, then 80 fresh
    random bits, never counted up from the last id made.

    For ids that are a credential on their own: a source's id is its ingress URL, which takes no
    API key (with ``verify: none``, nothing else). :func:`new_id` counts up within a millisecond,
    so the id made after one a project was given (an event's, in its 202) was that id plus one:
    another project could guess it. These ids sort by the millisecond only."""
    ms = int(clock.now() * 1000)
    return f"{prefix}_{encode_ulid((ms << _RANDOM_BITS) | secrets.randbits(_RANDOM_BITS))}"


def new_ids(prefix: str, n: int) -> list[str]:
    """``n`` ids at once (a batch): one timestamp, its digits encoded once, and the random part
    counting up, exactly as ``n`` calls of :func:`new_id` within one millisecond would give."""
    if n <= 1:
        return [new_id(prefix) for _ in range(n)]
    first = _next_value()
    rand = first & _RANDOM_MASK
    if rand + n - 1 > _RANDOM_MASK:  # would overflow into the next millisecond: rare, go slowly
        return [f"{prefix}_{encode_ulid(first)}", *(new_id(prefix) for _ in range(n - 1))]
    _state["rand"] = rand + n - 1
    pairs = _PAIRS
    out: list[str] = []
    ms_part = first & ~_RANDOM_MASK
    r = rand
    end = rand + n
    while r < end:
        # All but the last two digits stay the same for up to 1024 consecutive values.
        head = f"{prefix}_{encode_ulid(ms_part | r)[:24]}"
        stop = min(end, (r | 1023) + 1)
        out.extend([head + pairs[v & 1023] for v in range(r, stop)])
        r = stop
    return out


def new_key(kind: str) -> str:
    """A new API key: ``il_ingest_…`` or ``il_admin_…`` with 32 bytes of randomness."""
    return f"il_{kind}_{secrets.token_urlsafe(32)}"
