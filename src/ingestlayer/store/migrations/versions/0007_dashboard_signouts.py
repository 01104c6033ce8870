"""dashboard sign-outs: sessions ended before their time

A dashboard session is a sealed cookie, valid until it expires. Signing out deleted the cookie in
that browser only: a copy of it stayed valid for up to 12 hours. A sign-out is now recorded (a
hash of the session's id, until the session would have expired) and such sessions are refused.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "dashboard_signouts",
        sa.Column("session_hash", sa.String(64), primary_key=True),
        sa.Column("expires_at", sa.Float(precision=53), nullable=False),
    )
    op.create_index("ix_dashboard_signouts_expires_at", "dashboard_signouts", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_dashboard_signouts_expires_at", table_name="dashboard_signouts")
    op.drop_table("dashboard_signouts")
