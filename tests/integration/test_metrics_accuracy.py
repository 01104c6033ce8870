"""The numbers an operator watches, checked against the database after real traffic.

A real receiver fails some deliveries, some are retried, some go dead and are replayed; some
events are idempotent repeats. Then ``GET /metrics`` (parsed by prometheus_client's own parser)
and the dashboard's overview must say what the database holds.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, insert, select, update

from ingestlayer import clock
from ingestlayer.api.dashboard_views import success_chart, throughput_chart
from ingestlayer.ids import new_id
from ingestlayer.store.schema import attempts, deliveries, events
from ingestlayer.store.stats import DashboardStats, id_bound
from tests.support.dashboard_client import Browser, signed_in
from tests.support.processes import Cluster
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, wait_for

FAST = {"schedule": [0, 0.05, 0.05], "jitter": 0}  # three attempts, then dead


class FlakyReceiver(Receiver):
    """Answers each delivery by its event's payload: ``fail`` attempts get 500 first, then 200;
    ``fail: -1`` always fails. ``healed`` makes every later attempt succeed (for replays)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, int] = {}
        self.healed = False

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        dlv = request.headers["X-Ingestlayer-Delivery"]
        n = self.seen[dlv] = self.seen.get(dlv, 0) + 1
        fail = int(body["payload"].get("fail", 0))
        if not self.healed and (fail < 0 or n <= fail):
            return web.Response(status=500, text="boom")
        return web.Response(status=200, text="ok")


@pytest.fixture
async def flaky() -> AsyncIterator[FlakyReceiver]:
    r = await FlakyReceiver().start()
    yield r
    await r.stop()


async def scrape(server: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, by (name, labels), through Prometheus's own parser."""
    async with server.session.get(server.url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = await resp.text()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def delta(after: dict[Any, float], before: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


async def db_scalar(server: RunningServer, stmt: Any) -> Any:
    async with server.runtime.store.engines.read.connect() as conn:
        return await conn.scalar(stmt)


async def settled(server: RunningServer) -> bool:
    open_ = await db_scalar(
        server,
        select(func.count()).where(deliveries.c.status.in_(("pending", "delivering", "retrying"))),
    )
    return open_ == 0


async def test_metrics_and_overview_match_the_database(server: RunningServer, flaky: FlakyReceiver) -> None:
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "hooks",
                    "source": {"match": ["job.*"]},
                    "destinations": [
                        {"webhook.out": {"url": flaky.url + "/a"}, "retry": FAST},
                        {"webhook.out": {"url": flaky.url + "/b"}, "retry": FAST},
                    ],
                }
            ]
        }
    )
    before = await scrape(server)

    # 12 events: 4 delivered at once, 4 after one failure, 4 dead after three; 3 repeats.
    for i in range(12):
        status, body = await server.ingest(
            "job.done", {"i": i, "fail": (0, 1, -1)[i % 3]}, idempotency_key=f"k{i}"
        )
        assert status == 202, body
    for i in range(3):
        status, body = await server.ingest("job.done", {"i": i}, idempotency_key=f"k{i}")
        assert status == 200 and body["duplicate"] is True
    # A batch: a repeat of an earlier event, and a new key twice (the second is a repeat).
    batch = [
        {"type": "job.done", "payload": {"i": 99}, "idempotency_key": "k5"},
        {"type": "job.done", "payload": {"i": 12}, "idempotency_key": "kb"},
        {"type": "job.done", "payload": {"i": 13}, "idempotency_key": "kb"},
    ]
    status, body = await server.request("POST", "/v1/events", key=server.ingest_key, json={"batch": batch})
    assert status in (200, 202, 207), body
    await wait_for(lambda: settled(server), 20)

    # Replay the dead ones: the receiver now answers 2xx.
    flaky.healed = True
    status, body = await server.request("POST", "/v1/deliveries/replay", json={"status": ["dead"]})
    assert status == 200 and body["count"] == 8, body
    await wait_for(lambda: settled(server), 20)
    # 10 at once, 8 after one failure, 8 dead after three then delivered on replay.
    expected_attempts = 10 + 8 * 2 + 8 * 4

    async def recorded() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        """The counters once the writer has recorded the last attempts' rows and counted them."""
        scraped = await scrape(server)
        rows = await db_scalar(server, select(func.count()).select_from(attempts))
        counted = delta(scraped, before, "ingestlayer_delivery_attempt_seconds_count")
        return scraped if rows == counted == expected_attempts else None

    after = await wait_for(recorded, 20)
    n_events = await db_scalar(server, select(func.count()).select_from(events))
    n_deliveries = await db_scalar(server, select(func.count()).select_from(deliveries))
    n_attempts = await db_scalar(server, select(func.count()).select_from(attempts))
    n_ok = await db_scalar(server, select(func.count()).where(attempts.c.error.is_(None)))
    total_seconds = await db_scalar(server, select(func.sum(attempts.c.duration_ms))) / 1000
    assert (n_events, n_deliveries) == (13, 26)
    assert n_attempts == expected_attempts and n_ok == 26

    assert delta(after, before, "ingestlayer_events_ingested_total") == n_events
    assert delta(after, before, "ingestlayer_events_duplicate_total") == 5
    assert delta(after, before, "ingestlayer_deliveries_created_total") == n_deliveries
    by_result = {
        r: delta(after, before, "ingestlayer_delivery_attempts_total", result=r)
        for r in ("delivered", "retrying", "dead")
    }
    assert by_result == {"delivered": 26, "retrying": 8 + 8 * 2, "dead": 8}
    assert sum(by_result.values()) == n_attempts
    assert delta(after, before, "ingestlayer_delivery_attempt_seconds_count") == n_attempts
    seconds = delta(after, before, "ingestlayer_delivery_attempt_seconds_sum")
    assert seconds == pytest.approx(total_seconds, rel=1e-6, abs=1e-6)

    # The dashboard's overview, on the same rows.
    stats = DashboardStats(server.runtime.store.engines)
    series = await stats.series(server.project_id, "1h")
    assert series.events == n_events
    assert series.attempts == n_attempts and series.ok == n_ok
    counts = await server.runtime.store.delivery_counts(
        server.project_id, since_id=id_bound("dlv", series.start), zeros=True
    )
    assert counts == {"pending": 0, "delivering": 0, "retrying": 0, "delivered": 26, "dead": 0}


