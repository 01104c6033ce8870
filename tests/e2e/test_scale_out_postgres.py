"""Scale-out on PostgreSQL (SPEC §11): one ``api`` and two ``worker`` processes share the work.

Workers lease due deliveries with ``FOR UPDATE SKIP LOCKED``: each delivery goes to exactly one
worker while its lease holds, so with no crash and the default 60 s lease every delivery reaches
the receiver exactly once, as attempt 1, and both workers take part.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.processes import Cluster
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(180)]

N_EVENTS = 5_000
BATCH = 500


def pipeline(receiver_url: str) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "usage",
                "source": {"match": ["feature.used"]},
                "destinations": [{"webhook.out": {"url": receiver_url + "/hooks"}}],
            }
        ]
    }


async def query(pg_url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(pg_url, timeout=10)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql)
        return rows
    finally:
        await conn.close()


async def test_two_workers_share_5000_deliveries_each_sent_once(
    pg_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async with Cluster(tmp_path, pg_url) as cluster:  # default 60 s delivery lease
        keys = await cluster.init_project()
        await cluster.apply(pipeline(receiver.url))
        api, w1, w2 = await asyncio.gather(
            cluster.start("api"), cluster.start("worker"), cluster.start("worker")
        )
        started = time.monotonic()

        async def send(start: int) -> list[str]:
            items = [
                {"type": "feature.used", "payload": {"feature": "export", "n": i}}
                for i in range(start, start + BATCH)
            ]
            status, body = await cluster.request(
                api, "POST", "/v1/events", key=keys.ingest, json={"batch": items}, timeout=60
            )
            assert status == 202, body
            assert body["accepted"] == BATCH and body["duplicates"] == 0
            return [item["id"] for item in body["items"]]

        sent = await asyncio.gather(*(send(s) for s in range(0, N_EVENTS, BATCH)))
        event_ids = {eid for ids in sent for eid in ids}
        assert len(event_ids) == N_EVENTS

        await cluster.wait_for_counts(api, keys.admin, {"delivered": N_EVENTS}, 90, w1, w2, interval=0.25)
        elapsed = time.monotonic() - started

        deliveries = await cluster.all_deliveries(api, keys.admin)
        assert len(deliveries) == N_EVENTS
        assert {d["event_id"] for d in deliveries} == event_ids
        assert {d["status"] for d in deliveries} == {"delivered"}
        assert {d["attempt_count"] for d in deliveries} == {1}

        # The receiver saw every delivery id exactly once, as attempt 1: no delivery was sent
        # twice while its lease held (two workers never both leased it).
        per_delivery = Counter(r.headers["X-Ingestlayer-Delivery"] for r in receiver.requests)
        twice = {d: n for d, n in per_delivery.items() if n > 1}
        assert not twice, f"{len(twice)} deliveries sent more than once, e.g. {sorted(twice.items())[:3]}"
        assert set(per_delivery) == {d["id"] for d in deliveries}
        assert len(receiver.requests) == N_EVENTS
        assert {r.headers["X-Ingestlayer-Attempt"] for r in receiver.requests} == {"1"}
        event_of = {d["id"]: d["event_id"] for d in deliveries}
        assert all(r.json()["id"] == event_of[r.headers["X-Ingestlayer-Delivery"]] for r in receiver.requests)

        # Both workers did part of the work: each attempt row names the process that made it
        # (``host:pid``), and the pids are those of our two worker processes.
        rows = await query(
            pg_url,
            "SELECT worker, count(*) AS n, count(DISTINCT delivery_id) AS d FROM attempts GROUP BY worker",
        )
        by_worker = {r["worker"]: r["n"] for r in rows}
        assert sum(by_worker.values()) == N_EVENTS
        assert all(r["n"] == r["d"] for r in rows)  # one attempt per delivery
        host = os.uname().nodename
        expected = {f"{host}:{w1.pid}", f"{host}:{w2.pid}"}
        assert set(by_worker) == expected, (by_worker, expected)
        share = min(by_worker.values()) / N_EVENTS
        assert share >= 0.05, f"one worker did almost nothing: {by_worker}"
        (leftover,) = await query(
            pg_url,
            "SELECT count(*) AS n FROM deliveries WHERE lease_token IS NOT NULL OR status <> 'delivered'",
        )
        assert leftover["n"] == 0
        print(f"\n5,000 deliveries by two workers in {elapsed:.1f}s; split {sorted(by_worker.values())}")
