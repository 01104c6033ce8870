"""SIGTERM drains in-flight deliveries and exits 0 (SPEC §6, §9; INGESTLAYER_SHUTDOWN_GRACE_SECONDS).

``ingestlayer serve`` gets SIGTERM while its attempts wait on a slow receiver: the attempts
finish and are recorded before the process exits, so nothing is left ``delivering`` and nothing
is sent again after a restart. An attempt that outlasts the grace period does not hold the
process up; its lease expires and a restarted server delivers it, on the same delivery id.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Cluster, Keys, Proc, wait_until
from tests.support.receiver import Receiver, Reply

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

GRACE_SECONDS = 8.0
REPLY_DELAY = 1.0


def pipeline(receiver_url: str) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "signups",
                "source": {"match": ["user.signed_up"]},
                "destinations": [
                    {
                        "webhook.out": {"url": receiver_url + "/hooks", "timeout": 30},
                        "retry": {"schedule": [0, 0.2, 0.5], "jitter": 0},
                    }
                ],
            }
        ]
    }


async def send_events(cluster: Cluster, proc: Proc, keys: Keys, n: int) -> list[str]:
    ids = []
    for i in range(n):
        status, body = await cluster.request(
            proc, "POST", "/v1/events", key=keys.ingest, json={"type": "user.signed_up", "payload": {"i": i}}
        )
        assert status == 202, body
        ids.append(body["id"])
    return ids


async def test_sigterm_drains_in_flight_attempts_and_exits_0(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    receiver.default = Reply(status=200, delay=REPLY_DELAY)
    async with Cluster(tmp_path, database_url, grace_seconds=GRACE_SECONDS) as cluster:
        keys = await cluster.init_project()
        await cluster.apply(pipeline(receiver.url))
        serve = await cluster.start("serve")
        event_ids = await send_events(cluster, serve, keys, 3)
        await wait_until(lambda: len(receiver.requests) == 3, 20, "the attempts reach the receiver", serve)

        sigterm_at = time.time()
        serve.signal(signal.SIGTERM)
        code = await serve.wait_exit(GRACE_SECONDS + 5)
        exited_at = time.time()
        assert code == 0, f"exit status {code} after SIGTERM: {serve.describe()}"
        # It waited for the replies (they come REPLY_DELAY after arrival), not for the grace limit.
        last_reply_due = max(r.at for r in receiver.requests) + REPLY_DELAY
        assert exited_at >= last_reply_due - 0.1, (exited_at - sigterm_at, serve.describe())
        assert exited_at - sigterm_at < GRACE_SECONDS, serve.describe()

        # A fresh server reads what the first one recorded before it exited.
        receiver.default = Reply(status=200)
        serve2 = await cluster.start("serve")
        deliveries = await cluster.all_deliveries(serve2, keys.admin)
        assert sorted(d["event_id"] for d in deliveries) == sorted(event_ids)
        assert {d["status"] for d in deliveries} == {"delivered"}, deliveries
        for d in deliveries:
            status, detail = await cluster.request(serve2, "GET", f"/v1/deliveries/{d['id']}", key=keys.admin)
            assert status == 200
            assert [(a["n"], a["status_code"]) for a in detail["attempts"]] == [(1, 200)]
            assert detail["attempts"][0]["duration_ms"] >= REPLY_DELAY * 1000 * 0.9
        await asyncio.sleep(0.5)  # the restarted server re-sends nothing
        assert len(receiver.requests) == 3


async def test_attempt_outlasting_the_grace_period_is_retaken_after_restart(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    grace, lease = 1.0, 60.0  # a lease far longer than the test waits: released, not expired
    # The first attempt outlasts the grace period by far, so the exit's bound below has room for
    # a loaded machine's shutdown and still fails a server that waits for the reply.
    receiver.plan = [Reply(status=200, delay=8.0)]
    async with Cluster(tmp_path, database_url, grace_seconds=grace, lease_seconds=lease) as cluster:
        keys = await cluster.init_project()
        await cluster.apply(pipeline(receiver.url))
        serve = await cluster.start("serve")
        (event_id,) = await send_events(cluster, serve, keys, 1)
        await wait_until(lambda: receiver.requests, 20, "the attempt reaches the receiver", serve)

        sigterm_at = time.monotonic()
        serve.signal(signal.SIGTERM)
        code = await serve.wait_exit(grace + 7)
        assert code == 0, f"exit status {code} after SIGTERM: {serve.describe()}"
        assert time.monotonic() - sigterm_at < grace + 5, serve.describe()
        receiver.release_held()  # its server is gone: the receiver need not hold it to the end

        serve2 = await cluster.start("serve")

        # The cut-short attempt's lease was released at shutdown: the new server takes it at once.
        await cluster.wait_for_counts(serve2, keys.admin, {"delivered": 1}, 15)
        assert len(receiver.requests) == 2
        first, second = receiver.requests
        assert first.json()["id"] == second.json()["id"] == event_id
        assert first.headers["X-Ingestlayer-Delivery"] == second.headers["X-Ingestlayer-Delivery"]


async def test_an_attempt_cut_short_at_shutdown_is_logged_and_does_not_count_toward_retries(
    database_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    grace, lease = 1.0, 60.0  # released at shutdown, not expired, within the test's waits
    # Cut short, then a failure, then a success. The schedule allows two counted attempts: were
    # the cut-short one counted, the failure would end the delivery dead.
    receiver.plan = [Reply(status=200, delay=8.0), Reply(status=500), Reply(status=200)]
    document = pipeline(receiver.url)
    document["pipelines"][0]["destinations"][0]["retry"] = {"schedule": [0, 0.2], "jitter": 0}
    async with Cluster(tmp_path, database_url, grace_seconds=grace, lease_seconds=lease) as cluster:
        keys = await cluster.init_project()
        await cluster.apply(document)
        serve = await cluster.start("serve")
        await send_events(cluster, serve, keys, 1)
        await wait_until(lambda: receiver.requests, 20, "the attempt reaches the receiver", serve)
        serve.signal(signal.SIGTERM)
        code = await serve.wait_exit(grace + 15)
        assert code == 0, f"exit status {code} after SIGTERM: {serve.describe()}"
        receiver.release_held()  # its server is gone: the receiver need not hold it to the end

        serve2 = await cluster.start("serve")
        await cluster.wait_for_counts(serve2, keys.admin, {"delivered": 1}, 20, serve2)
        assert [r.headers["X-Ingestlayer-Attempt"] for r in receiver.requests] == ["1", "2", "3"]
        (delivery,) = await cluster.all_deliveries(serve2, keys.admin)
        status, detail = await cluster.request(
            serve2, "GET", f"/v1/deliveries/{delivery['id']}", key=keys.admin
        )
        assert status == 200, detail
        attempts = detail["attempts"]
        assert [(a["n"], a["status_code"]) for a in attempts] == [(1, None), (2, 500), (3, 200)], attempts
        cut_short = attempts[0]
        assert cut_short["error"].startswith("cut short: the worker shut down"), cut_short
        # It ran from the send until the grace period ended.
        assert cut_short["duration_ms"] >= grace * 1000 * 0.9, cut_short
        started = datetime.fromisoformat(cut_short["started_at"].replace("Z", "+00:00")).timestamp()
        assert abs(started - receiver.requests[0].at) < 5, cut_short
