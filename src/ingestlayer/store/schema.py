"""SQLAlchemy Core tables: the same schema on SQLite and PostgreSQL.

Times are stored as epoch seconds (double precision): portable across both databases, cheap to
compare in the leasing queries, and rendered as ISO 8601 at the API edge.
Payloads are JSON text, stored exactly as serialized at ingest.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

Time = Float(precision=53)

projects = Table(
    "projects",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    # Bumped in the same transaction as any pipeline/destination/secret change, so workers in
    # other processes know when their cached, compiled configuration is stale.
    Column("config_version", Integer, nullable=False, server_default=text("1")),
    Column("created_at", Time, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(40), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("kind", String(10), nullable=False),  # ingest | admin
    # sha256 of the whole key: the key itself is shown once and never stored.
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(24), nullable=False),  # first characters, to recognise a key in lists
    Column("name", String(200), nullable=True),
    Column("created_at", Time, nullable=False),
    Column("revoked_at", Time, nullable=True),
)

events = Table(
    "events",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(40), nullable=False),
    Column("type", String(200), nullable=False),
    Column("payload", Text, nullable=False),
    Column("idempotency_key", String(255), nullable=True),
    Column("source", String(200), nullable=False),
    Column("occurred_at", Time, nullable=False),
    Column("received_at", Time, nullable=False),
    # What each pipeline and step did with the event (JSON), written by the router.
    Column("trace", Text, nullable=True),
    # Partial: most events carry no key, and an index entry each would be written for nothing.
    Index(
        "ux_events_project_idempotency",
        "project_id",
        "idempotency_key",
        unique=True,
        sqlite_where=text("idempotency_key IS NOT NULL"),
        postgresql_where=text("idempotency_key IS NOT NULL"),
    ),
    Index("ix_events_project_id_id", "project_id", "id"),
    Index("ix_events_project_type_id", "project_id", "type", "id"),
)

# The outbox: one row per accepted event, inserted in the same transaction as the event and
# deleted in the same transaction that inserts the event's deliveries.
route_jobs = Table(
    "route_jobs",
    metadata,
    Column("event_id", String(40), primary_key=True),
    Column("project_id", String(40), nullable=False),
    Column("due_at", Time, nullable=False),  # when it may next be leased
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # Put back after a failed routing attempt, due again after its back-off (not leased: a lease
    # clears it). A change of its project's configuration makes it due at once: the change may
    # be the fix, and its back-off may be half an hour.
    Column("waiting", Boolean, nullable=False, server_default=text("false")),
    Index("ix_route_jobs_due_at", "due_at"),
    # A project's waiting jobs, found in a few seeks by that change: the due_at index would walk
    # every job not yet due, every project's, leased or waiting.
    Index(
        "ix_route_jobs_waiting",
        "project_id",
        sqlite_where=text("waiting"),
        postgresql_where=text("waiting"),
    ),
    # On SQLite the primary key is the table itself: one B-tree fewer to write per event.
    sqlite_with_rowid=False,
)

pipelines = Table(
    "pipelines",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(40), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("config", Text, nullable=False),  # canonical JSON of the pipeline spec
    Column("endpoint", Boolean, nullable=False, server_default=text("false")),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_pipelines_project_name"),
)

destinations = Table(
    "destinations",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(40), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("kind", String(40), nullable=False),
    Column("config", Text, nullable=False),  # canonical JSON; secrets only as env:/ref: references
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_destinations_project_name"),
)

secrets = Table(
    "secrets",
    metadata,
    Column("project_id", String(40), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("ciphertext", LargeBinary, nullable=False),  # Fernet token under the master key
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(40), nullable=False),
    Column("event_id", String(40), nullable=False),
    Column("event_type", String(200), nullable=False),
    Column("pipeline_id", String(40), nullable=False),
    Column("destination_id", String(40), nullable=False),
    # pending | delivering | retrying | delivered | dead
    Column("status", String(12), nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    # Attempts made before the current retry cycle: a replay starts the schedule afresh.
    Column("retry_base", Integer, nullable=False, server_default=text("0")),
    # For pending/retrying: when the next attempt is due. For delivering: when the lease expires
    # and another worker may take it over. Null once delivered or dead.
    Column("due_at", Time, nullable=True),
    Column("lease_token", String(40), nullable=True),
    Column("body", Text, nullable=False),  # the processed event, as the destination receives it
    Column("last_status_code", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
    Column("finished_at", Time, nullable=True),
    Index(
        "ix_deliveries_due",
        "due_at",
        sqlite_where=text("status IN ('pending', 'retrying', 'delivering')"),
        postgresql_where=text("status IN ('pending', 'retrying', 'delivering')"),
    ),
    # Each destination's due deliveries in due order: leases that leave out destinations at
    # their concurrency limit find the others' without walking that backlog (lease_window).
    Index(
        "ix_deliveries_due_destination",
        "destination_id",
        "due_at",
        sqlite_where=text("status IN ('pending', 'retrying', 'delivering')"),
        postgresql_where=text("status IN ('pending', 'retrying', 'delivering')"),
    ),
    Index("ix_deliveries_project_id_id", "project_id", "id"),
    Index("ix_deliveries_project_status_id", "project_id", "status", "id"),
    Index("ix_deliveries_project_destination_id", "project_id", "destination_id", "id"),
    Index("ix_deliveries_event_id", "event_id"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("delivery_id", String(40), nullable=False),
    Column("project_id", String(40), nullable=False),
    Column("n", Integer, nullable=False),
    Column("started_at", Time, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("error", Text, nullable=True),
    Column("response_excerpt", Text, nullable=True),
    Column("next_retry_at", Time, nullable=True),
    Column("worker", String(80), nullable=True),
    Index("ix_attempts_delivery_id_n", "delivery_id", "n"),
    Index("ix_attempts_project_started", "project_id", "started_at"),
)

# Signed webhook ingress: a third party POSTs to /v1/ingress/{id}; the id is global.
sources = Table(
    "sources",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("project_id", String(40), ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(200), nullable=False),
    Column("config", Text, nullable=False),  # canonical JSON; the secret only as env:/ref:
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
    Column("created_at", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
    UniqueConstraint("project_id", "name", name="uq_sources_project_name"),
)

# The project's entity store (users, accounts, companies, any kind), read by enrich steps.
entities = Table(
    "entities",
    metadata,
    Column("project_id", String(40), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("kind", String(64), primary_key=True),
    Column("id", String(255), primary_key=True),
    Column("traits", Text, nullable=False),  # JSON object
    Column("updated_at", Time, nullable=False),
)

# Results of expensive steps (classify, HTTP lookups), keyed by a hash of config and input.
step_cache = Table(
    "step_cache",
    metadata,
    Column("project_id", String(40), primary_key=True),
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("expires_at", Time, nullable=True),
    Column("created_at", Time, nullable=False),
)

# Dashboard sessions signed out before they expired (a hash of the session's id): refused until
# then, when the row can go.
dashboard_signouts = Table(
    "dashboard_signouts",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("expires_at", Time, nullable=False),
    Index("ix_dashboard_signouts_expires_at", "expires_at"),
)

# Each project's ingest rate-limit bucket where several api processes share a PostgreSQL
# database: each process takes slices of it and spends them itself (api/ratelimit.py).
rate_buckets = Table(
    "rate_buckets",
    metadata,
    Column("project_id", String(40), ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True),
    Column("tokens", Time, nullable=False),
    Column("updated_at", Time, nullable=False),
)

# One row (id 1): a token encrypted with the master key the database's secrets are encrypted with,
# written by the first process that uses a key with this database, so that every other process
# can tell it holds another key before it stores or reads a secret (secretbox.py).
master_key_check = Table(
    "master_key_check",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("token", LargeBinary, nullable=False),
    Column("created_at", Time, nullable=False),
)
