"""Retry schedules: the default, custom and exponential forms, jitter, Retry-After, config errors."""

from __future__ import annotations

import doctest
import math
import re
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestlayer.delivery import retry
from ingestlayer.delivery.retry import (
    DEFAULT_SCHEDULE,
    MAX_RETRY_AFTER,
    RETRY_AFTER_STATUSES,
    RetryPolicy,
    parse_retry_after,
)

NO_JITTER = RetryPolicy(jitter=0)


def _mid() -> float:
    # rand() == 0.5 means "no jitter" in delay * (1 + j * (2 * rand - 1)).
    return 0.5


def _attempts_until_dead(policy: RetryPolicy) -> int:
    attempts = 1  # the first attempt always happens
    while policy.next_delay(attempts) is not None:
        attempts += 1
    return attempts


# --- default schedule ------------------------------------------------------------------------------


def test_default_schedule_values() -> None:
    # immediately, 1 min, 5 min, 30 min, 2 h, 5 h, 10 h
    assert DEFAULT_SCHEDULE == (0, 60, 300, 1800, 2 * 3600, 5 * 3600, 10 * 3600)
    assert RetryPolicy().schedule == DEFAULT_SCHEDULE
    assert RetryPolicy().jitter == 0.1
    assert MAX_RETRY_AFTER == 86400.0
    assert sorted(RETRY_AFTER_STATUSES) == [429, 503]


def test_default_delays_and_dead_after_seven_attempts() -> None:
    assert RetryPolicy().max_attempts == 7
    assert [NO_JITTER.next_delay(n) for n in range(1, 8)] == [60, 300, 1800, 7200, 18000, 36000, None]
    assert _attempts_until_dead(RetryPolicy()) == 7


def test_default_policy_without_rand_stays_within_jitter() -> None:
    for n, base in enumerate(DEFAULT_SCHEDULE[1:], start=1):
        delay = RetryPolicy().next_delay(n)
        assert delay is not None
        assert base * 0.9 <= delay <= base * 1.1


def test_attempts_made_zero_gives_delay_before_first_attempt() -> None:
    assert NO_JITTER.next_delay(0) == 0
    assert RetryPolicy(schedule=(5, 10), jitter=0).next_delay(0) == 5


def test_delays_are_floats() -> None:
    delay = NO_JITTER.next_delay(1)
    assert isinstance(delay, float)
    assert all(isinstance(d, float) for d in NO_JITTER.schedule)


def test_dead_even_with_retry_after() -> None:
    # Retry-After can lengthen a wait, never grant an attempt past the schedule.
    assert RetryPolicy().next_delay(7, retry_after=10) is None
    assert RetryPolicy().next_delay(100, retry_after=10) is None


def test_negative_attempts_made_is_an_error() -> None:
    with pytest.raises(ValueError, match="attempts_made"):
        RetryPolicy().next_delay(-1)


# --- custom schedule -------------------------------------------------------------------------------


def test_custom_schedule_from_config() -> None:
    policy = RetryPolicy.from_config({"schedule": [0, 60, 300, 1800]})
    assert policy.schedule == (0, 60, 300, 1800)
    assert policy.max_attempts == 4
    assert policy.jitter == 0.1
    assert [policy.next_delay(n, rand=_mid) for n in (1, 2, 3, 4)] == [60, 300, 1800, None]


def test_fractional_schedule() -> None:
    policy = RetryPolicy.from_config({"schedule": [0, 0.05, 0.1], "jitter": 0})
    assert policy.max_attempts == 3
    assert [policy.next_delay(n) for n in (1, 2, 3)] == [0.05, 0.1, None]


def test_single_attempt_schedule_is_dead_after_first_failure() -> None:
    policy = RetryPolicy.from_config({"schedule": [0]})
    assert policy.max_attempts == 1
    assert policy.next_delay(1) is None


def test_direct_construction_normalises_and_validates() -> None:
    policy = RetryPolicy(schedule=[0, 1, 2])  # type: ignore[arg-type]
    assert policy.schedule == (0.0, 1.0, 2.0)
    assert hash(policy) == hash(RetryPolicy(schedule=(0, 1, 2)))
    with pytest.raises(ValueError, match=r"retry\.schedule"):
        RetryPolicy(schedule=())
    with pytest.raises(ValueError, match=r"retry\.jitter"):
        RetryPolicy(jitter=2)


def test_none_and_empty_config_give_default() -> None:
    assert RetryPolicy.from_config(None) == RetryPolicy()
    assert RetryPolicy.from_config({}) == RetryPolicy()
    assert RetryPolicy.from_config({"jitter": 0.25}) == RetryPolicy(jitter=0.25)


# --- exponential form ------------------------------------------------------------------------------


