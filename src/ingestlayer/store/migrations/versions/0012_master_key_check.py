"""the master key's check value: which key the database's secrets are encrypted with

Nothing in the database said which master key its secrets were encrypted with until one was
stored: a command run in another directory made a key file of its own, stored a secret under it,
and the server, restarted, refused to start. A small token encrypted with the key, written once
by the first process that uses a key with the database, lets every process check its key first.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-28 04:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "master_key_check",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("token", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Float(precision=53), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("master_key_check")
