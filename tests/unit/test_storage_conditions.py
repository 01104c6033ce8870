"""Which database errors are named as a full disk or a file that cannot be written."""

from __future__ import annotations

import sqlite3

import sqlalchemy.exc

from ingestlayer.store.conditions import storage_condition


def test_conditions_are_told_by_the_drivers_words() -> None:
    pg = Exception('could not extend file "base/16384/16400": No space left on device')
    assert storage_condition(sqlalchemy.exc.OperationalError("INSERT", (), pg)) == "disk_full"
    assert storage_condition(sqlite3.OperationalError("database or disk is full")) == "disk_full"
    assert storage_condition(sqlite3.OperationalError("attempt to write a readonly database")) == "read_only"
    # A PostgreSQL standby (a failover under way) is an outage, not a file's permissions: it was
    # named "the database file has become read-only", and the CLI blamed the file's directory.
    standby = Exception("cannot execute INSERT in a read-only transaction")
    assert storage_condition(sqlalchemy.exc.InternalError("INSERT", (), standby)) is None
    assert storage_condition(sqlite3.OperationalError("database is locked")) is None
