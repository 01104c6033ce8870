"""Run Alembic migrations programmatically (``ingestlayer migrate`` and server start-up)."""

from __future__ import annotations

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
