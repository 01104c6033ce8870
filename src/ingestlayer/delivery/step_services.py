"""The services pipeline steps use, backed by the store, with short-lived in-process caches.

Entity reads are cached for a few seconds: enrich steps look up the same users and accounts over
and over. A trait changed through this process's API is seen by the next event (the API calls
:meth:`CachedEntities.forget`); one changed through another process within ``ENTITY_TTL`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import aiohttp

from ingestlayer.delivery.egress import EgressPolicy, GuardedResolver
from ingestlayer.delivery.held_routes import PROJECT_CONCURRENCY
from ingestlayer.pipeline.event import StepServices
from ingestlayer.store.store import Store

log = logging.getLogger("ingestlayer.router")

ENTITY_TTL = 5.0
ENTITY_CACHE_SIZE = 100_000


class CachedEntities:
    def __init__(self, store: Store) -> None:
        self._store = store
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, dict[str, Any] | None]] = OrderedDict()
        # Bumped by forget(): a read that started before a write must not cache what it read.
        self._generation = 0

    def forget(self, project_id: str, keys: list[tuple[str, str]]) -> None:
        """Drop cached entities just written, so the next event sees them (and a user identified
        after an event that found none is not "not found" for ENTITY_TTL more seconds)."""
        self._generation += 1
        for kind, entity_id in keys:
            self._cache.pop((project_id, kind, entity_id), None)

    async def get(self, project_id: str, kind: str, entity_id: str) -> dict[str, Any] | None:
        key = (project_id, kind, entity_id)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        generation = self._generation
        found = (await self._store.get_entities(project_id, [(kind, entity_id)])).get((kind, entity_id))
        if generation != self._generation:
            return found
        self._cache[key] = (now + ENTITY_TTL, found)
        self._cache.move_to_end(key)
        while len(self._cache) > ENTITY_CACHE_SIZE:
            self._cache.popitem(last=False)
        return found


class StoreCache:
    """The step cache (classify results, lookups), in the database so every worker shares it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._local: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()

    async def get(self, project_id: str, key: str) -> str | None:
        hit = self._local.get((project_id, key))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        value = await self._store.cache_get(project_id, key)
        if value is not None:
            self._remember(project_id, key, value, 60.0)
        return value

    async def put(self, project_id: str, key: str, value: str, ttl: float | None) -> None:
        try:
            await self._store.cache_put(project_id, key, value, ttl)
        except Exception:
            # A cache that cannot be written costs a repeated call later, not this event.
            log.warning("step cache write failed", exc_info=True)
        self._remember(project_id, key, value, min(ttl or 60.0, 60.0))

    def _remember(self, project_id: str, key: str, value: str, ttl: float) -> None:
        self._local[(project_id, key)] = (time.monotonic() + ttl, value)
        self._local.move_to_end((project_id, key))
        while len(self._local) > 50_000:
            self._local.popitem(last=False)


# Connections the steps' calls (lookups, models) may hold at once: to one host, as many as one
# project's routes may run at once, so that one project's provider that hangs cannot hold every
# connection (aiohttp's default, 100 in all, let two such projects starve every other project's
# calls to healthy providers, which then timed out waiting for a connection); in all, a bound on
# the sockets they take.
STEP_CONNECTIONS_PER_HOST = PROJECT_CONCURRENCY
STEP_CONNECTIONS = 1024


class HttpSessions:
    def __init__(self, egress: EgressPolicy) -> None:
        self._egress = egress
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    resolver=GuardedResolver(self._egress),
                    limit=STEP_CONNECTIONS,
                    limit_per_host=STEP_CONNECTIONS_PER_HOST,
                )
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def build_services(
    store: Store, resolve_secret: Any, egress: EgressPolicy
) -> tuple[StepServices, HttpSessions]:
    http = HttpSessions(egress)
    services = StepServices(
        entities=CachedEntities(store),
        cache=StoreCache(store),
        http=http,
        resolve_secret=resolve_secret,
        allow_private=egress.allow_private,
    )
    return services, http
