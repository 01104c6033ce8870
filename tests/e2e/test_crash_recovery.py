"""A killed process loses nothing (SPEC §6, §11), on SQLite and on PostgreSQL.

Real ``ingestlayer api`` and ``ingestlayer worker`` processes share one database; a real receiver
on 127.0.0.1 records every request. Processes die by SIGKILL, so no shutdown code runs: only
what the database holds survives.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Cluster, Keys, Proc, post_events, wait_until
from tests.support.receiver import Receiver, Reply

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

N_EVENTS = 200
LEASE_SECONDS = 2.0
REPLY_DELAY = 1.0
RETRY = {"schedule": [0, 0.2, 0.5, 1, 1, 1, 1, 1, 1, 1], "jitter": 0}


def pipeline(receiver_url: str) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "destinations": [
                    {"webhook.out": {"url": receiver_url + "/hooks", "timeout": 5}, "retry": RETRY}
                ],
            }
        ]
    }


async def ingest_batch(cluster: Cluster, api: Proc, keys: Keys, start: int, count: int) -> list[str]:
    status, body = await cluster.request(
        api,
        "POST",
        "/v1/events",
        key=keys.ingest,
        json={"batch": [{"type": "order.created", "payload": {"i": i}} for i in range(start, start + count)]},
    )
    assert status == 202, body
    assert body["accepted"] == count
    return [item["id"] for item in body["items"]]


def received_event_ids(receiver: Receiver) -> set[str]:
    return {r.json()["id"] for r in receiver.requests}


def check_receiver(receiver: Receiver, deliveries: list[dict[str, Any]]) -> dict[str, int]:
    """Every event arrived, each always under its one delivery id; return copies per delivery."""
    delivery_of_event = {d["event_id"]: d["id"] for d in deliveries}
    ids_seen: dict[str, set[str]] = defaultdict(set)
    copies: dict[str, int] = defaultdict(int)
    for r in receiver.requests:
        assert r.path == "/hooks"
        event_id = r.json()["id"]
        ids_seen[event_id].add(r.headers["X-Ingestlayer-Delivery"])
        copies[r.headers["X-Ingestlayer-Delivery"]] += 1
    assert set(ids_seen) == set(delivery_of_event), "an event never reached the receiver"
    for event_id, seen in ids_seen.items():
        # Duplicates (at-least-once) carry the same, stable id, so the receiver can dedupe.
        assert seen == {delivery_of_event[event_id]}, (event_id, seen)
    return copies


async def test_worker_killed_mid_delivery_loses_nothing(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.default = Reply(status=200, delay=REPLY_DELAY)
    async with Cluster(
        tmp_path,
        database_url,
        lease_seconds=LEASE_SECONDS,
        INGESTLAYER_ROUTE_LEASE_SECONDS=str(LEASE_SECONDS),
    ) as cluster:
        keys = await cluster.init_project()
        await cluster.apply(pipeline(receiver.url))
        api = await cluster.start("api")
        w1 = await cluster.start("worker")

        sending = asyncio.create_task(post_events(cluster, api, keys, 0, N_EVENTS))
        try:
            # Kill the worker while the receiver holds requests whose replies have not gone out:
            # it dies before it can learn (let alone record) how they went.
            await wait_until(
                lambda: len(receiver.requests) >= 10 and receiver.inflight.get("/hooks", 0) > 0,
                30,
                "first deliveries",
                api,
                w1,
            )
            killed_at = time.time()
            await w1.kill()
        finally:
            event_ids = await asyncio.wait_for(sending, 60)
        in_flight = {
            r.headers["X-Ingestlayer-Delivery"]
            for r in receiver.requests
            if r.at <= killed_at and (r.answered_at is None or r.answered_at > killed_at)
        }
        assert in_flight, "the worker was not killed mid-delivery"
        assert len(set(event_ids)) == N_EVENTS

        w2 = await cluster.start("worker")

        # The second worker retakes the expired leases (and any routing the first left undone).
        await cluster.wait_for_counts(api, keys.admin, {"delivered": N_EVENTS}, 60, w2)

        deliveries = await cluster.all_deliveries(api, keys.admin)
        assert len(deliveries) == N_EVENTS
        assert {d["event_id"] for d in deliveries} == set(event_ids)  # one delivery per event
        assert {d["status"] for d in deliveries} == {"delivered"}
        copies = check_receiver(receiver, deliveries)
        # What was in flight when the worker died was sent again, on the same delivery id.
        assert all(copies[d] >= 2 for d in in_flight), {d: copies[d] for d in in_flight}
        # The delivered attempt of a re-sent delivery is logged by the worker that finished it.
        sample = sorted(in_flight)[0]
        status, detail = await cluster.request(api, "GET", f"/v1/deliveries/{sample}", key=keys.admin)
        assert status == 200 and detail["status"] == "delivered"
        assert detail["attempts"][-1]["status_code"] == 200


async def test_api_killed_right_after_202_loses_nothing(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async with Cluster(tmp_path, database_url) as cluster:
        keys = await cluster.init_project()
        await cluster.apply(pipeline(receiver.url))
        api = await cluster.start("api")
        # No worker yet: after the kill, the database is the only place these events can be.
        singles, batch = await asyncio.gather(
            post_events(cluster, api, keys, 0, 60), ingest_batch(cluster, api, keys, 60, 40)
        )
        await api.kill()  # the moment the last 202 arrived
        event_ids = set(singles) | set(batch)
        assert len(event_ids) == 100

        worker = await cluster.start("worker")
        await wait_until(
            lambda: received_event_ids(receiver) >= event_ids,
            30,
            "events delivered after the kill",
            worker,
            progress=lambda: f"{len(received_event_ids(receiver) & event_ids)} of {len(event_ids)} arrived",
        )
        api2 = await cluster.start("api")
        await cluster.wait_for_counts(api2, keys.admin, {"delivered": 100}, 30, worker)
        deliveries = await cluster.all_deliveries(api2, keys.admin)
        assert {d["event_id"] for d in deliveries} == event_ids
        copies = check_receiver(receiver, deliveries)
        assert set(copies.values()) == {1}  # no crash during delivery: each sent once

        # The survivors stop cleanly on SIGTERM, as a supervisor (systemd, Kubernetes) stops them.
        for proc in (api2, worker):
            proc.signal(signal.SIGTERM)
        for proc in (api2, worker):
            assert await proc.wait_exit(20) == 0, proc.describe()
