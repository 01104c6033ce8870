"""Server settings from the environment: every value out of its range is refused, by name.

A value the server would run with but cannot work with (no delivery slots, a typo read as "no",
a log level logging cannot take) stops the command with one line saying which setting and what
it must be, instead of a server that starts and quietly does nothing.
"""

from __future__ import annotations

import pytest

from ingestlayer.config import Settings


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        # A concurrency of 0 started a server that left every delivery pending, saying nothing.
        ("INGESTLAYER_DELIVERY_CONCURRENCY", "0", "must be at least 1, got 0"),
        ("INGESTLAYER_DELIVERY_CONCURRENCY", "-3", "must be at least 1, got -3"),
        ("INGESTLAYER_DELIVERY_CONCURRENCY_PER_DESTINATION", "0", "must be at least 1, got 0"),
        ("INGESTLAYER_DELIVERY_CONCURRENCY_PER_PROJECT", "0", "must be at least 1, got 0"),
        ("INGESTLAYER_DATABASE_POOL_SIZE", "0", "must be at least 1, got 0"),
        ("INGESTLAYER_SLOW_DESTINATION_CONCURRENCY", "-1", "must be at least 1, got -1"),
        ("INGESTLAYER_HTTP_MAX_CONNECTIONS", "0", "must be at least 1, got 0"),
        ("INGESTLAYER_SLOW_DESTINATION_SECONDS", "0", "must be at least 0.01, got 0.0"),
        ("INGESTLAYER_DELIVERY_LEASE_SECONDS", "0.5", "must be at least 1.0, got 0.5"),
        ("INGESTLAYER_ROUTE_LEASE_SECONDS", "0", "must be at least 1.0, got 0.0"),
        ("INGESTLAYER_POLL_INTERVAL", "0", "must be at least 0.001, got 0.0"),
        ("INGESTLAYER_SHUTDOWN_GRACE_SECONDS", "-1", "must be at least 0.0, got -1.0"),
        ("INGESTLAYER_DATABASE_TIMEOUT", "0", "must be at least 0.1, got 0.0"),
        ("INGESTLAYER_INGEST_RATE_LIMIT", "-5", "must be at least 0.0, got -5.0"),
        ("INGESTLAYER_RETENTION_DAYS", "-1", "must be at least 0.0, got -1.0"),
        # float() reads these; no timeout, lease or rate can be them.
        ("INGESTLAYER_POLL_INTERVAL", "nan", "must be a number, got 'nan'"),
        ("INGESTLAYER_DATABASE_TIMEOUT", "inf", "must be a number, got 'inf'"),
        # A typo in a yes/no setting was read as "no": deliveries to a private receiver went dead.
        (
            "INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS",
            "ture",
            "must be 1, true, yes or on, or 0, false, no or off, got 'ture'",
        ),
        # logging's own words ("Unknown level: 'VERBOSE'") named no setting.
        (
            "INGESTLAYER_LOG_LEVEL",
            "verbose",
            "must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got 'verbose'",
        ),
    ],
)
def test_a_setting_out_of_its_range_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, words: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as refused:
        Settings.from_env()
    assert str(refused.value) == f"{name} {words}"


@pytest.mark.parametrize(
    ("value", "allowed"),
    [
        ("1", True),
        ("TRUE", True),
        (" yes ", True),
        ("On", True),
        ("0", False),
        ("false", False),
        ("NO", False),
    ],
)
def test_yes_no_words_in_any_case(monkeypatch: pytest.MonkeyPatch, value: str, allowed: bool) -> None:
    monkeypatch.setenv("INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS", value)
    assert Settings.from_env().allow_private_destinations is allowed


def test_the_least_values_and_any_case_log_level_are_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    least = {
        "INGESTLAYER_DELIVERY_CONCURRENCY": "1",
        "INGESTLAYER_DELIVERY_LEASE_SECONDS": "1",
        "INGESTLAYER_POLL_INTERVAL": "0.001",
        "INGESTLAYER_SHUTDOWN_GRACE_SECONDS": "0",
        "INGESTLAYER_LOG_LEVEL": "warning",
    }
    for name, value in least.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env()
    assert settings.delivery_concurrency == 1
    assert settings.delivery_lease_seconds == 1.0
    assert settings.poll_interval == 0.001
    assert settings.shutdown_grace_seconds == 0.0
    assert settings.log_level == "WARNING"
