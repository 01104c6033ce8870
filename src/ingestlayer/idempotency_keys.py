"""Idempotency keys as stored: those senders choose, and those of signed webhooks, in two spaces
that never meet.

A signed webhook's key is its source's name and the sender's own id for it (Stripe's event id,
GitHub's delivery id). Stored as ``stripe:evt_1``, it could be taken first by an event sent with
an ingest key and the idempotency key ``stripe:evt_1``: the genuine, verified webhook was then
answered ``200 duplicate`` (so its sender never retried) and only the forged event was kept. The
least trusted key could suppress a verified sender's events. Webhook keys therefore begin with a
control character, ``INGRESS_MARK``, and keys sent through the API or the CLI may hold none.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

MAX_KEY_LENGTH = 255
INGRESS_MARK = "\x1f"  # the ASCII unit separator: no key sent to the API holds it
_CONTROL = re.compile("[\x00-\x1f\x7f]")
KEY_RULE = "a string of 1 to 255 characters, without control characters"


def acceptable(key: Any) -> bool:
    """Whether a sender may use ``key``. Control characters are refused: NUL cannot be stored in
    PostgreSQL text (one such key failed its whole group commit), and the rest are reserved."""
    return type(key) is str and 0 < len(key) <= MAX_KEY_LENGTH and _CONTROL.search(key) is None


def ingress_key(source_name: str, value: Any) -> str | None:
    """The stored key of a signed webhook: per source, so two senders' ids never collide, and
    marked, so no key sent to the API is the same. An empty id is no id (else every event without
    one would be taken for the first); a long one is hashed, not cut, so ids that differ only at
    the end stay distinct."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    # NUL dropped: PostgreSQL cannot store it.
    key = f"{source_name}:{value}".replace("\x00", "")
    if len(key) >= MAX_KEY_LENGTH:
        # From 255 characters, as the mark then takes the room of the last one: cut, ids that
        # differed only there were taken for one (the second event answered as a duplicate).
        digest = hashlib.sha256(key.encode()).hexdigest()
        key = key[: MAX_KEY_LENGTH - len(digest) - 1] + "~" + digest
    # Cut to fit after the mark (the digest's last digit): migration 0009 marked the keys stored
    # before the same way, so longer ids redelivered after it are still recognised.
    return (INGRESS_MARK + key)[:MAX_KEY_LENGTH]


def shown(key: str | None) -> str | None:
    """The key as the API and the dashboard show it: without the mark."""
    return key.removeprefix(INGRESS_MARK) if key is not None else None
