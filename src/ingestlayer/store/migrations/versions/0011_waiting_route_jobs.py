"""route jobs waiting on a back-off marked, so that a configuration change makes them due

An event whose routing failed (its project's configuration could not be compiled, a step's
service was down) waits for its next attempt, up to half an hour. A change of its project's
configuration, which may be the fix, now makes such jobs due at once; a job leased by a router
at that moment must be left alone, and its due_at (a lease token) could not tell it from a
waiting one. ``waiting`` does, and a partial index finds a project's waiting jobs.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-28 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_WAITING = sa.text("waiting")


def upgrade() -> None:
    # Jobs deferred before are left unmarked: they wait out their back-off, as they would have.
    op.add_column(
        "route_jobs", sa.Column("waiting", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    op.create_index(
        "ix_route_jobs_waiting",
        "route_jobs",
        ["project_id"],
        sqlite_where=_WAITING,
        postgresql_where=_WAITING,
    )


def downgrade() -> None:
    op.drop_index("ix_route_jobs_waiting", table_name="route_jobs")
    # Not in batch mode: SQLite drops the column in place (3.35+), and a copy of the table
    # would lose WITHOUT ROWID.
    op.drop_column("route_jobs", "waiting")
