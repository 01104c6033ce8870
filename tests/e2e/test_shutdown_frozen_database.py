"""SIGTERM stops a process whose PostgreSQL froze (connections open, nothing answered).

Closing a connection politely waits for the server to acknowledge it, which a frozen server
never does: a worker or api sent SIGTERM kept running, silent, until the database answered
again. Every step of the shutdown is bounded now; what it had to cut short is said in one line,
and nothing accepted is lost (an event answered 202 was committed before the answer).
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.test_worker_database_outage import ingest, pipeline
from tests.support.freezing_proxy import FreezingProxy
from tests.support.processes import Cluster, wait_until
from tests.support.receiver import Receiver, Reply

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(90)]

GRACE_SECONDS = 2.0
DATABASE_TIMEOUT = 3.0
# The bound is grace + database timeout and a little; the old code never exited while frozen.
EXIT_WITHIN = GRACE_SECONDS + DATABASE_TIMEOUT + 10.0


@pytest.mark.parametrize("role", ["worker", "api", "serve"])
async def test_sigterm_stops_a_process_whose_database_is_frozen(
    role: str, pg_url: str, tmp_path: Path
) -> None:
    proxy = await FreezingProxy.to(pg_url)
    try:
        async with Cluster(tmp_path, pg_url, grace_seconds=GRACE_SECONDS) as cluster:
            keys = await cluster.init_project()
            proc = await cluster.start(
                role,
                INGESTLAYER_DATABASE_URL=proxy.url(pg_url),
                INGESTLAYER_DATABASE_TIMEOUT=str(DATABASE_TIMEOUT),
            )
            if role != "worker":
                status, body = await cluster.request(
                    proc, "POST", "/v1/events", key=keys.ingest, json={"type": "a.b", "payload": {}}
                )
                assert status == 202, body
            await asyncio.sleep(0.5)  # the loops are waiting on the database when it freezes
            proxy.flowing.clear()
            await asyncio.sleep(0.5)

            sigterm_at = time.monotonic()
            proc.signal(signal.SIGTERM)
            code = await proc.wait_exit(EXIT_WITHIN + 10)
            took = time.monotonic() - sigterm_at
            assert code == 0, proc.describe()
            assert took < EXIT_WITHIN, (took, proc.describe())
            log = proc.log()
            assert "without waiting for the database" in log, proc.describe()
            assert "ingestlayer stopped" in log, proc.describe()
    finally:
        await proxy.close()


async def test_outcomes_a_frozen_database_never_took_are_named_when_the_shutdown_runs_out(
    pg_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """A worker holds an attempt's outcome the frozen database did not take, and attempts still
    in flight use up the grace period: the shutdown cancels the dispatcher at its deadline. The
    documented line naming the unrecorded attempts was not written then (only when the writer's
    own last try failed in time), so nothing said which deliveries' logs lack an attempt."""
    receiver.plan = [Reply(status=200, delay=0.5)]  # the first answers; the others hang
    receiver.default = Reply(status=200, delay=9.0)  # past the shutdown's deadline (5 s after)
    proxy = await FreezingProxy.to(pg_url)
    try:
        async with Cluster(tmp_path, pg_url, grace_seconds=GRACE_SECONDS, lease_seconds=120) as cluster:
            keys = await cluster.init_project()
            await cluster.apply(pipeline(receiver.url))
            api = await cluster.start("api")
            worker = await cluster.start(
                "worker",
                INGESTLAYER_DATABASE_URL=proxy.url(pg_url),
                INGESTLAYER_DATABASE_TIMEOUT=str(DATABASE_TIMEOUT),
            )
            await ingest(cluster, api, keys, 3)
            await wait_until(
                lambda: len(receiver.requests) == 3, 30, "the attempts reach the receiver", worker
            )
            proxy.flowing.clear()  # frozen before the first answer comes
            answered = receiver.requests[0]
            await wait_until(lambda: answered.answered_at is not None, 10, "the first answer", worker)
            await asyncio.sleep(0.5)

            worker.signal(signal.SIGTERM)
            code = await worker.wait_exit(EXIT_WITHIN + 10)
            assert code == 0, worker.describe()
            log = worker.log()
            assert "cancelled the dispatcher" in log, log[-3000:]  # the case: the deadline ran out
            unrecorded = [line for line in log.splitlines() if "exiting with 1 attempts unrecorded" in line]
            assert len(unrecorded) == 1, log[-3000:]
            assert f"{answered.headers['X-Ingestlayer-Delivery']} (attempt 1, delivered)" in unrecorded[0]
    finally:
        proxy.flowing.set()
        await proxy.close()
