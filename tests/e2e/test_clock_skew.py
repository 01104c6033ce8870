"""Workers on machines whose clocks disagree share leases correctly (SPEC §6, §11).

On PostgreSQL, `api` and `worker` processes may run on different machines. A lease's deadline is
stamped by the worker that takes it and compared by the others: a worker whose clock ran ahead
by more than the lease used to see every held lease as expired and send those deliveries again
while the first worker was still sending them. Stored times now follow the database's clock.

The skewed worker is a real `ingestlayer worker` process whose `time.time()` runs ahead (a
`sitecustomize` module on its PYTHONPATH moves it), the way a machine with a wrong clock would.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tests.support.processes import Cluster, wait_until
from tests.support.receiver import Receiver, Reply

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(120)]

SKEW_SECONDS = 120.0  # the second worker's machine is two minutes ahead
LEASE_SECONDS = 30.0
# The receiver holds the first worker's attempt until the fast worker has polled for this long
# (it polls every 0.02 s, and used to retake a held delivery on its first poll); at most 15 s,
# within the destination's timeout, should the test fail before it lets the reply go.
POLLING_SECONDS = 2.0
HOLD_SECONDS = 15.0

SKEWED_CLOCK = """\
import os
import time

_skew = float(os.environ["TEST_CLOCK_SKEW_SECONDS"])
_real_time = time.time
time.time = lambda: _real_time() + _skew
"""


def pipeline(receiver_url: str) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": "orders",
                "source": {"match": ["order.*"]},
                "destinations": [{"webhook.out": {"url": receiver_url + "/hooks", "timeout": 20}}],
            }
        ]
    }


async def test_a_worker_with_a_fast_clock_leaves_held_deliveries_alone(
    pg_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    skewed = tmp_path / "skewed-clock"
    skewed.mkdir()
    (skewed / "sitecustomize.py").write_text(SKEWED_CLOCK)
    receiver.default = Reply(status=200, delay=HOLD_SECONDS)
    async with Cluster(tmp_path, pg_url, lease_seconds=LEASE_SECONDS) as cluster:
        keys = await cluster.init_project()
        await cluster.apply(pipeline(receiver.url))
        api = await cluster.start("api")
        await cluster.start("worker")
        status, body = await cluster.request(
            api, "POST", "/v1/events", key=keys.ingest, json={"type": "order.created", "payload": {"n": 1}}
        )
        assert status == 202, body
        # The first worker is sending it; the receiver holds the request.
        await wait_until(lambda: len(receiver.requests) == 1, timeout=20, what="the first attempt")
        fast = await cluster.start(
            "worker", PYTHONPATH=str(skewed), TEST_CLOCK_SKEW_SECONDS=str(SKEW_SECONDS)
        )
        # The fast worker polls for due deliveries while the first attempt is still held.
        await asyncio.sleep(POLLING_SECONDS)
        assert receiver.requests[0].answered_at is None, "the first attempt was answered too soon"
        receiver.release_held()
        await cluster.wait_for_counts(api, keys.admin, {"delivered": 1}, timeout=30)
        await asyncio.sleep(1.0)

    assert len(receiver.requests) == 1, [r.headers["X-Ingestlayer-Attempt"] for r in receiver.requests]
    assert f"clock is {SKEW_SECONDS:.1f} s ahead of the database's" in fast.log()
