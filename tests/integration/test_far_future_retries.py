"""Retry delays are bounded (30 days), and a time stored before they were (a retry due past the
year 9999) no longer turns every answer and page that shows it into a 500."""

from __future__ import annotations

import time

from sqlalchemy import insert

from ingestlayer.ids import new_id
from ingestlayer.store.schema import deliveries
from tests.support.dashboard_client import Browser, signed_in
from tests.support.server import RunningServer


async def test_a_retry_delay_over_thirty_days_is_refused_naming_it(server: RunningServer) -> None:
    for retry, field in (
        ({"schedule": [0, 1e300]}, "retry.schedule[1]"),
        ({"schedule": [0, 60, 2592001]}, "retry.schedule[2]"),
    ):
        status, body = await server.request(
            "POST", "/v1/endpoints", json={"url": "http://127.0.0.1:9/in", "events": ["a.*"], "retry": retry}
        )
        assert status == 422, body
        assert "30 days" in body["error"]["message"] and field in body["error"]["message"], body
    status, body = await server.request(
        "POST",
        "/v1/endpoints",
        json={"url": "http://127.0.0.1:9/in", "events": ["a.*"], "retry": {"schedule": [0, 2592000]}},
    )
    assert status == 201, body


async def test_a_retry_stored_due_past_the_year_9999_is_shown(
    server: RunningServer, browser: Browser
) -> None:
    dlv, now = new_id("dlv"), time.time()
    async with server.runtime.store.engines.write.begin() as conn:
        await conn.execute(
            insert(deliveries).values(
                id=dlv,
                project_id=server.project_id,
                event_id=new_id("evt"),
                event_type="invoice.failed",
                pipeline_id="pip_x",
                destination_id="dst_x",
                status="retrying",
                attempts=1,
                body="{}",
                due_at=now + 1e300,
                last_error="connection refused",
                created_at=now,
                updated_at=now,
            )
        )
    status, body = await server.request("GET", f"/v1/deliveries/{dlv}")
    assert status == 200, body
    assert body["next_attempt_at"] == "9999-12-31T23:59:59.000Z", body
    status, listed = await server.request("GET", "/v1/deliveries?status=retrying")
    assert status == 200 and [d["id"] for d in listed["data"]] == [dlv], listed
    await signed_in(browser, server)
    for path in (f"/deliveries/{dlv}", "/webhooks/logs", "/webhooks/dead", "/"):
        page = await browser.get(path)
        assert page.status == 200, (path, page.status, page.text[:300])
