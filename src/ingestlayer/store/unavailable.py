"""What a database that is down, restarting, unreachable or out of disk raises.

Anything else is the database refusing what it was given (a row it will not store) or a bug:
the API answers the first with a 503 and the rest with a 500, and the group committer, the
router and the dispatcher retry a refused batch row by row, but never one that could not reach
the database at all.
"""

from __future__ import annotations

import sqlite3

import asyncpg
import sqlalchemy.exc

from ingestlayer.store.conditions import storage_condition

DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    sqlite3.OperationalError,
    OSError,  # connection refused or reset, timeouts
)


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be used now: out of reach (DATABASE_UNAVAILABLE),
    or its disk full or its file read-only. PostgreSQL's full disk comes through SQLAlchemy as a
    plain DBAPIError, which names no class of its own."""
    return isinstance(exc, DATABASE_UNAVAILABLE) or storage_condition(exc) is not None
