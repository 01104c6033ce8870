"""The ingest rate limit holds for a project across every api process on one PostgreSQL
database (SPEC §11: per-project rate limits). It used to be counted per process: two api
processes behind a load balancer let a project send twice its limit.

Real processes on a fresh database; requests alternate between them as fast as they answer.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support.processes import Cluster

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(120)]

RATE = 20  # events a second, one second of burst


async def test_two_api_processes_share_one_projects_limit(pg_url: str, tmp_path: Path) -> None:
    async with Cluster(tmp_path, pg_url, INGESTLAYER_INGEST_RATE_LIMIT=str(RATE)) as cluster:
        keys = await cluster.init_project()
        a1, a2 = await asyncio.gather(cluster.start("api"), cluster.start("api"))
        accepted = {a1.port: 0, a2.port: 0}
        refused = 0
        headers = {"Authorization": f"Bearer {keys.ingest}"}
        async with aiohttp.ClientSession() as http:

            async def sender(port: int, seconds: float) -> None:
                nonlocal refused
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline:
                    url = f"http://127.0.0.1:{port}/v1/events"
                    async with http.post(url, json={"type": "burst.e"}, headers=headers) as resp:
                        if resp.status == 202:
                            accepted[port] += 1
                        else:
                            assert resp.status == 429, await resp.text()
                            assert int(resp.headers["Retry-After"]) >= 1
                            refused += 1

            start = time.monotonic()
            # Four senders a process, for three seconds.
            await asyncio.gather(*(sender(p, 3.0) for p in (a1.port, a2.port) for _ in range(4)))
            elapsed = time.monotonic() - start

        total = sum(accepted.values())
        # One bucket: its burst plus what refilled meanwhile, and at most one slice per process
        # taken but not spent (1/20 s of the rate). Two buckets would pass about twice that.
        assert total <= RATE + RATE * elapsed + 2, (accepted, elapsed)
        # At least half the rate over the three seconds of sending (a last slow answer may stretch
        # elapsed past them, and no request was sent meanwhile to take what refilled).
        assert total >= RATE * min(elapsed, 3.0) * 0.5, (accepted, elapsed)
        assert all(n > 0 for n in accepted.values()), accepted  # both processes take part
        assert refused > 0
        status, listed = await cluster.request(a1, "GET", "/v1/events?limit=200", key=keys.admin)
        assert status == 200 and len(listed["data"]) == total, listed