# ---- success is the outcome, not a status code ---------------------------------------------------


async def insert_attempts(
    server: RunningServer, rows: list[tuple[float, int | None, str | None]], *, status: str = "delivered"
) -> list[str]:
    """One delivery per (started_at, status_code, error), each with that one attempt."""
    ids = []
    async with server.runtime.store.engines.write.begin() as conn:
        for started, code, error in rows:
            dlv = new_id("dlv")
            ids.append(dlv)
            await conn.execute(
                insert(deliveries).values(
                    id=dlv,
                    project_id=server.project_id,
                    event_id=new_id("evt"),
                    event_type="job.done",
                    pipeline_id="pip_x",
                    destination_id="dst_x",
                    status=status,
                    attempts=1,
                    body="{}",
                    last_status_code=code,
                    last_error=error,
                    created_at=started,
                    updated_at=started,
                )
            )
            await conn.execute(
                insert(attempts).values(
                    delivery_id=dlv,
                    project_id=server.project_id,
                    n=1,
                    started_at=started,
                    duration_ms=12.0,
                    status_code=code,
                    error=error,
                )
            )
    return ids


async def test_success_rate_counts_what_the_destinations_call_success(
    server: RunningServer, browser: Browser
) -> None:
    """The PostgreSQL destination succeeds with no status code, and Slack refuses a message with
    HTTP 200. The overview counted the first as failures and Slack's refusals as successes, and
    the logs drew them so (the PostgreSQL successes as "error")."""
    t = clock.now() - 30
    smtp_ok, pg_ok, pg_ok_again, slack_refused, http_500 = await insert_attempts(
        server,
        [
            (t, 250, None),
            (t, None, None),
            (t, None, None),
            (t, 200, "Slack: channel_not_found"),
            (t, 500, "HTTP 500"),
        ],
    )
    series = await DashboardStats(server.runtime.store.engines).series(server.project_id, "1h")
    assert (series.attempts, series.ok) == (5, 3)

    await signed_in(browser, server)
    overview = (await browser.get("/?range=1h")).text
    tile = re.search(r'Success rate.*?<p class="tile-value">([^<]+)</p>', overview, re.S)
    assert tile is not None and tile.group(1) == "60.0 %"

    logs = (await browser.get("/webhooks/logs")).text
    rows = [r for r in re.split(r"<tr[ >]", logs) if "/deliveries/dlv_" in r]
    badges = {
        re.findall(r'href="/deliveries/(dlv_\w+)"', r)[0]: re.findall(r'class="code (code-\w+)"', r)[0]
        for r in rows
    }
    assert badges == {
        smtp_ok: "code-ok",
        pg_ok: "code-ok",
        pg_ok_again: "code-ok",
        slack_refused: "code-bad",
        http_500: "code-bad",
    }
    for dlv, shown in ((pg_ok, "ok"), (slack_refused, "200")):
        page = (await browser.get(f"/deliveries/{dlv}")).text
        assert re.search(rf'<span class="code code-(ok|bad)"[^>]*>{shown}</span>', page), dlv


# ---- the database's clock ------------------------------------------------------------------------