def test_exponential_form() -> None:
    policy = RetryPolicy.from_config({"max_attempts": 6, "base": 30, "factor": 2, "max": 200})
    # attempt 1 immediate, attempt k after min(max, base * factor**(k-2))
    assert policy.schedule == (0, 30, 60, 120, 200, 200)
    assert policy.max_attempts == 6
    assert _attempts_until_dead(policy) == 6


def test_exponential_form_fractions_and_jitter_key() -> None:
    policy = RetryPolicy.from_config({"max_attempts": 4, "base": 0.05, "factor": 1.5, "max": 1, "jitter": 0})
    assert policy.schedule == pytest.approx((0, 0.05, 0.075, 0.1125))
    assert policy.jitter == 0


def test_exponential_single_attempt() -> None:
    policy = RetryPolicy.from_config({"max_attempts": 1, "base": 30, "factor": 2, "max": 60})
    assert policy.schedule == (0,)
    assert policy.next_delay(1) is None


def test_exponential_huge_factor_is_capped_not_overflowing() -> None:
    policy = RetryPolicy.from_config({"max_attempts": 100, "base": 1, "factor": 1e10, "max": 3600})
    assert policy.max_attempts == 100
    assert policy.schedule[:3] == (0, 1, 3600)
    assert all(d == 3600 for d in policy.schedule[2:])


def test_exponential_zero_base_stays_zero() -> None:
    policy = RetryPolicy.from_config({"max_attempts": 100, "base": 0, "factor": 1e10, "max": 3600})
    assert set(policy.schedule) == {0}


# --- jitter ----------------------------------------------------------------------------------------


@given(
    delay=st.floats(min_value=0, max_value=retry.MAX_RETRY_DELAY, allow_nan=False),
    jitter=st.floats(min_value=0, max_value=1, allow_nan=False),
    r=st.floats(min_value=0, max_value=1, exclude_max=True),
)
def test_jitter_bounds(delay: float, jitter: float, r: float) -> None:
    policy = RetryPolicy(schedule=(0, delay), jitter=jitter)
    result = policy.next_delay(1, rand=lambda: r)
    assert result is not None
    slack = 1e-9 * max(1.0, delay)  # float rounding only
    assert delay * (1 - jitter) - slack <= result <= delay * (1 + jitter) + slack


@given(jitter=st.floats(min_value=0, max_value=1, allow_nan=False))
def test_jitter_bounds_with_real_random(jitter: float) -> None:
    policy = RetryPolicy(schedule=(0, 100.0), jitter=jitter)
    result = policy.next_delay(1)
    assert result is not None
    assert 100 * (1 - jitter) - 1e-9 <= result <= 100 * (1 + jitter) + 1e-9


def test_jitter_extremes_and_formula() -> None:
    policy = RetryPolicy(schedule=(0, 100), jitter=0.2)
    assert policy.next_delay(1, rand=lambda: 0.0) == pytest.approx(80)
    assert policy.next_delay(1, rand=_mid) == pytest.approx(100)
    assert policy.next_delay(1, rand=lambda: 0.75) == pytest.approx(110)
    assert policy.next_delay(1, rand=lambda: 1.0) == pytest.approx(120)


def test_out_of_range_rand_is_clamped() -> None:
    policy = RetryPolicy(schedule=(0, 100), jitter=0.2)
    assert policy.next_delay(1, rand=lambda: 5.0) == pytest.approx(120)
    assert policy.next_delay(1, rand=lambda: -5.0) == pytest.approx(80)


@given(r=st.floats(min_value=0, max_value=1))
def test_zero_delays_stay_zero(r: float) -> None:
    policy = RetryPolicy(schedule=(0, 0, 10), jitter=1)
    assert policy.next_delay(1, rand=lambda: r) == 0


# --- Retry-After -----------------------------------------------------------------------------------


def test_retry_after_raises_the_delay() -> None:
    assert NO_JITTER.next_delay(1, retry_after=600) == 600


def test_retry_after_never_shortens_the_delay() -> None:
    assert NO_JITTER.next_delay(2, retry_after=10) == 300
    assert NO_JITTER.next_delay(1, retry_after=0) == 60


def test_retry_after_is_capped() -> None:
    assert NO_JITTER.next_delay(1, retry_after=10**9) == MAX_RETRY_AFTER
    assert NO_JITTER.next_delay(1, retry_after=math.inf) == MAX_RETRY_AFTER


def test_retry_after_nan_and_negative_are_ignored() -> None:
    assert NO_JITTER.next_delay(1, retry_after=math.nan) == 60
    assert NO_JITTER.next_delay(1, retry_after=-30) == 60


