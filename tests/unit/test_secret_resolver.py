"""Stored secrets are read once per expiry, however many sends wait for them."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from ingestlayer.delivery.dispatcher import SecretResolver
from ingestlayer.secretbox import SecretBox
from ingestlayer.store.store import Store


class SlowSecrets:
    """Answers ``get_secret`` after a delay and counts the reads."""

    def __init__(self, box: SecretBox) -> None:
        self.box = box
        self.values = {("prj_1", "hook"): "whsec_one"}
        self.reads = 0

    async def get_secret(self, project_id: str, name: str) -> bytes | None:
        self.reads += 1
        await asyncio.sleep(0.05)
        value = self.values.get((project_id, name))
        return self.box.encrypt(value) if value is not None else None


def _resolver() -> tuple[SecretResolver, SlowSecrets]:
    box = SecretBox("test-master-key")
    store = SlowSecrets(box)
    return SecretResolver(cast(Store, cast(Any, store)), box), store


async def test_concurrent_sends_share_one_read() -> None:
    resolver, store = _resolver()
    values = await asyncio.gather(*(resolver("prj_1", "ref:hook") for _ in range(100)))
    assert set(values) == {"whsec_one"}
    assert store.reads == 1
    assert await resolver("prj_1", "ref:hook") == "whsec_one"
    assert store.reads == 1  # cached


async def test_a_missing_secret_fails_every_waiter_with_its_name() -> None:
    resolver, store = _resolver()
    results = await asyncio.gather(*(resolver("prj_1", "ref:nope") for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, LookupError) and "ref:nope" in str(r) for r in results)
    assert store.reads == 1


async def test_forget_during_a_read_makes_the_next_send_read_the_new_value() -> None:
    resolver, store = _resolver()
    first = asyncio.ensure_future(resolver("prj_1", "ref:hook"))
    await asyncio.sleep(0.01)  # the read is under way
    store.values[("prj_1", "hook")] = "whsec_two"  # rotated ...
    resolver.forget("prj_1")  # ... and the destination changed
    assert await resolver("prj_1", "ref:hook") == "whsec_two"
    await first
    assert await resolver("prj_1", "ref:hook") == "whsec_two"  # the old read did not win the cache


async def test_a_cancelled_send_does_not_cancel_the_shared_read() -> None:
    resolver, store = _resolver()
    waiter = asyncio.ensure_future(resolver("prj_1", "ref:hook"))
    other = asyncio.ensure_future(resolver("prj_1", "ref:hook"))
    await asyncio.sleep(0.01)
    waiter.cancel()
    assert await other == "whsec_one"
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert store.reads == 1


async def test_forget_of_every_project_drops_cached_and_in_flight_reads() -> None:
    """What a process does when it may have missed notifications (its listener reconnected)."""
    resolver, store = _resolver()
    store.values[("prj_2", "hook")] = "whsec_2a"
    assert await resolver("prj_1", "ref:hook") == "whsec_one"  # cached
    in_flight = asyncio.ensure_future(resolver("prj_2", "ref:hook"))
    await asyncio.sleep(0.01)  # prj_2's read is under way
    store.values[("prj_1", "hook")] = "whsec_two"
    store.values[("prj_2", "hook")] = "whsec_2b"
    resolver.forget()
    assert await resolver("prj_1", "ref:hook") == "whsec_two"
    assert await resolver("prj_2", "ref:hook") == "whsec_2b"
    await in_flight
    assert await resolver("prj_2", "ref:hook") == "whsec_2b"  # the old read did not win the cache
