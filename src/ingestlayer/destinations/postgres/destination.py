"""``postgres``: insert one row per delivery into the user's table (asyncpg), idempotently.

A small connection pool lives on the destination instance (the dispatcher keeps one instance per
destination version): created on first use with the DSN resolved then, replaced when the secret
changes, idle connections closed after a minute, and closed by :meth:`Postgres.close`. Every new
connection first checks its host against the private-address policy.

Outcomes: a row inserted, or the delivery id already there (a retry or replay) → delivered;
connection refused, too many connections, serialization failures, deadlocks, a server shutting
down, timeouts → retried; a table or column that does not exist, permission denied, a bad DSN,
failed authentication, values the column's type rejects, a unique key on delivery_id that is
DEFERRABLE → dead at once, with PostgreSQL's message. The DSN and its password never appear in
an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, ClassVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
from pydantic import BaseModel

from ingestlayer.delivery.egress import EgressDenied, EgressPolicy
from ingestlayer.destinations.base import Outcome, SendContext, SendRequest
from ingestlayer.destinations.postgres.config import DELIVERY_ID, PostgresConfig, quote_identifier
from ingestlayer.destinations.postgres.sql import (
    TABLE_INFO,
    TableInfo,
    compile_templates,
    create_table_sql,
    insert_columns,
    insert_sql,
    row_values,
)
from ingestlayer.destinations.shared import check_host, scrub

DEFAULT_PORT = 5432
IDLE_SECONDS = 60.0
# SQLSTATE classes worth retrying: connection exception, transaction rollback (serialization,
# deadlock), insufficient resources (too many connections), object not in prerequisite state
# (lock not available), operator intervention (shutdown, cannot connect now, statement
# timeout), system error, internal error.
RETRY_CLASSES = frozenset({"08", "40", "53", "55", "57", "58", "XX"})
RETRY_CODES = frozenset({"25006"})  # read-only transaction: a failover in progress
# Errors after which the table may have changed: look at it again next time.
SCHEMA_CLASSES = frozenset({"42"})
# "ON CONFLICT does not support deferrable unique constraints/exclusion constraints as arbiters":
# class 55 (object not in prerequisite state) like a lock not available, but no retry can pass it.
DEFERRABLE_ARBITER = "55000"


class DsnError(ValueError):
    """The DSN cannot be used; the message never contains it."""


def verifies_hostname(dsn: str) -> bool:
    """Whether the connection checks the server's certificate against the host name."""
    query = parse_qs(urlsplit(dsn).query)
    mode = (query.get("sslmode") or [os.environ.get("PGSSLMODE", "")])[-1]
    return mode == "verify-full"


# DSN options that read files on the worker: a service's entry (host, user, client
# certificate), a password file.
WORKER_FILE_OPTIONS = ("service", "passfile")


