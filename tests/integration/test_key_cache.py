"""The API key cache: one database lookup however many requests find an entry expired."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from ingestlayer.api import auth
from ingestlayer.api.auth import KeyCache
from ingestlayer.store.store import Store


async def test_concurrent_requests_share_one_lookup_and_forget_wins_over_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store.from_url(db_url)
    try:
        project_id, ingest_key, _admin = await store.create_project("keys")
        lookups = 0
        real = store.resolve_key

        async def counted(key: str) -> Any:
            nonlocal lookups
            lookups += 1
            await asyncio.sleep(0.05)  # a slow database: everyone arrives while it runs
            return await real(key)

        monkeypatch.setattr(store, "resolve_key", counted)
        cache = KeyCache(store)
        found = await asyncio.gather(*(cache.lookup(ingest_key) for _ in range(64)))
        assert lookups == 1
        assert {p.project_id if p else None for p in found} == {project_id}

        # Expired: the next wave makes one lookup again.
        monkeypatch.setattr(auth, "POSITIVE_TTL", 0.0)
        cache = KeyCache(store)
        lookups = 0
        await cache.lookup(ingest_key)
        await asyncio.gather(*(cache.lookup(ingest_key) for _ in range(64)))
        assert lookups == 2

        # A lookup that began before forget() (a key was revoked) is not cached.
        monkeypatch.setattr(auth, "POSITIVE_TTL", 10.0)
        cache = KeyCache(store)
        lookups = 0
        racing = asyncio.ensure_future(cache.lookup(ingest_key))
        await asyncio.sleep(0.01)
        cache.forget()
        assert (await racing) is not None
        await cache.lookup(ingest_key)
        assert lookups == 2
    finally:
        await store.close()


async def test_a_flood_of_wrong_keys_does_not_evict_the_real_ones(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone can send wrong keys; filling the cache with them emptied it of every real key, and
    each real key's requests then waited on the database again."""
    monkeypatch.setattr(auth, "MAX_ENTRIES", 50)
    store = Store.from_url(sqlite_url)
    try:
        project_id, ingest_key, _admin = await store.create_project("keys")
        cache = KeyCache(store)
        assert (await cache.lookup(ingest_key)) is not None
        for i in range(200):
            assert await cache.lookup(f"il_ingest_wrong{i}") is None
        principal = cache.cached(ingest_key)  # still known, without a lookup
        assert principal is not None and principal.project_id == project_id
    finally:
        await store.close()


async def test_a_revoked_key_drops_its_project_keys_only(sqlite_url: str) -> None:
    """A key revoked in one project made every project's keys be looked up again (the cache
    was emptied whole): now only that project's are, and the revoked one is refused at once."""
    store = Store.from_url(sqlite_url)
    try:
        mine, my_key, _ = await store.create_project("mine")
        other, other_key, _ = await store.create_project("other")
        cache = KeyCache(store)
        assert (await cache.lookup(my_key)) is not None and (await cache.lookup(other_key)) is not None
        (listed,) = [k for k in await store.list_keys(mine) if k["kind"] == "ingest"]
        await store.revoke_key(mine, listed["id"])
        cache.forget(mine)
        assert cache.cached(my_key) is None  # looked up again: refused
        assert await cache.lookup(my_key) is None
        still = cache.cached(other_key)  # the other project's, without a lookup
        assert still is not None and still.project_id == other
    finally:
        await store.close()
