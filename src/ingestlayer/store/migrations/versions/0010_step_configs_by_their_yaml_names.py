"""step configurations stored under their YAML names: "from", not "from_"

``enrich.entity`` and ``enrich.person`` were stored (and shown by ``GET /v1/pipelines``) with
the Python attribute ``from_`` for the YAML key ``from``. They are now stored as written; this
rewrites the configurations stored before, so the API shows ``from`` and the next ``apply`` of an
unchanged document finds nothing to change.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-27 03:00:00
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_STEPS = ("enrich.entity", "enrich.person")


def _renamed(config: dict[str, Any], old: str, new: str) -> bool:
    changed = False
    for step in config.get("steps") or []:
        settings = step.get("config") if isinstance(step, dict) else None
        if step.get("name") in _STEPS and isinstance(settings, dict) and old in settings:
            settings[new] = settings.pop(old)
            changed = True
    return changed


def _rewrite(old: str, new: str) -> None:
    bind = op.get_bind()
    for row in bind.execute(sa.text("SELECT id, config FROM pipelines")).fetchall():
        config = json.loads(row.config)
        if _renamed(config, old, new):
            # The stored form: keys sorted, as orjson's OPT_SORT_KEYS writes it (compact).
            text = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            bind.execute(sa.text("UPDATE pipelines SET config = :c WHERE id = :i"), {"c": text, "i": row.id})


def upgrade() -> None:
    _rewrite("from_", "from")


def downgrade() -> None:
    _rewrite("from", "from_")