async def test_the_overview_follows_the_database_clock(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This machine's clock ten minutes behind the database's, which stamps every attempt: the
    newest attempts fell after the window's last bucket, and were not shown at all."""
    monkeypatch.setattr(clock.CLOCK, "offset", 600.0)
    await insert_attempts(server, [(clock.now() - 5, 200, None)])
    stats = DashboardStats(server.runtime.store.engines)
    assert (await stats.series(server.project_id, "1h")).attempts == 1


async def test_a_bucket_is_cached_only_once_closed_on_the_database_clock(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This machine's clock ten minutes ahead: a minute the database is still stamping attempts
    in looked closed for minutes, was cached with what it held then, and stayed so for hours."""
    monkeypatch.setattr(clock.CLOCK, "offset", -600.0)
    stats = DashboardStats(server.runtime.store.engines)
    now = clock.now()
    minute = now - now % 60
    await insert_attempts(server, [(minute + 0.5, 200, None)])
    assert (await stats.series(server.project_id, "1h")).attempts == 1
    await insert_attempts(server, [(minute + 1.0, 200, None)])  # the same, still open, minute
    assert (await stats.series(server.project_id, "1h")).attempts == 2


async def test_relative_times_are_on_the_database_clock(
    server: RunningServer, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry due in 5 minutes by the database's clock read "in 15 min" on a machine 10
    minutes behind it."""
    monkeypatch.setattr(clock.CLOCK, "offset", 600.0)
    (dlv,) = await insert_attempts(server, [(clock.now() - 5, 503, "HTTP 503")], status="retrying")
    async with server.runtime.store.engines.write.begin() as conn:
        await conn.execute(
            update(attempts).where(attempts.c.delivery_id == dlv).values(next_retry_at=clock.now() + 300)
        )
    await signed_in(browser, server)
    page = (await browser.get(f"/deliveries/{dlv}")).text
    assert "in 4 min" in page or "in 5 min" in page, re.findall(r"in \d+ \w+", page)


# ---- a process's /metrics from its start ---------------------------------------------------------


@pytest.mark.timeout(60)
async def test_a_fresh_process_exposes_every_attempt_result_at_zero(sqlite_url: str, tmp_path: Path) -> None:
    """Without them, ``increase(ingestlayer_delivery_attempts_total{result="dead"}[5m])`` cannot
    see the first dead letter after a restart: the series appeared with its first increment."""
    async with Cluster(tmp_path, sqlite_url) as cluster:
        proc = await cluster.start("serve")
        assert cluster.session is not None
        async with cluster.session.get(proc.url + "/metrics") as resp:
            text = await resp.text()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    for result in ("delivered", "retrying", "dead"):
        assert samples[("ingestlayer_delivery_attempts_total", (("result", result),))] == 0
    # Timeouts (destinations allow up to 60 s) have a bucket of their own, apart from +Inf.
    assert ("ingestlayer_delivery_attempt_seconds_bucket", (("le", "60.0"),)) in samples


# ---- bucket edges and empty buckets --------------------------------------------------------------


async def test_buckets_at_their_edges_and_empty_ones(server: RunningServer) -> None:
    """A bucket is [start, end): what happens at a minute's first millisecond is in that minute,
    a millisecond before it in the one before; a minute with nothing is 0 events and no rate."""
    now = clock.now()
    edge = now - now % 60 - 600  # a whole minute, ten minutes ago
    async with server.runtime.store.engines.write.begin() as conn:
        for ts in (edge - 0.001, edge, edge + 59.999):
            await conn.execute(
                insert(events).values(
                    # The least id of that millisecond, and one more: ids are evt_ + ULID.
                    id=id_bound("evt", ts)[:-1] + "1",
                    project_id=server.project_id,
                    type="job.done",
                    payload="{}",
                    source="api",
                    occurred_at=ts,
                    received_at=ts,
                )
            )
    await insert_attempts(
        server, [(edge - 0.001, 200, None), (edge, 500, "HTTP 500"), (edge + 59.999, 200, None)]
    )
    series = await DashboardStats(server.runtime.store.engines).series(server.project_id, "1h")
    by_start = {p.start: p for p in series.points}
    before, at, after = by_start[edge - 60], by_start[edge], by_start[edge + 60]
    assert (before.events, before.attempts, before.ok) == (1, 1, 1)
    assert (at.events, at.attempts, at.ok) == (2, 2, 1)
    assert (after.events, after.attempts, after.success_rate, after.p50) == (0, 0, None, None)
    assert all(p.start % 60 == 0 and p.end - p.start == 60 for p in series.points)
    assert series.points[-1].start <= now < series.points[-1].end

    # Drawn: two minutes side by side are one run; after two empty minutes the line starts again
    # instead of joining across them.
    await insert_attempts(server, [(edge + 180, 200, None)])
    series = await DashboardStats(server.runtime.store.engines).series(server.project_id, "1h")
    (line,) = success_chart(series).lines
    # A minute alone is no line (a one-point polyline draws nothing): its dot, shown always, is.
    assert len(line.dots) == 3 and len(line.segments) == 1
    assert len(line.segments[0].split()) == 2
    assert [alone for *_, alone in line.dots] == [False, False, True]
    assert len(throughput_chart(series).bars) == 2
