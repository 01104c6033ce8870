"""lighter event writes: a partial idempotency index; route_jobs without rowid on SQLite

Every accepted event writes its row, its indexes and a route job. The idempotency key's unique
constraint indexed every event, also the many without a key; the partial unique index that
replaces it holds keyed events only. On SQLite, route_jobs becomes a WITHOUT ROWID table keyed
by event_id, so a route job is one B-tree entry instead of two.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_KEYED = sa.text("idempotency_key IS NOT NULL")


def _route_jobs_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("event_id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("due_at", sa.Float(precision=53), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
    ]


def _rebuild_route_jobs(*, with_rowid: bool) -> None:
    """SQLite cannot change a table's rowid-ness in place: copy it into a new table."""
    op.create_table(
        "route_jobs_new",
        *_route_jobs_columns(),
        sa.PrimaryKeyConstraint("event_id", name="pk_route_jobs"),
        sqlite_with_rowid=with_rowid,
    )
    op.execute(
        "INSERT INTO route_jobs_new (event_id, project_id, due_at, attempts)"
        " SELECT event_id, project_id, due_at, attempts FROM route_jobs"
    )
    op.drop_index("ix_route_jobs_due_at", table_name="route_jobs")
    op.drop_table("route_jobs")
    op.rename_table("route_jobs_new", "route_jobs")
    op.create_index("ix_route_jobs_due_at", "route_jobs", ["due_at"])


def upgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    # Dropped first: on SQLite, batch mode rebuilds the table and would carry a partial index
    # over without its WHERE clause. Servers migrate before they serve, so nothing inserts
    # between the two steps.
    with op.batch_alter_table("events") as batch:
        batch.drop_constraint("uq_events_project_idempotency", type_="unique")
    op.create_index(
        "ux_events_project_idempotency",
        "events",
        ["project_id", "idempotency_key"],
        unique=True,
        sqlite_where=_KEYED,
        postgresql_where=_KEYED,
    )
    if sqlite:
        _rebuild_route_jobs(with_rowid=False)


def downgrade() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        _rebuild_route_jobs(with_rowid=True)
    op.drop_index("ux_events_project_idempotency", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.create_unique_constraint("uq_events_project_idempotency", ["project_id", "idempotency_key"])
