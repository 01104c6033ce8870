"""What an operator running several ``api`` and ``worker`` processes on PostgreSQL relies on
(SPEC §11): a change made through one api process holds in every worker, at once.

Real processes share one fresh database; a real receiver records every request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.test_worker_probes import attempts_by_result
from tests.support.processes import Cluster, Keys, Proc
from tests.support.receiver import Receiver, Reply

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(120)]

# The first attempt at once, the next an hour later: a failed delivery waits as "retrying".
HOURLY = {"schedule": [0, 3600], "jitter": 0}


async def send(cluster: Cluster, api: Proc, keys: Keys, type_: str, n: int) -> None:
    items = [{"type": type_, "payload": {"n": i}} for i in range(n)]
    status, body = await cluster.request(api, "POST", "/v1/events", key=keys.ingest, json={"batch": items})
    assert status == 202, body


async def dead_attempts(api: Proc) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{api.port}/metrics") as resp:
        return attempts_by_result(await resp.text())["dead"]


async def test_deleting_a_destination_ends_its_retrying_deliveries_in_every_process(
    pg_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    """Deleted through one api, an endpoint's and a pipeline's deliveries that wait for a retry
    end ``dead`` at once, as a disabled endpoint's do; they used to show "retrying" for a
    destination that no longer exists until their next attempt (hours, on the default
    schedule), and kept their events from retention meanwhile."""
    receiver.default = Reply(status=500)
    async with Cluster(tmp_path, pg_url) as cluster:
        keys = await cluster.init_project()
        await cluster.apply(
            {
                "pipelines": [
                    {
                        "name": "orders",
                        "source": {"match": ["order.*"]},
                        "destinations": [{"webhook.out": {"url": receiver.url + "/orders"}, "retry": HOURLY}],
                    }
                ]
            }
        )
        a1, a2, w1, w2 = await asyncio.gather(
            cluster.start("api"), cluster.start("api"), cluster.start("worker"), cluster.start("worker")
        )
        procs = (a1, a2, w1, w2)
        status, ep = await cluster.request(
            a1,
            "POST",
            "/v1/endpoints",
            key=keys.admin,
            json={"url": receiver.url + "/invoices", "events": ["invoice.*"], "retry": HOURLY},
        )
        assert status == 201, ep
        await send(cluster, a2, keys, "order.created", 3)
        await send(cluster, a2, keys, "invoice.paid", 3)
        await cluster.wait_for_counts(a2, keys.admin, {"retrying": 6}, 20, *procs)
        seen = len(receiver.requests)

        status, _ = await cluster.request(a1, "DELETE", f"/v1/endpoints/{ep['id']}", key=keys.admin)
        assert status == 204
        status, _ = await cluster.request(a2, "DELETE", "/v1/pipelines/orders", key=keys.admin)
        assert status == 204

        await cluster.wait_for_counts(a1, keys.admin, {"dead": 6}, 5, *procs)
        for d in await cluster.all_deliveries(a1, keys.admin):
            status, full = await cluster.request(a2, "GET", f"/v1/deliveries/{d['id']}", key=keys.admin)
            assert status == 200, full
            assert full["last_error"] == "destination was deleted", full
            assert [a["error"] for a in full["attempts"]][-1] == "destination was deleted"
        assert len(receiver.requests) == seen  # nothing more was sent to the deleted destinations
        # Each api process counts the deliveries it ended, as a worker counts the ones it ends.
        for api in (a1, a2):
            assert await dead_attempts(api) == 3, api.describe()
        assert all(p.returncode is None for p in procs), [p.describe() for p in procs]
