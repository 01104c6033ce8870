"""The dashboard in a real browser: Debian's Chromium driven by Playwright.

1. A user signs in, adds an endpoint pointing at a local receiver (Webhooks → Add Endpoint),
   sends a test event and sees it delivered; then the receiver fails, and the Logs show the
   delivery retrying, then dead; the user replays it from Dead letters and sees it delivered.
2. With the seed recipes applied, several hundred events sent through them and a week of history
   behind them, every main page is rendered and photographed. The PNGs land in the test's
   temporary folder; with ``INGESTLAYER_UPDATE_SCREENSHOTS=1`` they also replace
   ``docs/screenshots/*.png``.

Chromium is Debian's (``/usr/bin/chromium``), never a downloaded build. Without it the tests are
skipped, except with ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chat_server import ChatServer, user_text
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, start_server, wait_for

pytestmark = [pytest.mark.timeout(150)]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "docs" / "screenshots"
HOOK_SECRET = "whsec_c2NyZWVuc2hvdC1ob29rLXNlY3JldC0xMjM0NTY3OA"


async def new_page(chromium: Any, width: int = 1280, height: int = 860) -> Any:
    context = await chromium.new_context(viewport={"width": width, "height": height}, locale="en-US")
    page = await context.new_page()
    page.set_default_timeout(15_000)
    return page


async def sign_in(page: Any, server: RunningServer) -> None:
    await page.goto(server.url + "/")
    assert page.url.endswith("/login")
    await page.get_by_label("Admin key").fill(server.admin_key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(server.url + "/")
    await page.get_by_role("heading", name="Overview").wait_for()


async def reload_until(page: Any, check: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Reload the page until ``check`` holds (no JavaScript polls on these pages)."""
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{page.url}: condition not met within {timeout}s")
        await asyncio.sleep(0.25)
        await page.reload()


# ---- 1. endpoint → test → retrying → dead → replay → delivered ------------------------------


async def test_endpoint_test_send_retries_dead_letter_and_replay(
    server: RunningServer, receiver: Receiver, chromium: Any
) -> None:
    page = await new_page(chromium)
    await sign_in(page, server)

    # Dashboard → Webhooks → Add Endpoint
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Webhooks").click()
    await page.get_by_role("link", name="Add Endpoint").first.click()
    await page.get_by_label("Endpoint URL").fill(receiver.url + "/usageflow/webhook")
    await page.get_by_label("Event types").fill("invoice.created\ninvoice.failed")
    await page.get_by_label("HMAC signature").check()
    await page.get_by_label("Body format").select_option("data")
    await page.get_by_text("Timeout, retries and description").click()
    await page.get_by_label("Retry schedule (seconds)").fill("0, 2, 2")
    await page.get_by_role("button", name="Add endpoint").click()
    await page.get_by_text("it is shown only this once").wait_for()
    secret = await page.get_by_label("New signing secret").input_value()
    assert secret

    # Send test event: the page shows what the receiver answered.
    await page.get_by_role("button", name="Send test event").click()
    result = page.locator("#test-result")
    await result.wait_for()
    assert await result.locator(".badge").inner_text() == "delivered"
    assert "200" in await result.inner_text() and "received" in await result.inner_text()
    receiver.requests[-1].verify(secret)

    # The receiver starts failing: the delivery retries on the endpoint's schedule, then is dead.
    receiver.default = Reply(status=500, body=b'{"error":"database unavailable"}')
    status, sent = await server.ingest("invoice.failed", {"invoiceId": "inv_123", "amount": 120})
    assert status == 202
    await page.get_by_role("navigation", name="Webhooks").get_by_role("link", name="Logs").click()
    row = page.locator("table.logs tbody tr", has_text=sent["id"]).first

    async def row_status(expected: str) -> bool:
        return bool(await row.count()) and await row.locator(".badge").inner_text() == expected

    await reload_until(page, lambda: row_status("retrying"))
    assert "500" in await row.inner_text()
    await reload_until(page, lambda: row_status("dead"))
    assert await page.locator("table.logs tbody tr", has_text=sent["id"]).count() == 3  # every attempt

    # Dead letters → Replay; the receiver is back, so the replay lands.
    receiver.default = Reply(status=200)
    await page.get_by_role("link", name="Dead letters").click()
    dead_row = page.locator("table.dead tbody tr", has_text=sent["id"])
    delivery_id = await dead_row.get_by_role("link", name=re.compile("^dlv_")).inner_text()
    await dead_row.get_by_role("button", name=re.compile("^Replay")).click()
    await page.get_by_text("Replaying").wait_for()
    assert await page.locator("table.dead tbody tr", has_text=sent["id"]).count() == 0
    await page.goto(f"{server.url}/deliveries/{delivery_id}")

    async def delivered() -> bool:
        return await page.locator(".page-head .badge").inner_text() == "delivered"

    await reload_until(page, delivered)
    assert await page.locator("table.attempts tbody tr").count() == 4
    last = [r for r in receiver.requests if r.path == "/usageflow/webhook"][-1]
    assert last.verify(secret)["data"]["invoiceId"] == "inv_123"
    await page.context.close()


