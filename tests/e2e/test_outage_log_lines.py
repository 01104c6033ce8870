"""A brief PostgreSQL outage is a few lines in the api's log, not a traceback per request.

Each ingest that failed logged an ERROR with a ~55-line traceback (a 10 s outage at ~10
requests a second came to ~2,700 lines), and each management request one line, though every
caller got its 503 with Retry-After. Now the failures are one line with the reason, one every
few seconds with the count since, and one when ingest works again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.freezing_proxy import FreezingProxy
from tests.support.processes import Cluster, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.timeout(90)]

OUTAGE_SECONDS = 4.0


async def test_a_database_outage_is_a_few_log_lines(pg_url: str, tmp_path: Path) -> None:
    proxy = await FreezingProxy.to(pg_url)
    try:
        async with Cluster(tmp_path, pg_url) as cluster:
            keys = await cluster.init_project()
            # A key this api has not seen: looked up in the database, which is away.
            unseen = await cluster.init_project("other")
            api = await cluster.start("api", INGESTLAYER_DATABASE_URL=proxy.url(pg_url))
            event = {"type": "a.b", "payload": {}}
            status, body = await cluster.request(api, "POST", "/v1/events", key=keys.ingest, json=event)
            assert status == 202, body
            before = len(api.log().splitlines())

            await proxy.refuse()
            ends = time.monotonic() + OUTAGE_SECONDS
            answers: list[int] = []
            while time.monotonic() < ends:  # ~20 requests a second, ingest and management
                status, _ = await cluster.request(api, "POST", "/v1/events", key=keys.ingest, json=event)
                answers.append(status)
                status, _ = await cluster.request(api, "GET", "/v1/deliveries", key=keys.admin)
                answers.append(status)
                status, _ = await cluster.request(api, "POST", "/v1/events", key=unseen.ingest, json=event)
                answers.append(status)
                await asyncio.sleep(0.05)
            assert set(answers) == {503}, answers
            await proxy.restore()

            async def ingesting() -> bool:
                status, _ = await cluster.request(api, "POST", "/v1/events", key=keys.ingest, json=event)
                return status == 202

            await wait_until(ingesting, 20, "ingest after the outage", api)
            status, body = await cluster.request(api, "POST", "/v1/events", key=unseen.ingest, json=event)
            assert status == 202, body
            await wait_until(lambda: "works again" in api.log(), 10, "the recovery line", api)

            lines = api.log().splitlines()[before:]
            shown = "\n".join(lines)
            assert "Traceback" not in shown, shown
            # The first failure, one every 5 s, the recovery; management requests and key lookups
            # the same. Before: over 50 lines per failed ingest.
            assert len(lines) <= 16, shown
            assert any("database unavailable" in line for line in lines), shown
            # Ingest refused for a key it could not look up was not in the log at all.
            assert any("checking ingest keys failed" in line for line in lines), shown
            assert any("checking ingest keys works again" in line for line in lines), shown
            assert len(answers) >= 20, answers  # enough requests that one line each would show
    finally:
        await proxy.close()


async def test_a_retention_purge_the_database_is_away_for_is_a_line_not_a_traceback(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from ingestlayer.config import Settings
    from ingestlayer.runtime import Runtime
    from tests.support.server import TEST_SECRET_KEY

    proxy = await FreezingProxy.to(pg_url)
    settings = Settings.from_env().with_overrides(
        database_url=proxy.url(pg_url), secret_key=TEST_SECRET_KEY, retention_days=1.0, database_timeout=1.0
    )
    rt = Runtime(settings, api=False, worker=True)
    try:
        await proxy.refuse()
        purging = asyncio.create_task(rt._retention())
        await wait_until(lambda: "retention purge" in caplog.text, 20, "the purge's line")
        rt.stop.set()
        await purging
        await proxy.restore()
        lines = [r for r in caplog.records if "retention purge" in r.getMessage()]
        assert [r.levelname for r in lines] == ["WARNING"], caplog.text
        assert "retention purge failed: database unavailable" in lines[0].getMessage()
        assert lines[0].exc_info is None and "Traceback" not in caplog.text, caplog.text
    finally:
        await rt.store.close()
        await proxy.close()
