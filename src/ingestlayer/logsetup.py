"""Logging: one line per record, ``key=value`` fields, never secrets (nothing logs them)."""

from __future__ import annotations

import logging
import sys

# Libraries log from INFO up whatever the level: at DEBUG some write every statement with its
# parameters (aiosqlite: destination configs, endpoint URLs, event payloads), which are ours to
# keep out of logs. DEBUG is for ingestlayer's own loggers.
LIBRARY_FLOOR = logging.INFO


class OneLineFormatter(logging.Formatter):
    """A record's line with its line breaks written as ``\\n``: messages quote text that others
    control (a receiver's error answer, a rejected header), which could otherwise start a line
    that reads as a record of its own. A traceback (ours) still follows on its own lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        if "\n" in line or "\r" in line:
            line = line.replace("\r", "\\r").replace("\n", "\\n")
        return line


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    wanted = logging.getLevelNamesMapping()[level.upper()]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(wanted, LIBRARY_FLOOR))
    logging.getLogger("ingestlayer").setLevel(wanted)
    # Per-request access logs cost more than the request at ingest rates.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Alembic lists its plugins at every start; the migration steps themselves stay logged.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
