"""Noticing that the SQLite file was removed or replaced under a running server.

SQLite keeps writing to the file it opened, wherever its name now points: after ``rm`` of the
database (a clean-up script, a volume remounted, ``rm -rf`` of the data directory) every event
was still answered ``202``, stored in a file no directory names any more, which the kernel frees
when the process exits; a restart then created a new, empty database at the path. In WAL mode
SQLite makes no such check of its own (its ``SQLITE_READONLY_DBMOVED`` is for rollback
journals).

:class:`FileWatch` compares what the path names now with the file opened, as often as the
checkpoint is asked for. Once they differ, writes are refused until the server restarts,
``/readyz`` says why, and the log says where the data still is (the files this process holds
open), once. Not sooner, even if the files come back: connections opened meanwhile (the
management API's pool, the checkpoint's) hold the empty files SQLite created at the path. And
``/healthz`` stays ``200``: a restart before the files are back would free them, and with them
what they hold.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from ingestlayer.store.conditions import FILE_MOVED_WORDS

log = logging.getLogger("ingestlayer.store")

UNKNOWN = (-1, -1)  # _identity's answer when the path could not be looked at


# What os.stat raises for a path that names nothing: removed (or its directory with it).
_GONE = (errno.ENOENT, errno.ENOTDIR)


def _identity(path: str) -> tuple[int, int] | None:
    """The file ``path`` names now (None: no file), or :data:`UNKNOWN` when it cannot be told (a
    directory without search permission for a moment, a network file system's error): writes are
    not refused for that, only for a path that names another file or none."""
    try:
        st = os.stat(path)
    except OSError as exc:
        return None if exc.errno in _GONE else UNKNOWN
    return st.st_dev, st.st_ino


def _held_open() -> dict[tuple[int, int], tuple[str, int]]:
    """The files this process holds open (Linux): where each can be read from while it runs, and
    how many names it still has (0: removed)."""
    found: dict[tuple[int, int], tuple[str, int]] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError, ValueError):
                st = os.fstat(int(name))
                found.setdefault((st.st_dev, st.st_ino), (f"/proc/{os.getpid()}/fd/{name}", st.st_nlink))
    return found


class FileWatch:
    """The database file and its log, as opened: ``check()`` looks whether the paths still name
    them (two ``stat`` calls)."""

    def __init__(self, path: str, wal_path: str | None = None) -> None:
        # The log exists by now: the connection has read the file in WAL mode. Without one (a
        # file system without WAL) only the file is watched.
        paths = [path, wal_path or path + "-wal"]
        self._opened = [(p, i) for p in paths if (i := _identity(p)) not in (None, UNKNOWN)]
        self.problem: str | None = None  # why writes are refused, once a file was not at its path

    def check(self) -> None:
        """Look again, until a file has gone; log it then."""
        if self.problem is not None:
            return
        now_named = [(p, opened, _identity(p)) for p, opened in self._opened]
        moved = [(p, now) for p, opened, now in now_named if now not in (opened, UNKNOWN)]
        if not moved:
            return
        held = _held_open()
        path, now = moved[0]
        opened = dict(self._opened)[path]
        # How many names the file opened still has, if this process can tell (Linux).
        names = held[opened][1] if opened in held else None
        if names == 0:
            how = "removed"  # even if the path names a file again: a read or a probe creates one
        elif now is None:
            how = "moved away" if names else "removed or moved away"
        else:
            how = "replaced by another file"
        self.problem = f"{FILE_MOVED_WORDS} while the server ran ({path} was {how})"
        copies = [held[i][0] for _, i in self._opened if i in held]
        if how == "removed" and copies:
            remedy = (
                f"The data is only in the files this process still holds open ({', '.join(copies)}): "
                "copy them elsewhere now, then stop the server, put them back as the database and "
                "its -wal (removing any -shm left there), and start it again; they are lost once "
                "the server stops"
            )
        else:
            remedy = "Stop the server, put the files back where they were, and start it again"
        log.error(
            "%s was %s while the server ran: nothing more is stored until the server restarts. %s",
            path,
            how,
            remedy,
        )

    def error(self) -> sqlite3.OperationalError:
        assert self.problem is not None
        return sqlite3.OperationalError(f"{self.problem}; nothing is stored until the server restarts")


def refuse_engine_writes(engine: AsyncEngine, watch: FileWatch) -> None:
    """The management API's writes (keys, endpoints, configuration) go through SQLAlchemy's
    connection, beside the loop's: refused as the loop's are, before BEGIN is sent."""

    def _refuse(_conn: Any) -> None:
        if watch.problem is not None:
            raise watch.error()

    # insert: ahead of the listener that sends BEGIN IMMEDIATE (store/db.py), so no transaction
    # is left open on the connection.
    event.listen(engine.sync_engine, "begin", _refuse, insert=True)
