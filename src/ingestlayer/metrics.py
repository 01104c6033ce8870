"""Prometheus metrics, served at ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

EVENTS_INGESTED = Counter(
    "ingestlayer_events_ingested_total", "Events accepted and stored", registry=REGISTRY
)
EVENTS_DUPLICATE = Counter(
    "ingestlayer_events_duplicate_total", "Events refused as idempotent repeats", registry=REGISTRY
)
DELIVERIES_CREATED = Counter(
    "ingestlayer_deliveries_created_total", "Deliveries created by routing", registry=REGISTRY
)
ATTEMPTS = Counter(
    "ingestlayer_delivery_attempts_total", "Delivery attempts by result", ["result"], registry=REGISTRY
)
ATTEMPT_SECONDS = Histogram(
    "ingestlayer_delivery_attempt_seconds",
    "Duration of delivery attempts",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
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
