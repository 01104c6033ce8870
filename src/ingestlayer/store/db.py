"""Engines for SQLite and PostgreSQL.

SQLite allows one writer at a time. Inside a process all writes go through a single pooled
connection (the pool is the queue); across processes ``BEGIN IMMEDIATE`` takes the write lock up
front and ``busy_timeout`` waits for it, so no transaction fails half-way on a lock upgrade.
Reads use their own connections, which WAL lets run beside the writer.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from ingestlayer.store.conditions import storage_condition
from ingestlayer.store.sqlite_loop import set_pragmas
from ingestlayer.store.unavailable import is_unavailable_sqlstate
from ingestlayer.urlmask import mask_url

SQLITE_BUSY_TIMEOUT_MS = 30_000


class DatabaseURLError(ValueError):
    pass


def async_url(url: str) -> str:
    """Map a user-facing URL (``sqlite:///x.db``, ``postgresql://…``) to its async driver."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # SQLAlchemy's words quote what it could not read, which may be a piece of the password:
        # from postgresql://u:p@ss:word@host/db, "invalid literal for int(): 'word@host'".
        raise DatabaseURLError(
            f"{mask_url(url)} is not a URL that can be read (percent-encode '@', ':' and '/' in a password)"
        ) from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if "?" in url:
            # Read as a query, what follows a '?' was dropped: the file was another one (and the
            # driver's options are ours to set).
            raise DatabaseURLError(
                f"{mask_url(url)}: a SQLite URL takes no ?query; a '?' in the file's path is written %3F"
            )
        return str(parsed.set(drivername="sqlite+aiosqlite"))
    if backend in {"postgresql", "postgres"}:
        return parsed.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise DatabaseURLError(f"unsupported database URL scheme {parsed.drivername!r}: use sqlite or postgresql")


# How long closing a PostgreSQL connection may wait for the server to let it go. A polite close
# (asyncpg's, and SQLAlchemy's dispose) waits for the server's answer with no bound, and a server
# that stops answering without closing its connections never gives it: a process sent SIGTERM
# then ran until the database came back. A server that answers does within milliseconds.
CLOSE_TIMEOUT_SECONDS = 2.0

# How many PostgreSQL connections this process has dropped without the server's answer (their
# close timed out), for the shutdown's account of what it cut short.
_dropped = [0]


def connections_dropped() -> int:
    return _dropped[0]


def count_dropped(n: int) -> None:
    _dropped[0] += n


async def _close_or_drop(conn: asyncpg.Connection, timeout: float) -> bool:
    """Close ``conn``; past ``timeout``, drop it (asyncpg aborts the socket). True if dropped."""
    try:
        await conn.close(timeout=timeout)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return True
    return False


async def close_connections(conns: Iterable[asyncpg.Connection], timeout: float) -> int:
    """Close these connections at once, each given ``timeout``; return how many were dropped."""
    dropped = sum(await asyncio.gather(*(_close_or_drop(c, timeout) for c in conns if not c.is_closed())))
    count_dropped(dropped)
    return dropped


@dataclass
class Engines:
    """A write engine and a read engine (the same engine on PostgreSQL)."""

    write: AsyncEngine
    read: AsyncEngine
    dialect: str
    command_timeout: float | None = None  # PostgreSQL: how long one statement may take
    pool_size: int = 10  # PostgreSQL: connections in each of the process's two pools
    # PostgreSQL: every driver connection the engine opened, for dispose() to close them itself.
    connections: weakref.WeakSet[asyncpg.Connection] = field(default_factory=weakref.WeakSet, repr=False)

    async def dispose(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> int:
        """Close the engines' connections; return how many were dropped without the server's
        answer (PostgreSQL, after ``timeout``)."""
        if self.dialect != "postgresql":
            await self.write.dispose()
            if self.read is not self.write:
                await self.read.dispose()
            return 0
        # SQLAlchemy's dispose closes each connection with no bound, and cancelling it logs a
        # traceback per connection: its pool is let go, and the connections closed here.
        await self.write.dispose(close=False)
        return await close_connections(list(self.connections), timeout)


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(
        url,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=120,
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours to issue.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        set_pragmas(cur.execute, SQLITE_BUSY_TIMEOUT_MS)
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


# How long a statement, or a connection attempt, may take on PostgreSQL before it fails (and a
# request gets its 503). Without a bound, a server that stops answering without closing its
# connections (a frozen host, a network partition) held every request until TCP gave up.
DATABASE_TIMEOUT_SECONDS = 30.0


# Connections in each pool of a process on PostgreSQL (INGESTLAYER_DATABASE_POOL_SIZE): the
# engine's (management, routing's reads) may open as many again for a burst, and the hot path's
# (ingest, leases, attempts) as many, so a process holds at most 3 x this + 1 (LISTEN).
DEFAULT_POOL_SIZE = 10


def create_engines(
    url: str, command_timeout: float = DATABASE_TIMEOUT_SECONDS, pool_size: int = DEFAULT_POOL_SIZE
) -> Engines:
    aurl = async_url(url)
    if aurl.startswith("sqlite"):
        write = _sqlite_engine(aurl, immediate=True, pool_size=1)
        read = _sqlite_engine(aurl, immediate=False, pool_size=4)
        return Engines(write=write, read=read, dialect="sqlite")
    engine = create_async_engine(
        aurl,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_timeout=command_timeout,
        connect_args={"command_timeout": command_timeout, "timeout": command_timeout},
    )
    engines = Engines(
        write=engine, read=engine, dialect="postgresql", command_timeout=command_timeout, pool_size=pool_size
    )

    @event.listens_for(engine.sync_engine, "connect")
    def _track(_dbapi_conn: Any, record: Any) -> None:
        engines.connections.add(record.driver_connection)

    event.listen(engine.sync_engine, "handle_error", unavailable_is_operational)
    return engines


def unavailable_is_operational(context: ExceptionContext) -> sqlalchemy.exc.DBAPIError | None:
    """A PostgreSQL that cannot serve now (a full disk, too many connections, a statement
    timeout, a read-only failover, a database not accepting connections: unavailable.py's
    SQLSTATEs) as an OperationalError, as SQLite's are: SQLAlchemy raises them as a plain
    DBAPIError, which every handler of an unreachable database passed over (management routes
    answered 500, the worker dropped the outcomes it could not record, each ingest group logged
    a traceback)."""
    error = context.sqlalchemy_exception
    if (
        isinstance(error, sqlalchemy.exc.DBAPIError)
        and error.orig is not None
        and not isinstance(error, sqlalchemy.exc.OperationalError)
        and (
            is_unavailable_sqlstate(getattr(error.orig, "sqlstate", None))
            or storage_condition(error) == "disk_full"
        )
    ):
        return sqlalchemy.exc.OperationalError(
            error.statement, error.params, error.orig, hide_parameters=True
        )
    return None
