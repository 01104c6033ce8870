"""Delivery retry schedules: data, not code.

A 2xx response within the timeout is success. Anything else (non-2xx, timeout, connection error) is
retried after the delay the destination's :class:`RetryPolicy` gives, with jitter; when the last
attempt fails the delivery is ``dead``. A ``Retry-After`` header on a 429 or 503 response (see
:data:`RETRY_AFTER_STATUSES` and :func:`parse_retry_after`) can lengthen a delay but never adds
attempts.

A policy is just a tuple of delays: ``schedule[i]`` is the delay in seconds before attempt ``i + 1``,
counted from the failure of attempt ``i`` (``schedule[0]``, counted from when the delivery was
created, is normally 0). ``len(schedule)`` is the number of attempts. The default is immediately,
1 min, 5 min, 30 min, 2 h, 5 h, 10 h, then dead.

Per-destination configuration (``retry:`` in the destination's YAML) takes either form::

    retry: {schedule: [0, 60, 300, 1800]}                       # explicit delays, fractions allowed
    retry: {max_attempts: 6, base: 30, factor: 2, max: 3600}    # attempt 1 immediate, attempt k>=2
                                                                # after min(max, base * factor**(k-2))

plus an optional ``jitter`` (default 0.1, i.e. +/-10 %).

Example::

    >>> policy = RetryPolicy.from_config({"schedule": [0, 60, 300], "jitter": 0})
    >>> policy.max_attempts
    3
    >>> policy.next_delay(1), policy.next_delay(2), policy.next_delay(3)
    (60.0, 300.0, None)
    >>> policy.next_delay(1, retry_after=parse_retry_after("120"))
    120.0
"""

from __future__ import annotations

import email.utils
import math
import random
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC
from typing import Any

__all__ = [
    "DEFAULT_SCHEDULE",
    "MAX_ATTEMPTS_LIMIT",
    "MAX_RETRY_AFTER",
    "MAX_RETRY_DELAY",
    "RETRY_AFTER_STATUSES",
    "RetryPolicy",
    "parse_retry_after",
]

DEFAULT_SCHEDULE: tuple[float, ...] = (0, 60, 300, 1800, 7200, 18000, 36000)
# Never wait longer than this on a server's say-so: a misconfigured receiver answering
# "Retry-After: 31536000" must not park a delivery for a year.
MAX_RETRY_AFTER: float = 86400.0
# Above this a "retry policy" is a denial of service on our own dispatcher and database.
MAX_ATTEMPTS_LIMIT = 100
# The longest wait between two attempts (30 days). Unbounded, a delay of 1e300 put the next
# attempt past the year 9999, which no page or answer could show.
MAX_RETRY_DELAY: float = 30 * 86400.0
# Only these statuses carry a Retry-After that means "come back later" (RFC 9110 section 10.2.3).
RETRY_AFTER_STATUSES: frozenset[int] = frozenset({429, 503})

_SCHEDULE_KEYS = frozenset({"schedule"})
_EXPONENTIAL_KEYS = frozenset({"max_attempts", "base", "factor", "max"})
_KNOWN_KEYS = _SCHEDULE_KEYS | _EXPONENTIAL_KEYS | {"jitter"}

# RFC 9110 says delta-seconds is 1*DIGIT; we also take a sign and a fraction because real servers
# send them, but not "inf"/"nan"/exponents, which float() would happily accept.
_DELTA_SECONDS = re.compile(r"[+-]?\d+(?:\.\d+)?")


def _number(key: str, value: object) -> float:
    # YAML turns `yes` into True and bool is an int subclass, so exclude it explicitly; strings like
    # "60" are refused rather than coerced so a typo'd config fails loudly at load time.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"retry.{key}: must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"retry.{key}: must be finite, got {value!r}")
    if number < 0:
        raise ValueError(f"retry.{key}: must not be negative, got {value!r}")
    return number


def _delay(key: str, value: object) -> float:
    seconds = _number(key, value)
    if seconds > MAX_RETRY_DELAY:
        raise ValueError(
            f"retry.{key}: at most {MAX_RETRY_DELAY:.0f} seconds (30 days) between attempts, got {value!r}"
        )
    return seconds


