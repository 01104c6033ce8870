"""How deeply JSON nests, measured cheaply, and the limits on what comes in.

Without a limit, JSON nested deeply broke later reads: orjson writes 254 levels at most, and a
response wraps a payload in a few more, so one deep event could make the event listing fail for
good. No FastAPI or database here: the CLI's rendering uses it too.
"""

from __future__ import annotations

import json
import math
import threading
from array import array
from itertools import accumulate
from typing import Any

import orjson

# How deeply a payload, an entity's traits or an inbound webhook body may nest, counting the
# value itself: {"a": {"b": [1]}} is 3 levels. Deeper JSON is refused with a 422 ``too_deep``
# wherever data comes in.
MAX_JSON_DEPTH = 64

# The deepest JSON orjson reads (deeper is a JSONDecodeError) and writes (a JSONEncodeError).
ORJSON_READ_DEPTH, ORJSON_WRITE_DEPTH = 1024, 254

# For json_depth: keep only brackets, openers as +1 and closers as -1 (signed bytes).
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"{}[]")
_BRACKET_STEPS = bytes.maketrans(b"{[}]", b"\x01\x01\xff\xff")


def json_depth(raw: bytes) -> int:
    """The nesting depth of valid JSON text: 0 for a scalar, 1 for ``{}`` or ``[1]``."""
    if b'"' in raw:
        # Brackets inside strings do not count: drop escaped backslashes and quotes, after which
        # every quote delimits a string, and keep what lies between strings.
        if b"\\" in raw:
            raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
        raw = b"".join(raw.split(b'"')[::2])
    return max(accumulate(array("b", raw.translate(_BRACKET_STEPS, _NOT_BRACKETS))), default=0)


# dumps_within's probes by limit: ORJSON_WRITE_DEPTH - limit nested lists, and the innermost.
_probes: dict[int, tuple[list[Any], list[Any]]] = {}
_probe_lock = threading.Lock()


def _dumps_wrapped(value: Any, limit: int) -> bytes | None:
    assert 0 < limit < ORJSON_WRITE_DEPTH
    with _probe_lock:
        probe = _probes.get(limit)
        if probe is None:
            inner: list[Any] = [None]
            outer = inner
            for _ in range(ORJSON_WRITE_DEPTH - limit - 1):
                outer = [outer]
            probe = _probes[limit] = (outer, inner)
        outer, inner = probe
        inner[0] = value
        try:
            return orjson.dumps(outer)
        except orjson.JSONEncodeError as exc:
            if not is_write_depth_error(exc):
                raise
            return None
        finally:
            inner[0] = None


def dumps_within(value: Any, limit: int = MAX_JSON_DEPTH) -> memoryview | None:
    """``orjson.dumps(value)`` (a view: ``str(view, "utf-8")`` decodes it without a copy), or
    None when ``value`` nests deeper than ``limit`` levels.

    One serialisation: orjson writes at most ORJSON_WRITE_DEPTH levels, so ``value`` inside
    ``254 - limit`` lists fails to serialise exactly when it is deeper than ``limit``. The walk is
    orjson's, in C; the lists add about 1.5 µs (a walk in Python is 8 to 15 times slower than
    serialising, json_depth on the text 3 to 7 times). A test pins orjson's limit.
    """
    out = _dumps_wrapped(value, limit)
    if out is None:
        return None
    wrap = ORJSON_WRITE_DEPTH - limit
    return memoryview(out)[wrap:-wrap]


def nests_deeper(value: Any, limit: int) -> bool:
    """Whether a JSON value nests deeper than ``limit`` levels (see dumps_within)."""
    return _dumps_wrapped(value, limit) is None


def too_deep(value: Any, raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``value``, which orjson wrote as ``raw``, nests deeper than ``limit``.

    Cheap for small values: text under ``2 * limit + 2`` bytes cannot nest deeper, nor text with
    at most ``limit`` brackets; only the rest is walked. Counting costs about 0.8 ns a byte: for
    large values, dumps_within is cheaper.
    """
    return (
        len(raw) > 2 * limit + 1 and raw.count(b"{") + raw.count(b"[") > limit and nests_deeper(value, limit)
    )


def dumps_checked(value: Any, *, large: bool) -> bytes | memoryview | None:
    """``orjson.dumps(value)`` of a value orjson read, or None when it nests deeper than
    MAX_JSON_DEPTH. A small value is checked once written (most by their length alone), a
    ``large`` one as it is written (dumps_within): counting brackets costs more on large text."""
    if large:
        return dumps_within(value)
    try:
        raw = orjson.dumps(value)
    except orjson.JSONEncodeError:  # deeper than orjson writes: nothing else fails on what it read
        return None
    return None if too_deep(value, raw) else raw


def is_read_depth_error(exc: ValueError) -> bool:
    """Whether orjson refused to read JSON text for its nesting (deeper than 1024 levels)."""
    return "depth limit" in str(exc)


def is_number_range_error(exc: ValueError) -> bool:
    """Whether orjson refused JSON text for a number beyond a double's range: an integer of more
    than 309 digits, or ``1e400``. The text is JSON; the number is what cannot be kept."""
    return "number is infinity" in str(exc)


def is_write_depth_error(exc: TypeError) -> bool:
    """Whether orjson refused to write a value for its nesting (deeper than 254 levels)."""
    return "Recursion limit" in str(exc)


def deeper_than(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed document (dicts and lists, keys of any type, as YAML gives) nests deeper
    than ``limit`` levels. A walk in Python, without recursion, that stops at ``limit + 1``: for
    small documents such as configuration files, not for the ingest path."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# The integers orjson writes (and the databases' JSON keeps) exactly: a signed or unsigned
# 64-bit integer. Python's json module reads any integer, and orjson refuses to write a larger one.
INT64_RANGE = (-(2**63), 2**64 - 1)
# What the API and the CLI say of a number outside it (or beyond a double's range).
NUMBERS_TOO_LARGE = "numbers must fit in 64 bits; send larger ones as strings"


# Where out_of_range_path read a number beyond a double's range.
_INFINITE = object()


def out_of_range_path(raw: bytes | str) -> str | None:
    """The path of the first number in JSON text that cannot be stored as sent: beyond a
    double's range (``1e400``, an integer of over 309 digits) or an integer beyond 64 bits. None
    when there is none, or when the json module cannot read the text that far (nested deeper
    than it recurses, an integer of more digits than it converts)."""
    try:
        value = json.loads(
            raw, parse_float=lambda text: _INFINITE if math.isinf(float(text)) else float(text)
        )
    except (ValueError, RecursionError):
        return None
    return huge_int_path(value)


def huge_int_path(value: Any, path: str = "") -> str | None:
    """The path (``retry.schedule[1]``) of the first integer in ``value`` that does not fit in
    64 bits, or None. Recursive: call it on values whose depth is already bounded."""
    if value is _INFINITE:
        return path
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return None if INT64_RANGE[0] <= value <= INT64_RANGE[1] else path
    if isinstance(value, dict):
        for key, item in value.items():
            found = huge_int_path(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = huge_int_path(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None
