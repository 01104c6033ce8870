"""Run Alembic migrations programmatically (``ingestlayer migrate`` and server start-up)."""

from __future__ import annotations

import contextlib
import sqlite3
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    # Alembic is imported when it is used: it is a fifth of a CLI command's start-up.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Kept out of the .ini so a password in the URL never lands in a file.
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(
    database_url: str,
    revision: str = "head",
    on_step: Callable[[str, str], None] | None = None,
    *,
    connect_timeout: float | None = None,
) -> None:
    """Migrate to ``revision``; ``on_step(revision, description)`` is called after each step.
    ``connect_timeout`` bounds connecting to PostgreSQL (not the migrations, which may be long)."""
    from alembic import command

    cfg = alembic_config(database_url)
    cfg.attributes["on_step"] = on_step
    cfg.attributes["connect_timeout"] = connect_timeout
    command.upgrade(cfg, revision)


def current_head() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def head_revision() -> str:
    """The newest revision, from the migrations' file names (``0010_….py``): they form one chain
    numbered in order (a test holds this to Alembic's own answer, :func:`current_head`)."""
    return max(
        p.name.split("_", 1)[0] for p in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py")
    )


def sqlite_schema_is_current(database_url: str) -> bool:
    """Whether ``database_url`` is a SQLite file already at :func:`head_revision`, read without
    Alembic: importing it and reading its scripts took a third of a second of every command."""
    from sqlalchemy.engine import make_url

    try:
        url = make_url(database_url)
    except Exception:  # unreadable: Alembic's path says why
        return False
    path = url.database
    if url.get_backend_name() != "sqlite" or not path or path == ":memory:" or url.query:
        return False
    try:  # read-only: a file that is not there is not created here
        uri = f"file:{urllib.parse.quote(path)}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1.0)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return False
    return row is not None and row[0] == head_revision()
