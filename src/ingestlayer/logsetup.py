"""Logging: one line per record, ``key=value`` fields, never secrets (nothing logs them)."""

from __future__ import annotations

import logging
import sys

# Libraries log from INFO up whatever the level: at DEBUG some write every statement with its
# parameters (aiosqlite: destination configs, endpoint URLs, event payloads), which are ours to
# keep out of logs. DEBUG is for ingestlayer's own loggers.
LIBRARY_FLOOR = logging.INFO


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    wanted = logging.getLevelNamesMapping()[level.upper()]
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(wanted, LIBRARY_FLOOR))
    logging.getLogger("ingestlayer").setLevel(wanted)
    # Per-request access logs cost more than the request at ingest rates.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Alembic lists its plugins at every start; the migration steps themselves stay logged.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
