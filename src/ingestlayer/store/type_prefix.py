"""A listing's ``invoice.*`` filter as SQL: the event types starting with a prefix, matched as
exactly on SQLite as on PostgreSQL (and as ``source.match`` matches them)."""

from __future__ import annotations

from typing import Any


def starts_with(dialect: str, column: Any, prefix: str) -> list[Any]:
    """The conditions for ``column`` starting with ``prefix`` (not empty), case-sensitively."""
    if dialect == "sqlite":
        # SQLite's LIKE is case-insensitive (invoice.* listed Invoice.paid, which PostgreSQL
        # does not) and skips the index; a range on the BINARY collation is exact and uses
        # (project_id, type, id).
        last = prefix[-1]
        if ord(last) < 0x10FFFF:
            return [column >= prefix, column < prefix[:-1] + chr(ord(last) + 1)]
    return [column.startswith(prefix, autoescape=True)]