# ---- the API reference, offline --------------------------------------------------------------


async def test_api_reference_renders_with_no_internet(server: RunningServer, chromium: Any) -> None:
    """``/docs`` with every request off this server refused, as behind a firewall."""
    page = await new_page(chromium)
    elsewhere: list[str] = []

    async def only_this_server(route: Any) -> None:
        if route.request.url.startswith(server.url):
            await route.continue_()
        else:
            elsewhere.append(route.request.url)
            await route.abort()

    await page.route("**/*", only_this_server)
    await page.goto(server.url + "/docs")
    operation = page.locator(".opblock-post", has_text="/v1/events").first
    await operation.wait_for()
    assert "Send one event or a batch" in await operation.inner_text()
    assert elsewhere == []
    await page.context.close()


# ---- 2. realistic data, every main page, screenshots -----------------------------------------


def _recipes(receiver_url: str, chat_url: str, slack_url: str) -> dict[str, Any]:
    """The seed recipes, every URL pointed at a local server (nothing leaves 127.0.0.1)."""
    pipelines: list[Any] = []
    for path in sorted((ROOT / "examples" / "recipes").glob("*.yaml")):
        if path.name == "billing-events-to-endpoint.yaml":
            continue  # added through the dashboard's form instead, as the UsageFlow docs say
        text = path.read_text()
        for public, local in (
            ("https://api.acme.com", receiver_url),
            ("https://api.yourapp.com", receiver_url),
            ("https://api.openai.com/v1", chat_url),
        ):
            text = text.replace(public, local)
        for pipeline in yaml.safe_load(text)["pipelines"]:
            for dest in pipeline["destinations"]:
                if "slack" in dest:
                    dest["slack"]["api_base"] = slack_url
            pipelines.append(pipeline)
    return {"pipelines": pipelines}


def _urgency(body: dict[str, Any]) -> str:
    text = user_text(body).lower()
    return "critical" if any(w in text for w in ("500", "down", "outage", "failing")) else "low"


