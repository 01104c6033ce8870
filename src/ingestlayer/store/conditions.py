"""The storage conditions a database error is named by, wherever one is reported: the disk is
full, the file cannot be written, SQLite's log could not be synced (until a restart), or its
files were removed or replaced under the server (until a restart). Told
apart by the words (SQLite's "database or disk is full" and "attempt to write a readonly
database", PostgreSQL's "No space left on device", our own for the log's sync), since neither
driver gives them an error class of their own. Kept free of the database libraries: the CLI
reports errors before it has loaded them.
"""

from __future__ import annotations

from typing import Literal

Condition = Literal["disk_full", "read_only", "sync_failed", "file_moved"]

# The words sqlite_file_watch's refusals begin with, by which they are told apart here.
FILE_MOVED_WORDS = "the database file was removed or replaced"

# A full disk does not clear in a second: clients are asked to wait this long before trying again.
DISK_FULL_RETRY_SECONDS = 30


def storage_condition(exc: BaseException) -> Condition | None:
    """``exc`` (or the driver's error SQLAlchemy wraps in it) says the disk is full or the database
    cannot be written; None for anything else."""
    text = str(getattr(exc, "orig", None) or exc).lower()
    if "disk is full" in text or "no space left on device" in text:
        return "disk_full"
    # SQLite's words only: PostgreSQL's "read-only transaction" (a standby, a failover under way)
    # is an outage like any other, not a file's permissions.
    if "readonly database" in text:
        return "read_only"
    # Ours (sqlite_durability.sync_failed): a failed fdatasync of SQLite's log, for good.
    if "could not sync the database log" in text:
        return "sync_failed"
    # Ours too (sqlite_file_watch): the file SQLite writes to is no longer at its path.
    if FILE_MOVED_WORDS in text:
        return "file_moved"
    return None
