"""A key revoked or a secret changed through one process holds in every process at once, on
PostgreSQL (SPEC §11, many api and worker processes). Each process caches keys for 10 s and
decrypted secrets for 5 s; another process used to go on accepting a revoked key, or sending
the old secret, until its copy ran out.

Real processes share a fresh database; a real receiver records what the worker sends.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from ingestlayer.store.pg_hot import CHANGES_CHANNEL
from tests.support.databases import listening_on
from tests.support.processes import Cluster
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(120)]

# Well inside the caches' lifetimes (5 s and 10 s): what is seen this soon was told, not expired.
TOLD_WITHIN = 2.0


async def test_a_key_revoked_through_one_api_process_is_refused_by_the_other_at_once(
    pg_url: str, tmp_path: Path
) -> None:
    async with Cluster(tmp_path, pg_url) as cluster:
        keys = await cluster.init_project()
        a1, a2 = await asyncio.gather(cluster.start("api"), cluster.start("api"))
        await listening_on(pg_url, CHANGES_CHANNEL, sessions=2)  # each is told from now on
        status, made = await cluster.request(a1, "POST", "/v1/keys", key=keys.admin, json={"kind": "ingest"})
        assert status == 201, made
        event = {"type": "key.check", "payload": {}}
        # a2 has the key in its cache.
        status, body = await cluster.request(a2, "POST", "/v1/events", key=made["key"], json=event)
        assert status == 202, body

        status, _ = await cluster.request(a1, "DELETE", f"/v1/keys/{made['id']}", key=keys.admin)
        assert status == 204
        revoked_at = time.monotonic()
        while True:
            status, body = await cluster.request(a2, "POST", "/v1/events", key=made["key"], json=event)
            if status == 401:
                break
            assert status == 202, body
            assert time.monotonic() - revoked_at < TOLD_WITHIN, "a2 still takes the revoked key"
            await asyncio.sleep(0.05)
        # The project's other key is untouched.
        status, body = await cluster.request(a2, "POST", "/v1/events", key=keys.ingest, json=event)
        assert status == 202, body


async def test_a_secret_set_through_an_api_process_is_sent_by_a_worker_at_once(
    pg_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async with Cluster(tmp_path, pg_url) as cluster:
        keys = await cluster.init_project()
        a1 = await cluster.start("api")
        status, body = await cluster.request(
            a1, "PUT", "/v1/secrets/partner-token", key=keys.admin, json={"value": "first"}
        )
        assert status == 200, body
        await cluster.apply(
            {
                "pipelines": [
                    {
                        "name": "partner",
                        "source": {"match": ["order.*"]},
                        "destinations": [
                            {
                                "webhook.out": {
                                    "url": receiver.url + "/partner",
                                    "secret_headers": {"X-Partner-Token": "ref:partner-token"},
                                }
                            }
                        ],
                    }
                ]
            }
        )
        w1 = await cluster.start("worker")
        await listening_on(pg_url, CHANGES_CHANNEL, sessions=2)  # a1's listener and w1's

        async def token_of_next_delivery(n: int) -> str:
            status, body = await cluster.request(
                a1, "POST", "/v1/events", key=keys.ingest, json={"type": "order.paid", "payload": {"n": n}}
            )
            assert status == 202, body
            deadline = time.monotonic() + 10
            while len(receiver.requests) < n:
                assert time.monotonic() < deadline, w1.describe()
                await asyncio.sleep(0.02)
            return receiver.requests[n - 1].headers["X-Partner-Token"]

        assert await token_of_next_delivery(1) == "first"  # w1 has it in its cache now
        status, body = await cluster.request(
            a1, "PUT", "/v1/secrets/partner-token", key=keys.admin, json={"value": "second"}
        )
        assert status == 200 and body["replaced"] is True, body
        changed_at = time.monotonic()
        n = 2
        while (token := await token_of_next_delivery(n)) != "second":
            assert token == "first"
            assert time.monotonic() - changed_at < TOLD_WITHIN, "w1 still sends the old secret"
            n += 1
