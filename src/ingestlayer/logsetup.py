"""Logging: one line per record, ``key=value`` fields, never secrets (nothing logs them)."""

from __future__ import annotations

import logging
import sys


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Per-request access logs cost more than the request at ingest rates.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # Alembic lists its plugins at every start; the migration steps themselves stay logged.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
