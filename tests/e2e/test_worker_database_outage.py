"""A live worker whose PostgreSQL goes away for a few seconds (docs/configuration.md, "Running").

The worker reaches the database through a proxy that drops every connection and refuses new
ones, then lets them through again. The worker keeps what it could not record and records it
once the database answers: a delivery that succeeded is neither left ``delivering`` until its
lease expires nor sent a second time, and its attempt is in its log. Meanwhile the worker's
loops say so in a few lines, not a traceback per retry.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.freezing_proxy import FreezingProxy
from tests.support.processes import Cluster, Keys, Proc, wait_until
from tests.support.receiver import Receiver, Reply

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(90)]

# Far longer than the test waits: a delivery the worker cannot settle shows as still delivering,
# instead of being retaken and sent again halfway through.
LEASE_SECONDS = 120.0
REPLY_DELAY = 3.0
N_EVENTS = 10


def pipeline(receiver_url: str) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "destinations": [
                    {
                        "webhook.out": {"url": receiver_url + "/hooks", "timeout": 30},
                        "retry": {"schedule": [0, 0.2, 0.5], "jitter": 0},
                    }
                ],
            }
        ]
    }


async def ingest(cluster: Cluster, api: Proc, keys: Keys, n: int) -> None:
    for i in range(n):
        status, body = await cluster.request(
            api, "POST", "/v1/events", key=keys.ingest, json={"type": "order.created", "payload": {"i": i}}
        )
        assert status == 202, body


def traceback_after(log: str, logger_names: tuple[str, ...]) -> list[str]:
    """The lines of these loggers that a traceback follows."""
    lines = log.splitlines()
    return [
        line
        for line, following in itertools.pairwise(lines)
        if following.startswith("Traceback") and any(f" {name} " in line for name in logger_names)
    ]


async def outage_while_answering(
    pg_url: str,
    tmp_path: Path,
    receiver: Receiver,
    *,
    lease: float,
    reply_delay: float,
    n: int,
    away_after_answers: float,
) -> str:
    """``n`` events sent to a worker whose database goes away while the receiver holds their
    requests, and comes back ``away_after_answers`` seconds after the last answer: every
    delivery must end delivered, with one attempt logged and one request made. The worker's log."""
    receiver.default = Reply(status=200, delay=reply_delay)
    proxy = await FreezingProxy.to(pg_url)
    try:
        async with Cluster(tmp_path, pg_url, lease_seconds=lease) as cluster:
            keys = await cluster.init_project()
            await cluster.apply(pipeline(receiver.url))
            api = await cluster.start("api")
            worker = await cluster.start("worker", INGESTLAYER_DATABASE_URL=proxy.url(pg_url))
            await ingest(cluster, api, keys, n)
            await wait_until(
                lambda: len(receiver.requests) == n, 30, "the attempts reach the receiver", worker
            )
            # Away while the receiver holds the requests, so that every outcome comes while it is.
            await proxy.refuse()
            await wait_until(
                lambda: all(r.answered_at is not None for r in receiver.requests),
                reply_delay + 20,
                "the receiver answers",
                worker,
            )
            await asyncio.sleep(away_after_answers)
            await proxy.restore()

            await cluster.wait_for_counts(api, keys.admin, {"delivered": n}, 30, worker)
            for d in await cluster.all_deliveries(api, keys.admin):
                status, detail = await cluster.request(
                    api, "GET", f"/v1/deliveries/{d['id']}", key=keys.admin
                )
                assert status == 200, detail
                assert [(a["n"], a["status_code"]) for a in detail["attempts"]] == [(1, 200)], detail
            await asyncio.sleep(1.0)  # nothing is sent again
            assert len(receiver.requests) == n, [
                r.headers["X-Ingestlayer-Delivery"] for r in receiver.requests
            ]
            return worker.log()
    finally:
        await proxy.close()


async def test_outcomes_unrecorded_while_the_database_is_away_are_recorded_once_it_answers(
    pg_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    log = await outage_while_answering(
        pg_url,
        tmp_path,
        receiver,
        lease=LEASE_SECONDS,
        reply_delay=REPLY_DELAY,
        n=N_EVENTS,
        away_after_answers=1.5,
    )
    assert "recording attempts failed: database unavailable" in log, log[-3000:]
    assert "recording attempts works again" in log, log[-3000:]


async def test_a_worker_records_what_it_holds_before_leasing_again_after_an_outage_past_the_lease(
    pg_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """The database is away for longer than a lease. When it answers, the worker records the
    outcomes it holds before it leases again: the other way round, it retook the deliveries whose
    leases had run out, and sent them a second time though it knew they had been delivered."""
    lease = 2.0
    # Back once every lease has run out.
    await outage_while_answering(
        pg_url, tmp_path, receiver, lease=lease, reply_delay=0.5, n=6, away_after_answers=lease + 1.5
    )


async def test_a_worker_logs_a_database_outage_in_a_few_lines(pg_url: str, tmp_path: Path) -> None:
    proxy = await FreezingProxy.to(pg_url)
    try:
        async with Cluster(tmp_path, pg_url, poll_interval=0.05) as cluster:
            await cluster.init_project()
            worker = await cluster.start("worker", INGESTLAYER_DATABASE_URL=proxy.url(pg_url))
            await proxy.refuse()
            # Both loops fail about once a second for this long: a traceback each came to
            # hundreds of lines.
            await asyncio.sleep(7.0)
            await proxy.restore()
            await wait_until(
                lambda: (
                    "leasing deliveries works again" in worker.log() and "routing works again" in worker.log()
                ),
                20,
                "the loops say they work again",
                worker,
            )
            log = worker.log()
            loops = ("ingestlayer.delivery", "ingestlayer.router")
            assert traceback_after(log, loops) == [], worker.describe()
            for what in ("leasing deliveries", "routing"):
                assert f"{what} failed: database unavailable: " in log, worker.describe()
                # One line as it began, one every 5 s at most with a count, one when it ended.
                assert len(re.findall(f"{what} still failing: \\d+ failures", log)) <= 2, worker.describe()
                assert log.count(f"{what} works again") == 1, worker.describe()
    finally:
        await proxy.close()
