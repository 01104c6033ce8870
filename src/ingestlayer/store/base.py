"""What every part of :class:`~ingestlayer.store.store.Store` shares: the engines and hot path
it holds, the dialect's insert, and the errors its operations raise."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite

from ingestlayer.store.db import Engines
from ingestlayer.store.pg_hot import PgHotPath
from ingestlayer.store.sqlite_hot import SqliteHotPath


class NotFound(LookupError):
    pass


class Conflict(ValueError):
    pass


class StoreBase:
    """The state :class:`~ingestlayer.store.store.Store` sets up (see its ``__init__``), which
    each of its parts, the mixins beside this module, works with."""

    engines: Engines
    dialect: str
    worker_id: str
    _hot: SqliteHotPath | PgHotPath

    def _insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)
