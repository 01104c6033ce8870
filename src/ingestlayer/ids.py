"""Sortable, prefixed identifiers (``evt_01J…``): a ULID keeps ids in time order, so the
primary key doubles as the time index for keyset pagination."""

from __future__ import annotations

import secrets

from ulid import ULID


def new_id(prefix: str) -> str:
    return f"{prefix}_{ULID()}"


def new_key(kind: str) -> str:
    """A new API key: ``il_ingest_…`` or ``il_admin_…`` with 32 bytes of randomness."""
    return f"il_{kind}_{secrets.token_urlsafe(32)}"
