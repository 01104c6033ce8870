"""``postgres``: one row per delivery in the user's table, idempotent on the delivery id.

The configuration, with its example, is :class:`~.config.PostgresConfig`; the SQL is in
:mod:`.sql`; the pool, the send and the error classification are in :mod:`.destination`.
"""

from __future__ import annotations

from ingestlayer.destinations.postgres.config import PostgresConfig
from ingestlayer.destinations.postgres.destination import Postgres

__all__ = ["Postgres", "PostgresConfig"]