async def _seed(server: RunningServer, receiver: Receiver, slack: Receiver, chat: ChatServer) -> None:
    for name in ("acme-hooks", "billing-hooks"):
        await server.set_secret(name, HOOK_SECRET)
    await server.set_secret("openai", "sk-test-key")
    await server.set_secret("slack-main", "xoxb-test-bot-token")
    await server.apply(_recipes(receiver.url, chat.url, slack.url + "/api"))
    companies = {
        "acme.com": "Acme Corp",
        "globex.io": "Globex",
        "initech.com": "Initech",
        "hooli.xyz": "Hooli",
    }
    for domain, name in companies.items():
        status, _ = await server.request(
            "PUT", f"/v1/entities/company/{domain}", json={"traits": {"company": name, "country": "US"}}
        )
        assert status == 200
    plans = ["free", "pro", "team", "enterprise"]
    owners = ["maya@ours.io", "li@ours.io", "sam@ours.io"]
    for i in range(40):
        status, _ = await server.request(
            "POST",
            "/v1/group",
            json={
                "user_id": f"usr_{1000 + i}",
                "account_id": f"acc_{100 + i // 3}",
                "traits": {"plan": plans[(i // 3) % 4], "owner": owners[i % 3]},
            },
        )
        assert status == 200


async def _traffic(server: RunningServer, receiver: Receiver) -> None:
    """Several hundred events through the recipes and endpoints, as the SDKs would send them."""
    rng = random.Random(7)
    companies = ["acme.com", "globex.io", "initech.com", "hooli.xyz"]
    plans = ["free", "pro", "team", "enterprise"]
    # Replies with realistic latency; now and then a 500 or 503 (retried in a minute).
    receiver.plan = [
        Reply(
            status=rng.choice([500, 503]) if rng.random() < 0.06 else 200, delay=rng.lognormvariate(-3.2, 0.6)
        )
        for _ in range(2000)
    ]
    features = ["csv.export", "api", "webhook", "dashboard.share", "sso", "dark-mode"]
    subjects = [
        ("Production API returns 500 for every request", "enterprise"),
        ("How do I add a teammate?", "free"),
        ("Webhook deliveries failing since this morning", "pro"),
        ("Question about annual billing", "pro"),
    ]
    batch: list[dict[str, Any]] = []
    for i in range(260):
        roll = rng.random()
        user = f"usr_{1000 + rng.randrange(40)}"
        if roll < 0.45:
            item = {
                "type": "feature.used",
                "payload": {"user_id": user, "feature": rng.choice(features), "count": rng.randint(1, 12)},
            }
        elif roll < 0.6:
            first = rng.choice(["ada", "grace", "alan", "edsger", "barbara", "ken"])
            domain = rng.choice([*companies, "gmail.com"])
            item = {
                "type": "user.signed_up",
                "payload": {
                    "user_id": f"usr_{5000 + i}",
                    "email": f"{first}@{domain}",
                    "plan": rng.choice(plans),
                    "source": "marketing-site",
                    "ip": f"203.0.113.{rng.randrange(1, 250)}",
                },
                "idempotency_key": f"signup-{i}",
            }
        elif roll < 0.9:
            item = {
                "type": rng.choice(["invoice.created", "invoice.paid", "invoice.paid", "invoice.failed"]),
                "payload": {
                    "invoiceId": f"inv_{20000 + i}",
                    "amount": rng.choice([29, 49, 120, 299]),
                    "currency": "usd",
                    "periodStart": "2025-03-01T00:00:00.000Z",
                    "periodEnd": "2025-03-31T00:00:00.000Z",
                },
            }
        else:
            subject, tier = rng.choice(subjects)
            item = {
                "type": "support.ticket.created",
                "payload": {
                    "ticket_id": f"T-{4000 + i}",
                    "subject": subject,
                    "body": f"Hi, {subject.lower()}. Reach me at ops@acme.com or +1 415 555 0100.",
                    "customer_tier": tier,
                    "channel": "email",
                },
            }
        batch.append(item)
    for i in range(0, len(batch), 60):
        status, _ = await server.request(
            "POST", "/v1/events", key=server.ingest_key, json={"batch": batch[i : i + 60]}
        )
        assert status == 202


async def test_main_pages_with_realistic_data_and_screenshots(
    sqlite_url: str, receiver: Receiver, chromium: Any, tmp_path: Path
) -> None:
    from bench.dashboard import backfill, routes_of

    flaky = await Receiver().start()
    flaky.default = Reply(status=503, body=b'{"error":"maintenance"}', delay=0.02)
    slack = await Receiver().start()
    slack.default = Reply(body=b'{"ok":true,"channel":"C0GROWTH","ts":"1717000000.000100"}')
    chat = await ChatServer(answer=_urgency).start()
    server = await start_server(sqlite_url, project="acme-production")
    try:
        await _seed(server, receiver, slack, chat)
        # A week of history behind today's live traffic (written straight into the tables).
        rt = server.runtime
        cfg = await rt.store.load_project_config(server.project_id)
        filled = await backfill(
            rt.store.engines,
            server.project_id,
            routes_of(cfg),
            n_events=12_000,
            fail_rate=0.03,
            now=time.time() - 900,
        )
        assert filled.events == 12_000
        page = await new_page(chromium, 1360, 900)
        await sign_in(page, server)
        # UsageFlow's "Dashboard → Webhooks → Add Endpoint", through the form; and a legacy
        # endpoint that is down, so Dead letters has something in it.
        for url, events, fmt, retry in (
            (
                receiver.url + "/usageflow/webhook",
                "invoice.created, invoice.paid, invoice.failed, subscription.suspended",
                "data",
                "",
            ),
            (flaky.url + "/legacy-crm/hooks", "invoice.failed", "ingestlayer", "0, 0.2"),
        ):
            await page.goto(server.url + "/webhooks/endpoints/new")
            await page.get_by_label("Endpoint URL").fill(url)
            await page.get_by_label("Event types").fill(events)
            await page.get_by_label("Body format").select_option(fmt)
            if retry:
                await page.get_by_text("Timeout, retries and description").click()
                await page.get_by_label("Retry schedule (seconds)").fill(retry)
            await page.get_by_role("button", name="Add endpoint").click()
            await page.get_by_text("it is shown only this once").wait_for()
        await page.goto(server.url + "/webhooks/endpoints")
        await page.get_by_role("link", name=receiver.url + "/usageflow/webhook").click()
        await page.get_by_role("button", name="Send test event").click()
        await page.locator("#test-result").wait_for()
        endpoint_url = page.url

        # Live traffic through the recipes and the endpoints.
        _, before = await server.request("GET", "/v1/deliveries?limit=1")
        await _traffic(server, receiver)

        async def settled() -> bool:
            _, body = await server.request("GET", "/v1/deliveries?limit=1")
            c = body["counts"]
            fresh = c.get("delivered", 0) - before["counts"].get("delivered", 0)
            return bool(fresh > 180 and not c.get("pending") and not c.get("delivering"))

        await wait_for(settled, timeout=60, interval=0.2)
        _, events = await server.request("GET", "/v1/events?type=feature.used&limit=50")
        enriched = next(
            e for e in events["data"] if any(p["steps"] and len(p["steps"]) > 1 for p in e["trace"] or [])
        )
        _, dead = await server.request("GET", "/v1/deliveries?status=dead&limit=1")
        shots = [
            ("overview", "/?range=24h", True),
            ("pipelines", "/pipelines", True),
            ("endpoints", "/webhooks/endpoints", False),
            ("endpoint", endpoint_url.removeprefix(server.url), True),
            ("event", f"/events/{enriched['id']}", True),
            ("events", "/events", False),
            ("delivery-logs", "/webhooks/logs", False),
            ("dead-letters", "/webhooks/dead", False),
            ("delivery", f"/deliveries/{dead['data'][0]['id']}", False),
        ]
        update = os.environ.get("INGESTLAYER_UPDATE_SCREENSHOTS") == "1"
        for name, path, full in shots:
            response = await page.goto(server.url + path)
            assert response is not None and response.status == 200, (path, response and response.status)
            assert await page.locator("main h1").count() >= 1
            # Nothing is loaded from anywhere but this server; no console errors (CSP included).
            target = tmp_path / f"{name}.png"
            await page.screenshot(path=str(target), full_page=full)
            assert target.stat().st_size > 10_000
            if update:
                SHOTS.mkdir(parents=True, exist_ok=True)
                target.replace(SHOTS / f"{name}.png")
        # Checks a person would make on those pages.
        await page.goto(server.url + "/pipelines")
        cards = page.locator("article.recipe")
        assert await cards.count() >= 6
        card = cards.filter(has_text="feature-usage-to-webhook").first
        assert "02 pipeline · 2 steps" in " ".join((await card.inner_text()).split())
        assert await card.locator(".tag-ctl").count() == 1 and await card.locator(".tag-enr").count() == 1
        await card.get_by_text("YAML").click()
        assert "filter.match: feature in {export, api, webhook}" in await card.locator("pre").inner_text()
        await page.goto(server.url + f"/events/{enriched['id']}")
        assert "enrich.entity" in await page.locator(".trace").first.inner_text()
        # The overview's charts have data and are readable at phone width too.
        await page.goto(server.url + "/")
        assert await page.locator("#chart-throughput rect.bar").count() > 20
        phone = await new_page(chromium, 390, 844)
        await sign_in(phone, server)
        await phone.screenshot(path=str(tmp_path / "overview-phone.png"), full_page=True)
        width = await phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 400, f"the overview scrolls sideways on a phone ({width}px)"
        if update:
            (tmp_path / "overview-phone.png").replace(SHOTS / "overview-phone.png")
        await _check_layout(server, page, phone, tmp_path)
    finally:
        await server.stop()
        await chat.stop()
        await flaky.stop()
        await slack.stop()


# ---- layout at phone and desktop width -------------------------------------------------------

# Each element's box, left and right edge, relative to the viewport (its right edge included).
_EDGES = """els => els.map(e => { const r = e.getBoundingClientRect(); return [r.left, r.right]; })"""


async def _sideways(page: Any) -> int:
    """How far the document scrolls sideways (0: not at all)."""
    return int(await page.evaluate("document.documentElement.scrollWidth - innerWidth"))


async def _check_layout(server: RunningServer, desk: Any, phone: Any, tmp_path: Path) -> None:
    """At 390px every column of the logs and dead letters is on screen without sideways scrolling
    (each row a card) and the charts are whole, not cropped; at 1440px the logs table fits its box.
    """
    for rng in ("1h", "24h", "7d"):
        await phone.goto(f"{server.url}/?range={rng}")
        assert await _sideways(phone) == 0, f"/?range={rng} scrolls sideways on a phone"
        for chart in ("throughput", "success", "latency"):
            fig = phone.locator(f"#chart-{chart}")
            if not await fig.locator("svg").count():
                continue  # no data in this window
            (fig_l, fig_r), (svg_l, svg_r) = await phone.locator(
                f"#chart-{chart}, #chart-{chart} svg"
            ).evaluate_all(_EDGES)
            assert fig_l <= svg_l and svg_r <= fig_r <= 390, (rng, chart, fig_l, fig_r, svg_l, svg_r)
            # The newest bucket, at the right, is drawn inside the figure: nothing is cropped.
            box = await fig.locator("svg").evaluate(
                "e => e.parentElement.scrollWidth - e.parentElement.clientWidth"
            )
            assert box <= 0, (rng, chart, f"the chart scrolls {box}px sideways in its box")
    await phone.screenshot(path=str(tmp_path / "overview-7d-390.png"), full_page=True)
    for path, table, cells in (
        ("/webhooks/logs", "table.logs", ("Response", "Duration", "Delivery")),
        ("/webhooks/dead", "table.dead", ("Failed", "Delivery")),
    ):
        await phone.goto(server.url + path)
        assert await _sideways(phone) == 0, f"{path} scrolls sideways on a phone"
        rows = phone.locator(f"{table} tbody tr")
        assert await rows.count() > 0, path
        heads = [" ".join(t.split()) for t in await phone.locator(f"{table} thead th").all_text_contents()]
        for label in cells:
            col = heads.index(label) + 1
            tds = phone.locator(f"{table} tbody tr:nth-child(-n+5) td:nth-child({col})")
            for left, right in await tds.evaluate_all(_EDGES):
                assert left >= 0 and right <= 390, (path, label, left, right)
            # The cell says which column it is (the header row is hidden on a phone).
            before = await tds.first.evaluate("e => getComputedStyle(e, '::before').content")
            assert label in before, (path, label, before)
        # Still a table to a screen reader, its headers included.
        assert await phone.get_by_role("columnheader", name=cells[0], exact=True).count() == 1, path
        await phone.screenshot(path=str(tmp_path / f"{path.rsplit('/', 1)[1]}-390.png"), full_page=True)
    await desk.set_viewport_size({"width": 1440, "height": 900})
    for path, table in (("/webhooks/logs", "table.logs"), ("/webhooks/dead", "table.dead")):
        await desk.goto(server.url + path)
        wrap = desk.locator(".table-wrap").filter(has=desk.locator(table))
        over = await wrap.evaluate("e => e.scrollWidth - e.clientWidth")
        assert over <= 0, f"{path}: the table is {over}px wider than its box at 1440px"
        heads = [" ".join(t.split()) for t in await desk.locator(f"{table} thead th").all_text_contents()]
        dest = desk.locator(f"{table} thead th").nth(heads.index("Destination"))
        width = (await dest.bounding_box())["width"]
        assert width >= 160, f"{path}: the Destination column is {width:.0f}px wide at 1440px"
        # Long error text is clamped: no row is more than a few lines high.
        tallest = max(
            await desk.locator(f"{table} tbody tr").evaluate_all("rs => rs.map(r => r.offsetHeight)")
        )
        assert tallest <= 120, f"{path}: a row is {tallest}px high at 1440px"
        await desk.screenshot(path=str(tmp_path / f"{path.rsplit('/', 1)[1]}-1440.png"), full_page=True)
    await _check_fit(server, desk, phone, tmp_path)


# The wide tables, and the widths each must fit at without scrolling sideways inside its box: a
# phone, either side of the cards' breakpoints (720/721 and 1199/1200px) and a desktop.
_FIT_PAGES = (
    ("/webhooks/endpoints", "table.endpoints"),
    ("/webhooks/logs", "table.logs"),
    ("/webhooks/dead", "table.dead"),
)
_FIT_WIDTHS = (390, 721, 800, 1024, 1200, 1440)


async def _check_fit(server: RunningServer, desk: Any, phone: Any, tmp_path: Path) -> None:
    """The endpoints, logs and dead letters fit at every width from a phone's to a desktop's: the
    page does not scroll sideways, nor does the table inside its box (.table-wrap); at 390px the
    endpoints are cards (every cell on screen, under its column's name) and still a table to a
    screen reader. Every page is photographed at every width (``fit-<page>-<width>.png``, the top of the
    page) before any of this is asserted, and every failure is reported, not only the first.
    """
    problems: list[str] = []
    for width in _FIT_WIDTHS:
        page = phone if width == 390 else desk
        await page.set_viewport_size({"width": width, "height": 844 if width == 390 else 900})
        for path, table in _FIT_PAGES:
            await page.goto(server.url + path)
            name = path.rsplit("/", 1)[1]
            await page.screenshot(path=str(tmp_path / f"fit-{name}-{width}.png"))
            assert await page.locator(f"{table} tbody tr").count() > 0, (path, "no rows to measure")
            if side := await _sideways(page):
                problems.append(f"{path} at {width}px: the page scrolls {side}px sideways")
            wrap = page.locator(".table-wrap").filter(has=page.locator(table))
            over = await wrap.evaluate("e => e.scrollWidth - e.clientWidth")
            if over > 0:
                problems.append(f"{path} at {width}px: the table is {over}px wider than its box")
    # The endpoints on a phone: each row a card, every cell on screen and labelled.
    await phone.set_viewport_size({"width": 390, "height": 844})
    await phone.goto(server.url + "/webhooks/endpoints")
    heads = [" ".join(t.split()) for t in await phone.locator("table.endpoints thead th").all_text_contents()]
    assert heads[:2] == ["URL", "Events"], heads
    for col, label in enumerate(heads, start=1):
        tds = phone.locator(f"table.endpoints tbody tr td:nth-child({col})")
        for left, right in await tds.evaluate_all(_EDGES):
            if left < 0 or right > 390:
                problems.append(f"endpoints at 390px: a {label} cell spans {left:.0f}..{right:.0f}px")
        before = await tds.first.evaluate("e => getComputedStyle(e, '::before').content")
        if label.lower() not in before.lower():
            problems.append(f"endpoints at 390px: the {label} cell is not labelled ({before})")
    # Still a table to a screen reader, its headers included.
    for label in ("URL", "Events", "State"):
        if await phone.get_by_role("columnheader", name=label, exact=True).count() != 1:
            problems.append(f"endpoints at 390px: no column header {label!r} for a screen reader")
    assert not problems, "\n".join(problems)
