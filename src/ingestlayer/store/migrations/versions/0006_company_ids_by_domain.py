"""company ids by domain: lower case, no surrounding spaces or trailing dot

Companies are keyed by their domain, as ``enrich.person`` takes it from an email address. Ids
were stored as written (``Initech.COM``), so the step did not find them. This normalises the
stored ids; companies whose ids become the same are merged, the traits of the one updated last
winning. An id that is no domain at all (nothing left) is left as it is.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 11:00:00
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _domain(entity_id: str) -> str:
    # The rule of ingestlayer.pipeline.steps.enrich_person.company_domain, frozen here.
    return entity_id.strip().rstrip(".").lower()


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT project_id, id, traits, updated_at FROM entities WHERE kind = 'company'"
            " ORDER BY project_id, updated_at"
        )
    ).fetchall()
    groups: dict[tuple[str, str], list[Any]] = {}
    for row in rows:
        key = _domain(row.id)
        if key:
            groups.setdefault((row.project_id, key), []).append(row)
    for (project_id, key), members in groups.items():
        if len(members) == 1 and members[0].id == key:
            continue
        traits: dict[str, Any] = {}
        for member in members:  # oldest first: the last updated wins
            traits.update(json.loads(member.traits))
        for member in members:
            bind.execute(
                sa.text("DELETE FROM entities WHERE project_id = :p AND kind = 'company' AND id = :i"),
                {"p": project_id, "i": member.id},
            )
        bind.execute(
            sa.text(
                "INSERT INTO entities (project_id, kind, id, traits, updated_at)"
                " VALUES (:p, 'company', :i, :t, :u)"
            ),
            {"p": project_id, "i": key, "t": json.dumps(traits), "u": members[-1].updated_at},
        )


def downgrade() -> None:
    pass  # the original spellings are not kept; normalised ids work with the older code too
