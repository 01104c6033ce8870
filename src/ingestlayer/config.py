"""Settings, read once from ``INGESTLAYER_*`` environment variables (and CLI flags).

Every tunable of the server lives here so a reader can see them all in one place.
"""

from __future__ import annotations

import math
import os
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

T = TypeVar("T")
N = TypeVar("N", int, float)

DEFAULT_SQLITE_URL = "sqlite:///./ingestlayer.db"
# The ports a server may listen on; not 0 ("any free port"), as the port picked is reported nowhere.
MIN_PORT, MAX_PORT = 1, 65535
# The most HTTP connections allowed by default, however high the open-file limit (a connection
# kept alive costs the server about 11 KiB).
HTTP_MAX_CONNECTIONS_CEILING = 50_000


TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _boolean(value: str) -> bool:
    word = value.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(value)


def _env_bool(name: str, default: bool) -> bool:
    """A yes/no setting. Anything else is refused: a typo read as "no" would, for example,
    leave private destinations forbidden and send their deliveries to the dead letters."""
    value = _env_parsed(name, _boolean, "1, true, yes or on, or 0, false, no or off")
    return default if value is None else value


def _finite(value: str) -> float:
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in LOG_LEVELS:
        raise ValueError(value)
    return level


def _port_number(value: str) -> int:
    port = int(value)
    if not MIN_PORT <= port <= MAX_PORT:
        raise ValueError(value)
    return port


