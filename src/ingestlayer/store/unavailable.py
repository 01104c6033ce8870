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

DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.InterfaceError,
    # PostgreSQL's full disk, raised as it is by the hot path's asyncpg pool (through SQLAlchemy
    # it becomes an OperationalError: store/db.py).
    asyncpg.exceptions.DiskFullError,
    sqlite3.OperationalError,
    OSError,  # connection refused or reset, timeouts
)
