"""Configurations read back from the database rather than sent by a user now.

What is stored was checked when it was applied, possibly by an earlier version with looser
checks. Refusing it when it is read again would leave its pipeline out of routing (its events
undelivered) or its destination failing, until someone applied it again; so a check added later
lets a stored value through inside :func:`stored_configuration`, or keeps it on a short leash
(a regular expression's tightest window), and applies in full to everything sent from then on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

_STORED: ContextVar[bool] = ContextVar("stored_configuration", default=False)


@contextlib.contextmanager
def stored_configuration() -> Iterator[None]:
    """Build routing or delivery from configurations already stored."""
    token = _STORED.set(True)
    try:
        yield
    finally:
        _STORED.reset(token)


def reading_stored() -> bool:
    """Whether the configuration being checked was stored before (see the module's text)."""
    return _STORED.get()