def _env_parsed(name: str, parse: Callable[[str], T], what: str) -> T | None:
    """The variable read by ``parse``; None when unset or empty. A value that cannot be read is
    reported with the variable's name and what it must be, which the parser's own words
    ("invalid literal for int() with base 10: 'abc'") do not say."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse(raw)
    except ValueError:
        raise ValueError(f"{name} must be {what}, got {raw!r}") from None


def _env_float(name: str, default: float) -> float:
    value = _env_parsed(name, _finite, "a number")
    return default if value is None else value


def _env_int(name: str, default: int) -> int:
    value = _env_opt_int(name)
    return default if value is None else value


def _at_least(name: str, least: N, default: N) -> N:
    """A number read from ``name`` (an integer when ``default`` is one), refused below ``least``:
    a header limit of 0 bytes or a timeout of 0 s would refuse every request, a concurrency of
    0 would send nothing, and neither would say so."""
    value = _env_int(name, default) if isinstance(default, int) else _env_float(name, default)
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")
    return value


def _opt_at_least(name: str, least: int) -> int | None:
    value = _env_opt_int(name)
    if value is not None and value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")
    return value


def _env_opt_int(name: str) -> int | None:
    return _env_parsed(name, int, "an integer")


def _env_port(name: str) -> int | None:
    return _env_parsed(name, _port_number, f"a port number ({MIN_PORT}-{MAX_PORT})")


def _env_list(name: str) -> tuple[str, ...]:
    """A comma- or space-separated list."""
    return tuple(item for item in re.split(r"[,\s]+", os.environ.get(name, "")) if item)


@dataclass(frozen=True)
class Settings:
    """Server settings. Build with :meth:`from_env`, override with :meth:`with_overrides`."""

    database_url: str = DEFAULT_SQLITE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    # Where a `worker` serves /healthz, /readyz and /metrics; None: it serves nothing.
    worker_port: int | None = None
    # The address senders use to reach this server (printed with ingress URLs).
    public_url: str | None = None
    # Outbound requests to private/loopback/link-local addresses are refused unless allowed,
    # so one tenant cannot probe the operator's internal network.
    allow_private_destinations: bool = False
    secret_key: str | None = None
    secret_key_file: str = "./ingestlayer.key"
    # Group commit: ingest requests arriving together share one transaction.
    ingest_batch_max: int = 2000
    # Dispatcher
    delivery_concurrency: int = 128
    # Attempts in flight at once to one destination in each process, unless its `concurrency`
    # says otherwise (delivery/slots.py): by default three quarters of delivery_concurrency, so
    # a receiver that hangs never holds every slot; an eighth while the destination is slow
    # (an eighth of its attempts in the last minute took longer than slow_destination_seconds).
    delivery_concurrency_per_destination: int | None = None
    # Attempts in flight at once for one project, all its destinations together (delivery/
    # project_shares.py): by default three quarters of delivery_concurrency, so that a project's
    # many destinations that hang never hold every slot.
    delivery_concurrency_per_project: int | None = None
    slow_destination_concurrency: int | None = None
    slow_destination_seconds: float = 2.0
    # Longer than the longest destination timeout (60 s), so a lease never lapses mid-attempt.
    delivery_lease_seconds: float = 90.0
    delivery_batch: int = 256
    poll_interval: float = 0.05
    # Router
    route_batch: int = 500
    route_lease_seconds: float = 15.0
    # How long in-flight attempts may run on shutdown before their leases are released.
    shutdown_grace_seconds: float = 15.0
    database_timeout: float = 30.0
    # /healthz answers 503 once a background loop (router, dispatcher, ingest committer) has gone
    # this long without a pass (liveness.py): longer than any wait of theirs on the database.
    liveness_seconds: float = 120.0
    # When set, /metrics answers only requests bearing it (Authorization: Bearer <token>).
    metrics_token: str | None = None
    # PostgreSQL: connections in each of a process's two pools (store/db.py DEFAULT_POOL_SIZE).
    database_pool_size: int = 10
    max_event_bytes: int = 256 * 1024
    max_request_bytes: int = 5 * 1024 * 1024
    max_batch_items: int = 1000
    # The HTTP server (http_protocol.py). A request's head (request line and headers) may be this
    # long: 431 (414 for the target) past it. AWS's load balancer allows 64 KiB in all, nginx
    # 32 KiB (4 x 8k), Node 16 KiB: anything a proxy in front passes is read, and the parser
    # (quadratic in a header's length when it arrives in pieces) is never given much more.
    http_max_header_bytes: int = 64 * 1024
    # A head not complete this long after it began (the first: after the connection opened) is
    # answered 408, a connection silent that long closed (nginx and Node: 60 s).
    http_header_timeout: float = 30.0
    # A body that makes no progress this long is answered 408 (nginx's client_body_timeout).
    http_body_timeout: float = 60.0
    # Connections open at once; None: three quarters of the open-file limit, at most 50,000
    # (http_connection_limit).
    http_max_connections: int | None = None
    # Per-project ingest rate limit (events/s, 0 = unlimited) with a burst of one second's worth.
    ingest_rate_limit: float = 0.0
    retention_days: float = 0.0
    # Environment variables that `env:VAR` references may read (names or globs such as
    # WAREHOUSE_*). None by default: any project's admin could otherwise have the server's own
    # environment sent to a URL of theirs. INGESTLAYER_* (the master key, the database URL) never.
    env_secrets: tuple[str, ...] = ()
    log_level: str = "INFO"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            database_url=os.environ.get("INGESTLAYER_DATABASE_URL") or DEFAULT_SQLITE_URL,
            host=os.environ.get("INGESTLAYER_HOST") or "127.0.0.1",
            port=_env_port("INGESTLAYER_PORT") or 8000,  # a port is never 0 (refused)
            worker_port=_env_port("INGESTLAYER_WORKER_PORT"),
            public_url=os.environ.get("INGESTLAYER_PUBLIC_URL") or None,
            allow_private_destinations=_env_bool("INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS", False),
            secret_key=os.environ.get("INGESTLAYER_SECRET_KEY") or None,
            secret_key_file=os.environ.get("INGESTLAYER_SECRET_KEY_FILE") or "./ingestlayer.key",
            delivery_concurrency=_at_least("INGESTLAYER_DELIVERY_CONCURRENCY", 1, 128),
            delivery_concurrency_per_destination=_opt_at_least(
                "INGESTLAYER_DELIVERY_CONCURRENCY_PER_DESTINATION", 1
            ),
            delivery_concurrency_per_project=_opt_at_least("INGESTLAYER_DELIVERY_CONCURRENCY_PER_PROJECT", 1),
            slow_destination_concurrency=_opt_at_least("INGESTLAYER_SLOW_DESTINATION_CONCURRENCY", 1),
            slow_destination_seconds=_at_least("INGESTLAYER_SLOW_DESTINATION_SECONDS", 0.01, 2.0),
            delivery_lease_seconds=_at_least("INGESTLAYER_DELIVERY_LEASE_SECONDS", 1.0, 90.0),
            poll_interval=_at_least("INGESTLAYER_POLL_INTERVAL", 0.001, 0.05),
            route_lease_seconds=_at_least("INGESTLAYER_ROUTE_LEASE_SECONDS", 1.0, 15.0),
            shutdown_grace_seconds=_at_least("INGESTLAYER_SHUTDOWN_GRACE_SECONDS", 0.0, 15.0),
            database_timeout=_at_least("INGESTLAYER_DATABASE_TIMEOUT", 0.1, 30.0),
            liveness_seconds=_at_least("INGESTLAYER_LIVENESS_SECONDS", 1.0, 120.0),
            metrics_token=os.environ.get("INGESTLAYER_METRICS_TOKEN") or None,
            database_pool_size=_at_least("INGESTLAYER_DATABASE_POOL_SIZE", 1, 10),
            ingest_rate_limit=_at_least("INGESTLAYER_INGEST_RATE_LIMIT", 0.0, 0.0),
            retention_days=_at_least("INGESTLAYER_RETENTION_DAYS", 0.0, 0.0),
            http_max_header_bytes=_at_least("INGESTLAYER_HTTP_MAX_HEADER_BYTES", 1024, 64 * 1024),
            http_header_timeout=_at_least("INGESTLAYER_HTTP_HEADER_TIMEOUT", 0.1, 30.0),
            http_body_timeout=_at_least("INGESTLAYER_HTTP_BODY_TIMEOUT", 0.1, 60.0),
            http_max_connections=_opt_at_least("INGESTLAYER_HTTP_MAX_CONNECTIONS", 1),
            env_secrets=_env_list("INGESTLAYER_ENV_SECRETS"),
            log_level=_env_parsed(
                "INGESTLAYER_LOG_LEVEL", _log_level, ", ".join(LOG_LEVELS[:-1]) + " or CRITICAL"
            )
            or "INFO",
        )

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def per_destination_concurrency(self) -> int:
        if self.delivery_concurrency_per_destination is not None:
            return max(1, self.delivery_concurrency_per_destination)
        return max(1, self.delivery_concurrency * 3 // 4)

    @property
    def per_project_concurrency(self) -> int:
        if self.delivery_concurrency_per_project is not None:
            return max(1, self.delivery_concurrency_per_project)
        return max(1, self.delivery_concurrency * 3 // 4)

    @property
    def slow_destination_limit(self) -> int:
        if self.slow_destination_concurrency is not None:
            return max(1, self.slow_destination_concurrency)
        return max(1, self.delivery_concurrency // 8)

    @property
    def http_connection_limit(self) -> int:
        """``http_max_connections``, or three quarters of the process's open-file limit (the
        rest is left for the database, deliveries' connections and files), at most 50,000."""
        if self.http_max_connections is not None:
            return max(1, self.http_max_connections)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft <= 0:
            return HTTP_MAX_CONNECTIONS_CEILING
        return max(1, min(HTTP_MAX_CONNECTIONS_CEILING, soft * 3 // 4))

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