def _check_schedule(schedule: tuple[float, ...]) -> None:
    if not schedule:
        raise ValueError("retry.schedule: must not be empty (it needs at least the first attempt)")
    if len(schedule) > MAX_ATTEMPTS_LIMIT:
        raise ValueError(
            f"retry.schedule: at most {MAX_ATTEMPTS_LIMIT} attempts allowed, got {len(schedule)}"
        )
    for i, delay in enumerate(schedule):
        _delay(f"schedule[{i}]", delay)


def _check_jitter(jitter: object) -> float:
    value = _number("jitter", jitter)
    # Above 1 the lower bound delay*(1-jitter) would go negative.
    if value > 1:
        raise ValueError(f"retry.jitter: must be between 0 and 1, got {jitter!r}")
    return value


@dataclass(frozen=True)
class RetryPolicy:
    """How long to wait before each attempt of a delivery, and when to give up.

    Example::

        >>> policy = RetryPolicy(schedule=(0, 0.05, 0.1), jitter=0)
        >>> [policy.next_delay(n) for n in (1, 2, 3)]
        [0.05, 0.1, None]
        >>> RetryPolicy().next_delay(1, rand=lambda: 1.0)  # worst-case jitter on the 60 s delay
        66.0
    """

    schedule: tuple[float, ...] = DEFAULT_SCHEDULE
    # Fraction of a non-zero delay added or removed at random, so deliveries that failed together
    # (one receiver outage) do not all come back in the same instant.
    jitter: float = 0.1

    def __post_init__(self) -> None:
        # Accept any sequence (a list straight from YAML) but store a tuple so the policy stays
        # hashable and immutable; floats so callers never see a mix of int and float delays.
        schedule = tuple(self.schedule)
        _check_schedule(schedule)
        object.__setattr__(self, "schedule", tuple(float(d) for d in schedule))
        object.__setattr__(self, "jitter", _check_jitter(self.jitter))

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> RetryPolicy:
        """Build a policy from a destination's ``retry:`` mapping (``None`` means the default).

        Raises :class:`ValueError` naming the offending key for unknown keys, mixed forms, missing
        keys, negative or non-numeric values, empty schedules, ``max_attempts < 1`` and more than
        :data:`MAX_ATTEMPTS_LIMIT` attempts.

        Example::

            >>> RetryPolicy.from_config({"max_attempts": 4, "base": 10, "factor": 3, "max": 60}).schedule
            (0.0, 10.0, 30.0, 60.0)
            >>> RetryPolicy.from_config({"schedul": [0]})
            Traceback (most recent call last):
            ...
            ValueError: retry.schedul: unknown key ...
        """
        if cfg is None:
            return cls()
        if not isinstance(cfg, Mapping):
            raise ValueError(f"retry: must be a mapping, got {type(cfg).__name__}")
        for key in cfg:
            if key not in _KNOWN_KEYS:
                known = ", ".join(sorted(_KNOWN_KEYS))
                raise ValueError(f"retry.{key}: unknown key (expected one of: {known})")
        jitter = _check_jitter(cfg["jitter"]) if "jitter" in cfg else cls.jitter

        exponential_keys = sorted(_EXPONENTIAL_KEYS & cfg.keys())
        if "schedule" in cfg:
            if exponential_keys:
                # Two sources of truth for the same schedule: refuse rather than pick one silently.
                raise ValueError(f"retry.{exponential_keys[0]}: cannot be combined with retry.schedule")
            raw = cfg["schedule"]
            if isinstance(raw, str | bytes) or not isinstance(raw, list | tuple):
                raise ValueError(f"retry.schedule: must be a list of delays in seconds, got {raw!r}")
            # Validated (with the key named) by __post_init__.
            return cls(schedule=tuple(raw), jitter=jitter)

        if not exponential_keys:
            # Only `jitter` (or nothing) given: default schedule with that jitter.
            return cls(jitter=jitter)
        for key in ("max_attempts", "base", "factor", "max"):
            if key not in cfg:
                raise ValueError(f"retry.{key}: required when any of max_attempts/base/factor/max is set")

        attempts = cfg["max_attempts"]
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise ValueError(f"retry.max_attempts: must be an integer, got {attempts!r}")
        if attempts < 1:
            raise ValueError(f"retry.max_attempts: must be at least 1, got {attempts}")
        if attempts > MAX_ATTEMPTS_LIMIT:
            raise ValueError(f"retry.max_attempts: at most {MAX_ATTEMPTS_LIMIT} allowed, got {attempts}")
        base = _delay("base", cfg["base"])
        factor = _number("factor", cfg["factor"])
        if factor < 1:
            # A factor below 1 shrinks delays while the receiver stays down: backoff in reverse.
            raise ValueError(f"retry.factor: must be at least 1, got {cfg['factor']!r}")
        cap = _delay("max", cfg["max"])
        return cls(schedule=_exponential_schedule(attempts, base, factor, cap), jitter=jitter)

    @property
    def max_attempts(self) -> int:
        """Total number of attempts, the first one included."""
        return len(self.schedule)

    def next_delay(
        self,
        attempts_made: int,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when the delivery is dead.

        ``attempts_made`` counts attempts already made (``0`` gives the delay before the first one).
        The delay is ``schedule[attempts_made] * (1 + jitter * (2 * rand() - 1))``; zero delays stay
        zero. ``retry_after`` (seconds, from :func:`parse_retry_after`) raises the delay to at least
        ``min(retry_after, MAX_RETRY_AFTER)`` but never grants an attempt past the schedule.
        ``rand`` is injectable so tests (and simulations) are deterministic.

        Example::

            >>> policy = RetryPolicy(schedule=(0, 60), jitter=0.5)
            >>> policy.next_delay(1, rand=lambda: 0.0), policy.next_delay(1, rand=lambda: 0.5)
            (30.0, 60.0)
            >>> policy.next_delay(1, retry_after=600, rand=lambda: 0.5), policy.next_delay(2, retry_after=600)
            (600.0, None)
        """
        if isinstance(attempts_made, bool) or not isinstance(attempts_made, int):
            raise TypeError(f"attempts_made must be an int, got {type(attempts_made).__name__}")
        if attempts_made < 0:
            raise ValueError(f"attempts_made must not be negative, got {attempts_made}")
        if attempts_made >= len(self.schedule):
            return None
        delay = self.schedule[attempts_made]
        if delay > 0 and self.jitter > 0:
            # Clamp so a sloppy rand() (e.g. one returning 1.0000001) cannot break the documented bounds.
            r = min(1.0, max(0.0, rand()))
            delay *= 1 + self.jitter * (2 * r - 1)
        if retry_after is not None and not math.isnan(retry_after):
            delay = max(delay, float(min(max(retry_after, 0.0), MAX_RETRY_AFTER)))
        return delay


def _exponential_schedule(attempts: int, base: float, factor: float, cap: float) -> tuple[float, ...]:
    delays = [0.0]
    for k in range(2, attempts + 1):
        if base == 0:
            # 0 * inf would be NaN once factor**(k-2) overflows; zero stays zero.
            delays.append(0.0)
            continue
        try:
            growth = factor ** (k - 2)
        except OverflowError:
            # Large factors overflow float long before 100 attempts; the cap applies anyway.
            growth = math.inf
        delays.append(min(cap, base * growth))
    return tuple(delays)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Parse a ``Retry-After`` header into seconds from ``now`` (default: the current time).

    Accepts delta-seconds (``"120"``, fractions tolerated) or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``). Past dates and negative numbers give ``0.0``; a missing
    or unparseable header gives ``None`` (fall back to the schedule). The result is not capped here;
    :meth:`RetryPolicy.next_delay` applies :data:`MAX_RETRY_AFTER`.

    Example::

        >>> parse_retry_after("120")
        120.0
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412000.0)
        480.0
        >>> parse_retry_after("soon") is None
        True
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    if _DELTA_SECONDS.fullmatch(text):
        seconds = float(text)
        return max(seconds, 0.0) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        # parsedate_to_datetime returns a naive datetime for "-0000"; HTTP-dates are always UTC.
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    try:
        delta = when.timestamp() - current
    except (OverflowError, OSError, ValueError):
        return None
    return max(delta, 0.0)
