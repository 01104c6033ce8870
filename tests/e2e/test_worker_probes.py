"""A `worker` run apart from the API serves its own /healthz, /readyz and /metrics (`--port`, or
INGESTLAYER_WORKER_PORT): its attempt counters were nowhere to scrape before."""

from __future__ import annotations

import signal
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import Cluster, post_events, wait_until
from tests.support.receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

N_EVENTS = 5


def attempts_by_result(text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(text):
        if family.name == "ingestlayer_delivery_attempts":
            return {s.labels["result"]: s.value for s in family.samples if s.name.endswith("_total")}
    raise AssertionError("no ingestlayer_delivery_attempts_total in /metrics")


async def test_a_worker_serves_its_probes_and_counters(
    sqlite_url: str, tmp_path: Path, receiver: Receiver
) -> None:
    async with Cluster(tmp_path, sqlite_url) as cluster, aiohttp.ClientSession() as http:
        keys = await cluster.init_project()
        await cluster.apply(
            {
                "pipelines": [
                    {
                        "name": "orders",
                        "source": {"match": ["order.*"]},
                        "destinations": [{"webhook.out": {"url": receiver.url + "/hooks"}}],
                    }
                ]
            }
        )
        api = await cluster.start("api")
        worker = await cluster.start("worker", probes=True)  # ready once its /healthz answers
        base = worker.url

        async with http.get(base + "/healthz") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ok"}
        async with http.head(base + "/healthz") as resp:  # what uptime monitors send
            assert resp.status == 200 and await resp.read() == b""
        async with http.get(base + "/readyz") as resp:
            assert resp.status == 200 and await resp.json() == {"status": "ready"}
        async with http.get(base + "/metrics") as resp:
            assert resp.status == 200
            assert attempts_by_result(await resp.text()) == {"delivered": 0, "retrying": 0, "dead": 0}
        async with http.get(base + "/v1/events") as resp:
            assert resp.status == 404  # the probes only: nothing else is served there

        await post_events(cluster, api, keys, 0, N_EVENTS)
        await wait_until(lambda: len(receiver.requests) == N_EVENTS, timeout=30, what="the deliveries")

        async def counted() -> bool:
            async with http.get(base + "/metrics") as resp:
                return attempts_by_result(await resp.text())["delivered"] == N_EVENTS

        await wait_until(counted, timeout=10, what="the worker's counters")

        worker.signal(signal.SIGTERM)
        assert await worker.wait_exit(30) == 0
        with pytest.raises(aiohttp.ClientConnectionError):
            async with http.get(base + "/healthz"):
                pass