def test_retry_after_applies_after_jitter() -> None:
    policy = RetryPolicy(schedule=(0, 100), jitter=0.5)
    assert policy.next_delay(1, retry_after=120, rand=lambda: 1.0) == 150  # jitter already longer
    assert policy.next_delay(1, retry_after=120, rand=lambda: 0.0) == 120


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), ("  5 ", 5.0), ("0", 0.0), ("1.5", 1.5), ("-5", 0.0), ("+7", 7.0)],
)
def test_parse_retry_after_seconds(value: str, expected: float) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = datetime(2015, 10, 21, 7, 20, tzinfo=UTC).timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 480.0
    # RFC 850 and asctime forms are obsolete but still legal HTTP-dates.
    assert parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now=now) == 480.0
    assert parse_retry_after("Wed Oct 21 07:28:00 2015", now=now) == 480.0
    # "-0000" makes parsedate_to_datetime return a naive datetime; HTTP-dates are UTC regardless.
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 -0000", now=now) == 480.0


def test_parse_retry_after_past_date_is_zero() -> None:
    now = datetime(2015, 10, 21, 8, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=now) == 0.0


def test_parse_retry_after_http_date_defaults_to_current_time() -> None:
    future = datetime.now(UTC).replace(microsecond=0).timestamp() + 3600
    value = format_datetime(datetime.fromtimestamp(future, UTC), usegmt=True)
    result = parse_retry_after(value)
    assert result is not None
    assert 3590 <= result <= 3600


@pytest.mark.parametrize(
    "value", [None, "", "   ", "soon", "inf", "nan", "1e3", "12abc", "0x10", "Wed, 99 Foo 2015 07:28:00 GMT"]
)
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


def test_parsed_retry_after_feeds_next_delay() -> None:
    assert NO_JITTER.next_delay(1, retry_after=parse_retry_after("3600")) == 3600
    assert NO_JITTER.next_delay(1, retry_after=parse_retry_after("garbage")) == 60


# --- config validation -----------------------------------------------------------------------------

EXP = {"max_attempts": 5, "base": 10, "factor": 2, "max": 100}


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"schedule": []}, "retry.schedule"),
        ({"schedule": [0, -1]}, r"retry.schedule\[1\]"),
        ({"schedule": [0, "60"]}, r"retry.schedule\[1\]"),
        ({"schedule": [0, True]}, r"retry.schedule\[1\]"),
        ({"schedule": [0, math.nan]}, r"retry.schedule\[1\]"),
        ({"schedule": [0, math.inf]}, r"retry.schedule\[1\]"),
        ({"schedule": "0,60"}, "retry.schedule"),
        ({"schedule": 60}, "retry.schedule"),
        ({"schedule": [0] * 101}, "retry.schedule"),
        ({"schedule": [0, 60], "base": 10}, "retry.base"),
        ({**EXP, "max_attempts": 0}, "retry.max_attempts"),
        ({**EXP, "max_attempts": -3}, "retry.max_attempts"),
        ({**EXP, "max_attempts": 101}, "retry.max_attempts"),
        ({**EXP, "max_attempts": 2.5}, "retry.max_attempts"),
        ({**EXP, "max_attempts": True}, "retry.max_attempts"),
        ({**EXP, "base": -1}, "retry.base"),
        ({**EXP, "factor": -2}, "retry.factor"),
        ({**EXP, "factor": 0.5}, "retry.factor"),
        ({**EXP, "max": -1}, "retry.max"),
        ({**EXP, "max": "1h"}, "retry.max"),
        ({"max_attempts": 5, "base": 10, "max": 100}, "retry.factor"),
        ({"base": 10}, "retry.max_attempts"),
        ({"jitter": -0.1}, "retry.jitter"),
        ({"jitter": 1.5}, "retry.jitter"),
        ({"schedul": [0, 60]}, "retry.schedul"),
        ({"schedule": [0], "backoff": "exp"}, "retry.backoff"),
    ],
)
def test_config_errors_name_the_key(cfg: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=key):
        RetryPolicy.from_config(cfg)


def test_config_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="retry: must be a mapping"):
        RetryPolicy.from_config([0, 60])  # type: ignore[arg-type]


def test_hundred_attempts_is_allowed() -> None:
    assert RetryPolicy.from_config({"schedule": [0] * 100}).max_attempts == 100
    assert RetryPolicy.from_config({**EXP, "max_attempts": 100}).max_attempts == 100


def test_docstring_examples() -> None:
    result = doctest.testmod(retry, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"schedule": [0, 1e300]}, "retry.schedule[1]"),
        ({"schedule": [0, 60, 30 * 86400 + 1]}, "retry.schedule[2]"),
        ({"max_attempts": 3, "base": 3e6, "factor": 2, "max": 60}, "retry.base"),
        ({"max_attempts": 3, "base": 60, "factor": 2, "max": 1e12}, "retry.max"),
    ],
)
def test_delays_over_thirty_days_are_refused_naming_the_key(cfg: dict[str, Any], key: str) -> None:
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: at most 2592000 seconds \(30 days\)"):
        RetryPolicy.from_config(cfg)
    # Thirty days is the longest wait allowed.
    assert RetryPolicy.from_config({"schedule": [0, 30 * 86400]}).schedule == (0.0, 2592000.0)
