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
    # PostgreSQL that cannot serve now, whatever it was sent (see UNAVAILABLE_SQLSTATES), raised
    # as they are by the hot path's asyncpg pool; through SQLAlchemy they become an
    # OperationalError (store/db.py). Class 53 holds the full disk, too many connections and
    # out of memory; 57 a statement timeout and a shutdown; 55 a database not accepting
    # connections and a lock not had in time.
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.ObjectNotInPrerequisiteStateError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    sqlite3.OperationalError,
    OSError,  # connection refused or reset, timeouts
)

# The SQLSTATE classes, and codes, of a PostgreSQL that cannot serve now, whatever it was sent:
# a lost connection (08), insufficient resources (53: too many connections, a full disk), an
# object not in the state needed (55: the database not accepting connections, a lock not
# available), operator intervention (57: a statement timeout, a shutdown, cannot connect now),
# and a read-only transaction (25006: a standby, a failover under way). Not the data's fault:
# answered 503 with Retry-After, retried later, and logged as an outage, not as a bug.
UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "53", "55", "57"})
UNAVAILABLE_SQLSTATES = frozenset({"25006"})


def is_unavailable_sqlstate(sqlstate: object) -> bool:
    return isinstance(sqlstate, str) and (
        sqlstate[:2] in UNAVAILABLE_SQLSTATE_CLASSES or sqlstate in UNAVAILABLE_SQLSTATES
    )


# The words of SQLite's driver reading a text column that holds bytes that are not UTF-8 (a row
# edited by hand). Raised as an OperationalError, an outage's class, though it is the row's.
NOT_UTF8_WORDS = "could not decode to utf-8 column"


def not_utf8(exc: BaseException) -> bool:
    """``exc`` (or the driver's error SQLAlchemy wraps in it) is a row's text that is not UTF-8,
    not the database failing: the row's reader, not every reader, is held back by it."""
    return NOT_UTF8_WORDS in str(getattr(exc, "orig", None) or exc).lower()
