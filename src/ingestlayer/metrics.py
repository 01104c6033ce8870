"""Prometheus metrics, served at ``/metrics``.

Each process counts what it did itself, from its start: ``api`` counts ingest (and the
deliveries it routes at ingest, and those it ends when a destination is disabled or deleted),
``worker`` routing and attempts, ``serve`` all of it. No label names a process, project,
destination, event or delivery, so a series' cardinality is fixed and ``sum`` over the
processes' series is the system's total (see ``docs/monitoring.md``; a ``worker`` serves them
on its ``--port``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# What an attempt left its delivery in: the values of ``result``.
ATTEMPT_RESULTS = ("delivered", "retrying", "dead")

EVENTS_INGESTED = Counter(
    "ingestlayer_events_ingested_total",
    "Events accepted and stored (idempotent repeats not included)",
    registry=REGISTRY,
)
EVENTS_DUPLICATE = Counter(
    "ingestlayer_events_duplicate_total",
    "Events answered as idempotent repeats of a stored event, and not stored again",
    registry=REGISTRY,
)
DELIVERIES_CREATED = Counter(
    "ingestlayer_deliveries_created_total",
    "Deliveries created by routing events (replays make attempts, not deliveries)",
    registry=REGISTRY,
)
ATTEMPTS = Counter(
    "ingestlayer_delivery_attempts_total",
    "Delivery attempts, by what each left its delivery in: delivered, retrying or dead",
    ["result"],
    registry=REGISTRY,
)
# Every result from the start, at 0: an alert on increase(...{result="dead"}) must see the first
# dead letter after a restart, which it cannot if the series only appears with it.
for _result in ATTEMPT_RESULTS:
    ATTEMPTS.labels(result=_result)
ATTEMPT_SECONDS = Histogram(
    "ingestlayer_delivery_attempt_seconds",
    "Duration of each delivery attempt, from sending to the answer or the error (not ingest to delivery)",
    # Up to the longest destination timeout (60 s), so timeouts are told apart from slow answers.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
# Why a request was answered 503 without being served: the values of ``reason``.
UNAVAILABLE_REASONS = ("database", "disk_full", "read_only", "sync_failed", "file_moved", "shutting_down")
UNAVAILABLE = Counter(
    "ingestlayer_requests_unavailable_total",
    "Requests answered 503 because the database could not be used (unreachable, its disk full, its file "
    "read-only, its log not synced, its file removed) or the server was shutting down",
    ["reason"],
    registry=REGISTRY,
)
for _reason in UNAVAILABLE_REASONS:  # at 0 from the start, as ATTEMPTS
    UNAVAILABLE.labels(reason=_reason)
# SQLite only: what the checkpoint thread saw. A log that keeps growing means a reader holds an
# old snapshot (or checkpoints fail), and the disk fills with it.
SQLITE_WAL_BYTES = Gauge(
    "ingestlayer_sqlite_wal_bytes",
    "Size of the SQLite -wal file after the last checkpoint",
    registry=REGISTRY,
)
SQLITE_WAL_RESTARTS = Counter(
    "ingestlayer_sqlite_wal_restarts_total",
    "RESTART checkpoints that let the SQLite log start over under steady writes",
    registry=REGISTRY,
)
# Events whose pipelines wait on a call (a model, a lookup), routed in tasks of their own.
ROUTING_HELD = Gauge(
    "ingestlayer_routing_held_events",
    "Events this process is routing in the background (their pipelines wait on a model or lookup)",
    registry=REGISTRY,
)
ROUTING_PUT_OFF = Counter(
    "ingestlayer_routing_put_off_total",
    "Events given back, uncounted, because their project already held all it may on this process",
    registry=REGISTRY,
)
# Seconds since each background loop of this process last went round (liveness.py): /healthz
# answers 503 past INGESTLAYER_LIVENESS_SECONDS. Set when scraped, not as the loops go round.
LOOP_SILENCE = Gauge(
    "ingestlayer_loop_silence_seconds",
    "Seconds since each background loop of this process last went round (0 while it waits for work "
    "with none to do)",
    ["loop"],
    registry=REGISTRY,
)
