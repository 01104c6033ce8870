"""due deliveries by destination: an index on (destination_id, due_at) of due deliveries

A lease leaves out destinations at their concurrency limit. Their due deliveries stay in the
table, and a scan in due order walked all of them on every lease; with this index a lease finds
the other destinations' due deliveries in a few index seeks (``store/lease_window.py``).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_DUE = sa.text("status IN ('pending', 'retrying', 'delivering')")


def upgrade() -> None:
    op.create_index(
        "ix_deliveries_due_destination",
        "deliveries",
        ["destination_id", "due_at"],
        sqlite_where=_DUE,
        postgresql_where=_DUE,
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_due_destination", table_name="deliveries")
