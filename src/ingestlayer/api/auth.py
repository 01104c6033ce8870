"""API key authentication, with a short-lived in-process cache so the hot path rarely queries.

A revoked key stops working at once in the process that revoked it and, on PostgreSQL, in every
other one (told at commit: Runtime._forget_changed); otherwise within ``POSITIVE_TTL`` seconds.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from ingestlayer.api.errors import ApiError
from ingestlayer.store.store import Store

POSITIVE_TTL = 10.0
NEGATIVE_TTL = 2.0
MAX_ENTRIES = 10_000


@dataclass(frozen=True, slots=True)
class Principal:
    project_id: str
    kind: str  # ingest | admin


class KeyCache:
    """Keys resolved recently. When an entry expires under load, the requests that find it
    expired share one database lookup instead of each making their own (64 connections with
    one key made 64 queries every ``POSITIVE_TTL`` seconds, stalling ingest each time)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        # Keys that resolved, and strings that did not, apart: a flood of wrong keys (anyone can
        # send them) fills and clears only the second, never making every real key's requests
        # look it up again.
        self._known: dict[str, tuple[float, Principal | None]] = {}
        self._unknown: dict[str, tuple[float, Principal | None]] = {}
        self._pending: dict[str, asyncio.Future[Principal | None]] = {}
        self._generation = 0  # bumped by forget(): a lookup begun before must not be cached

    def cached(self, key: str) -> Principal | None:
        """The principal of a key resolved recently, without waiting; None if not known now."""
        hit = self._known.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    async def lookup(self, key: str) -> Principal | None:
        hit = self._known.get(key) or self._unknown.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        loop = asyncio.get_running_loop()
        pending = self._pending.get(key)
        if pending is not None and pending.get_loop() is loop:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Principal | None] = loop.create_future()
        self._pending[key] = fut
        generation = self._generation
        try:
            found = await self._store.resolve_key(key)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved here: waiters, if any, get it too
            raise
        finally:
            if self._pending.get(key) is fut:
                del self._pending[key]
        principal = Principal(found[0], found[1]) if found else None
        if generation == self._generation:
            entries = self._known if principal else self._unknown
            if len(entries) >= MAX_ENTRIES:
                entries.clear()  # bounded: a flood of bad keys cannot grow memory
            entries[key] = (time.monotonic() + (POSITIVE_TTL if principal else NEGATIVE_TTL), principal)
        fut.set_result(principal)
        return principal

    def forget(self, project_id: str | None = None) -> None:
        """Drop what is cached of ``project_id``'s keys (a key was revoked), or of every project's.
        Only that project's keys are looked up again: the others' requests, busy ones included,
        keep their cached keys. Lookups in flight are not cached when they end."""
        if project_id is None:
            self._known.clear()
            self._unknown.clear()
        else:
            theirs = [k for k, (_, p) in self._known.items() if p is not None and p.project_id == project_id]
            for key in theirs:
                del self._known[key]
        self._pending.clear()
        self._generation += 1


def bearer_token(header: str | None) -> str:
    if not header:
        raise ApiError(401, "missing Authorization header: send `Authorization: Bearer il_…`")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "the Authorization header must be `Bearer il_…`")
    return token.strip()


async def authenticate(cache: KeyCache, header: str | None, *, admin: bool) -> Principal:
    token = bearer_token(header)
    if not token.startswith(("il_ingest_", "il_admin_")):
        raise ApiError(401, "that is not an ingestlayer API key")
    principal = await cache.lookup(token)
    if principal is None:
        raise ApiError(401, "invalid or revoked API key")
    if admin and principal.kind != "admin":
        raise ApiError(
            403, "this operation needs an admin key (il_admin_…); ingest keys may only send events"
        )
    return principal