def dsn_hosts(dsn: str) -> list[tuple[str, int]]:
    """The (host, port) pairs a DSN names; ``("", 5432)`` for the driver's local default."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise DsnError("it must be a URI starting with postgresql:// (postgresql://user:password@host/db)")
    hostlist = parts.netloc.rpartition("@")[2]
    query = parse_qs(parts.query)
    for option in WORKER_FILE_OPTIONS:
        if option in query:
            # They name files on the worker, its own connection settings and credentials among
            # them, for a host the project chooses.
            raise DsnError(f"the option {option}= is not taken: it reads the worker's own files")
    items = [h for h in hostlist.split(",") if h]
    for extra in query.get("host", []):
        items += [h for h in extra.split(",") if h]
    ports = [p for value in query.get("port", []) for p in value.split(",") if p]
    out: list[tuple[str, int]] = []
    for i, item in enumerate(items or [""]):
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_text = rest.removeprefix(":")
        elif item.count(":") == 1:
            host, _, port_text = item.partition(":")
        else:
            host, port_text = item, ""
        port_text = port_text or (ports[i] if i < len(ports) else ports[0] if ports else "")
        try:
            port = int(port_text) if port_text else DEFAULT_PORT
        except ValueError:
            raise DsnError("its port is not a number") from None
        if not 0 < port < 65536:
            raise DsnError("its port is out of range")
        out.append((unquote(host), port))
    return out


def dsn_password(dsn: str) -> str:
    """The password the DSN itself gives (as the driver reads it: the userinfo's, else the
    ``password`` query option), or "" for none.

    Passed to the driver explicitly: given none, it takes the worker's own (PGPASSWORD, a line of
    ~/.pgpass or PGPASSFILE, a pg_service.conf entry), and would send it to whatever host the
    project's DSN names: the password of the server's own database, say."""
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    given = unquote(userinfo.partition(":")[2])
    if given:
        return given
    return (parse_qs(parts.query).get("password") or [""])[-1]


def dsn_secrets(dsn: str) -> list[str]:
    """What must never be shown: the DSN, and its password as written and decoded."""
    out = [dsn]
    parts = urlsplit(dsn)
    userinfo = parts.netloc.rpartition("@")[0]
    if ":" in userinfo:
        raw = userinfo.partition(":")[2]
        out += [raw, unquote(raw)]
    for value in parse_qs(parts.query).get("password", []):
        out += [value, unquote(value)]
    return [s for s in out if s]


def _pg_message(exc: Any) -> str:
    text = f"PostgreSQL {exc.sqlstate}: {getattr(exc, 'message', None) or exc}"
    detail = getattr(exc, "detail", None)
    hint = getattr(exc, "hint", None)
    if detail:
        text += f" ({detail[:300]})"
    if hint:
        text += f" Hint: {hint[:300]}"
    return text


def classify_error(exc: BaseException, cfg: PostgresConfig) -> Outcome:
    """What a failed insert means for the delivery (the message is scrubbed by the caller)."""
    if isinstance(exc, EgressDenied):
        return Outcome(ok=False, error=str(exc), permanent=True)
    if isinstance(exc, DsnError):
        return Outcome(ok=False, error=f"the DSN in {cfg.dsn} cannot be used: {exc}", permanent=True)
    if isinstance(exc, asyncpg.PostgresError):
        state = str(exc.sqlstate or "")
        retry = state[:2] in RETRY_CLASSES or state in RETRY_CODES
        message = _pg_message(exc)
        if state == "42P10":  # ON CONFLICT without a matching unique index
            message += (
                f" ({cfg.table} needs a unique index on delivery_id: "
                f"ALTER TABLE {cfg.table} ADD UNIQUE (delivery_id))"
            )
        elif deferrable_arbiter(exc):
            # The table changed after it was checked (the check refuses such a key up front).
            name = getattr(exc, "constraint_name", None)
            quoted = quote_identifier(name) if name else "<its name>"
            message += f" ({cfg.table}: {_deferrable_fix(cfg, (quoted,), keep_one=False)})"
            retry = False
        return Outcome(ok=False, error=message, permanent=not retry)
    if isinstance(exc, TimeoutError):
        return Outcome(ok=False, error=f"timed out after {cfg.timeout:g}s")
    if isinstance(exc, (asyncpg.exceptions.ClientConfigurationError, ValueError)):
        return Outcome(ok=False, error=f"invalid connection settings in {cfg.dsn}: {exc}", permanent=True)
    if isinstance(exc, asyncpg.InterfaceError):  # e.g. the connection was lost mid-query
        return Outcome(ok=False, error=f"connection error: {exc}")
    if isinstance(exc, OSError):
        return Outcome(ok=False, error=f"connection error: {exc}")
    return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}")


def deferrable_arbiter(exc: BaseException) -> bool:
    """Whether the insert failed because a unique key on delivery_id is DEFERRABLE."""
    return (
        isinstance(exc, asyncpg.PostgresError)
        and exc.sqlstate == DEFERRABLE_ARBITER
        and "ON CONFLICT" in str(getattr(exc, "message", None) or exc)
    )


def _deferrable_fix(cfg: PostgresConfig, quoted_names: tuple[str, ...], *, keep_one: bool) -> str:
    """How to replace deferrable unique keys on delivery_id (``keep_one``: a non-deferrable
    unique index is already there, so dropping them is enough)."""
    drops = ", ".join(f"DROP CONSTRAINT {n}" for n in quoted_names)
    add = "" if keep_one else ", ADD UNIQUE (delivery_id)"
    return (
        "INSERT … ON CONFLICT (delivery_id) cannot use a DEFERRABLE unique key, and PostgreSQL "
        "refuses every insert while one is on delivery_id, even beside a non-deferrable one: "
        "the unique index on delivery_id must be non-deferrable, and no deferrable one may remain. "
        f"Replace it: ALTER TABLE {cfg.table} {drops}{add}"
    )


def table_problem(cfg: PostgresConfig, info: TableInfo) -> str | None:
    """Why inserting into this table cannot work, or None."""
    if not info.columns:
        return f"table {cfg.table} does not exist: create it, or set create_table: true"
    why = (
        "ingestlayer inserts idempotently on the delivery id (INSERT … ON CONFLICT (delivery_id) "
        "DO NOTHING), so that a retried or replayed delivery never makes a second row"
    )
    if DELIVERY_ID not in info.columns:
        return (
            f"table {cfg.table} has no delivery_id column; {why}. Add one: "
            f"ALTER TABLE {cfg.table} ADD COLUMN delivery_id text UNIQUE"
        )
    if info.delivery_id_deferrable:
        names = info.delivery_id_deferrable
        return (
            f"table {cfg.table} has a DEFERRABLE unique key on delivery_id "
            f"({', '.join(names)}); {why}. "
            + _deferrable_fix(cfg, tuple(map(quote_identifier, names)), keep_one=info.delivery_id_unique)
        )
    if not info.delivery_id_unique:
        return (
            f"table {cfg.table} has a delivery_id column but no unique index on it alone; {why}. "
            f"Add one: ALTER TABLE {cfg.table} ADD UNIQUE (delivery_id)"
        )
    return None


class Postgres:
    kind: ClassVar[str] = "postgres"
    config_model: ClassVar[type[BaseModel]] = PostgresConfig

    def __init__(self, config: PostgresConfig) -> None:
        self.config = config
        self._templates = compile_templates(config)
        self._pool: Any = None
        self._pool_dsn: str | None = None
        self._info: TableInfo | None = None
        self._lock: asyncio.Lock | None = None
        self._table_lock: asyncio.Lock | None = None
        self._closing: set[asyncio.Task[None]] = set()

    def target(self) -> str:
        return f"postgres table {self.config.table}"

    async def close(self) -> None:
        """Close the pool (waits briefly for connections in use, then terminates them)."""
        pool, self._pool, self._pool_dsn = self._pool, None, None
        if pool is not None:
            await _close_pool(pool)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _get_pool(self, dsn: str, egress: EgressPolicy) -> Any:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._pool is not None and self._pool_dsn == dsn:
                return self._pool
            hosts = dsn_hosts(dsn)
            pin = not egress.allow_private and not verifies_hostname(dsn)
            password = dsn_password(dsn)

            async def connect(*args: Any, **kwargs: Any) -> Any:
                # Every new connection, not just the first: a name may resolve elsewhere later.
                # The driver connects to the addresses checked, not to the name: resolved again,
                # a name could then answer with a private address (DNS rebinding). With
                # sslmode=verify-full it must use the name, which the certificate has to match.
                pinned: list[tuple[str, int]] = []
                for host, port in hosts:
                    pinned.extend((address, port) for address in await check_host(egress, host, port))
                if pin:
                    kwargs["host"] = [address for address, _ in pinned]
                    kwargs["port"] = [port for _, port in pinned]
                return await asyncpg.connect(*args, password=password, **kwargs)

            old = self._pool
            self._pool = await asyncpg.create_pool(
                dsn,
                min_size=0,
                max_size=self.config.pool_size,
                max_inactive_connection_lifetime=IDLE_SECONDS,
                connect=connect,
                timeout=self.config.timeout,
                command_timeout=self.config.timeout,
                server_settings={"application_name": "ingestlayer"},
            )
            self._pool_dsn = dsn
            self._info = None
            if old is not None:  # the secret changed: let the old pool finish in the background
                task = asyncio.create_task(_close_pool(old))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            return self._pool

    async def _table_info(self, conn: Any) -> TableInfo:
        if self._info is not None:
            return self._info
        if self._table_lock is None:
            self._table_lock = asyncio.Lock()
        async with self._table_lock:  # this instance's first sends look (and create) once
            if self._info is not None:
                return self._info
            info = await _read_table_info(conn, self.config.quoted_table())
            if not info.columns and self.config.create_table:
                info = await self._create_table(conn)
            if table_problem(self.config, info) is None:
                self._info = info
            return info

    async def _create_table(self, conn: Any) -> TableInfo:
        try:
            await conn.execute(create_table_sql(self.config))
        except asyncpg.PostgresError:
            # Another worker created it at the same moment. PostgreSQL tells the loser in more
            # than one way (a unique violation in its catalog, "relation already exists",
            # "type already exists"), so look rather than parse: if the table is there now,
            # theirs is used; if not, the error was about something else.
            info = await _read_table_info(conn, self.config.quoted_table())
            if not info.columns:
                raise
            return info
        return await _read_table_info(conn, self.config.quoted_table())

    async def send(self, request: SendRequest, ctx: SendContext) -> Outcome:
        cfg = self.config
        try:
            dsn = await ctx.resolve_secret(request.project_id, cfg.dsn)
        except LookupError as exc:
            return Outcome(ok=False, error=str(exc))
        secrets = dsn_secrets(dsn)
        try:
            async with asyncio.timeout(cfg.timeout):
                pool = await self._get_pool(dsn, ctx.egress)
                async with pool.acquire() as conn:
                    info = await self._table_info(conn)
                    problem = table_problem(cfg, info)
                    if problem is not None:
                        return Outcome(ok=False, error=problem, permanent=True)
                    columns = insert_columns(cfg, info.columns)
                    values = row_values(
                        cfg, self._templates, columns, delivery_id=request.delivery_id, event=request.event
                    )
                    status = await conn.execute(insert_sql(cfg, columns), values.decode())
        except Exception as exc:
            outcome = classify_error(exc, cfg)
            if deferrable_arbiter(exc) or (
                isinstance(exc, asyncpg.PostgresError) and str(exc.sqlstate or "")[:2] in SCHEMA_CLASSES
            ):
                self._info = None  # the user may fix the table and replay
            outcome.error = scrub(outcome.error, secrets)
            return outcome
        if str(status).rsplit(" ", 1)[-1] == "1":
            return Outcome(ok=True, response_excerpt=f"INSERT 1 row into {cfg.table}")
        return Outcome(
            ok=True,
            response_excerpt=f"delivery {request.delivery_id} is already in {cfg.table}: no second row",
        )


async def _read_table_info(conn: Any, quoted_table: str) -> TableInfo:
    rows = await conn.fetch(TABLE_INFO, quoted_table)
    return TableInfo(
        columns=frozenset(r["name"] for r in rows),
        delivery_id_unique=any(r["name"] == DELIVERY_ID and r["is_unique"] for r in rows),
        delivery_id_deferrable=next(
            (tuple(r["deferrable_keys"]) for r in rows if r["name"] == DELIVERY_ID), ()
        ),
    )


async def _close_pool(pool: Any) -> None:
    try:
        await asyncio.wait_for(pool.close(), 5)
    except Exception:
        with contextlib.suppress(Exception):
            pool.terminate()
