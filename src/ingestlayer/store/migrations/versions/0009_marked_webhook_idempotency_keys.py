"""signed webhooks' idempotency keys marked, apart from the keys senders choose

A signed webhook's key was stored as ``<source name>:<sender's id>``, a key an event sent with an
ingest key could take first, so that the verified webhook was answered as a duplicate and dropped.
Webhook keys now begin with the ASCII unit separator, which the API refuses in keys it is sent
(see ``ingestlayer.idempotency_keys``). Keys stored before are marked the same way, cut to 255
characters as new ones are, so a webhook redelivered after the upgrade is still recognised.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-27 02:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Events whose source is one of their project's signed-ingress sources, keyed by it.
_FROM_WEBHOOKS = """
    idempotency_key IS NOT NULL
    AND substr(idempotency_key, 1, length(source) + 1) = source || ':'
    AND EXISTS (SELECT 1 FROM sources s WHERE s.project_id = events.project_id AND s.name = events.source)
"""


def _mark() -> str:
    return "chr(31)" if op.get_bind().dialect.name == "postgresql" else "char(31)"


def _free(key: str) -> str:
    """No event of the same project holds ``key`` already (keys are unique per project).

    ``key`` names the updated row's column as ``events.idempotency_key``: unqualified inside
    the subquery it would be ``other``'s own, comparing each row with itself, which matched
    nothing (the check never held) and read every event of the project for each webhook's."""
    return (
        "NOT EXISTS (SELECT 1 FROM events other WHERE other.project_id = events.project_id"
        f" AND other.idempotency_key = {key})"
    )


def upgrade() -> None:
    marked = f"substr({_mark()} || events.idempotency_key, 1, 255)"
    op.execute(f"UPDATE events SET idempotency_key = {marked} WHERE {_FROM_WEBHOOKS} AND {_free(marked)}")


def downgrade() -> None:
    # Keys cut to fit after the mark keep their last 254 characters.
    unmarked = "substr(events.idempotency_key, 2)"
    op.execute(
        f"UPDATE events SET idempotency_key = {unmarked}"
        f" WHERE substr(idempotency_key, 1, 1) = {_mark()} AND {_free(unmarked)}"
    )
