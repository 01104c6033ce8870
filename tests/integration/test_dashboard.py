"""The dashboard over HTTP, as a browser without JavaScript uses it (forms, cookies, redirects).

Sign-in and its cookie, CSRF, revoked and ingest keys, every page with seeded data, escaping of
hostile payloads, secrets never shown (bar the one-time reveal), and project isolation.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from ingestlayer.api.dashboard_views import fmt_pct
from ingestlayer.store import store as store_module
from ingestlayer.store.stats import bin_range, id_bound, percentile
from tests.integration.test_delivery_counts import add_deliveries
from tests.support.dashboard_client import Browser, signed_in
from tests.support.fake_slack import FakeSlack
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, wait_for

HOSTILE = "<script>alert(1)</script>"
HOOK_SECRET = "whsec_dashboard-test-secret-value-0123456789"
BEARER_TOKEN = "tok_dashboard-bearer-token-value-9876543210"
FAST_DEAD = {"schedule": [0], "jitter": 0}


# ---- sign-in -----------------------------------------------------------------------------------


def endpoint_form(ep: dict[str, Any], *, events: str, retry: str = "", description: str) -> dict[str, str]:
    """The endpoint edit form of ``ep`` (auth none) as a user sends it back: its URL as the page
    shows it, the other fields as given."""
    return {
        "url": ep["url"],
        "events": events,
        "auth": "none",
        "signing": "ingestlayer",
        "format": "ingestlayer",
        "timeout": "10",
        "retry": retry,
        "description": description,
    }


async def test_sign_in_cookie_flags_and_sign_out(server: RunningServer, browser: Browser) -> None:
    page = await browser.get("/")
    assert page.status == 303 and page.location == "/login"
    page = await browser.get("/events?type=invoice.*")
    assert page.status == 303 and page.location == "/login?next=%2Fevents%3Ftype%3Dinvoice.%2A"

    form = await browser.get("/login?next=/events")
    assert form.status == 200 and 'name="key"' in form.text and '<label for="key">' in form.text
    page = await browser.post("/login", {"key": server.admin_key, "next": "/events"})
    assert page.status == 303 and page.location == "/events"
    cookie = next(v for v in page.headers.getall("Set-Cookie") if v.startswith("il_session="))
    flags = [f.strip().lower() for f in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert "secure" not in flags  # plain http here; https requests get Secure
    assert server.admin_key not in cookie  # the cookie is encrypted
    assert (await browser.get("/events")).status == 200

    # Behind a TLS-terminating proxy (uvicorn trusts X-Forwarded-Proto from 127.0.0.1) it is Secure.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as tls:
        https = {"X-Forwarded-Proto": "https"}
        async with tls.get(server.url + "/login", headers=https) as resp:
            token = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
            login_cookie = next(v for v in resp.headers.getall("Set-Cookie") if v.startswith("il_login="))
        assert token is not None and "secure" in login_cookie.lower()
        async with tls.post(
            server.url + "/login",
            data={"key": server.admin_key, "csrf": token.group(1)},
            headers={**https, "Cookie": login_cookie.split(";")[0]},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 303
            secure = next(v for v in resp.headers.getall("Set-Cookie") if v.startswith("il_session="))
            assert "secure" in [f.strip().lower() for f in secure.split(";")]

    # An open redirect is refused: `next` stays on this site.
    await browser.post("/logout")
    await browser.get("/login")
    page = await browser.post("/login", {"key": server.admin_key, "next": "//evil.example/x"})
    assert page.location == "/"

    # Signing out needs the form's token, then the session is gone.
    page = await browser.post("/logout", csrf=False)
    assert page.status == 403
    copied = {c.key: c.value for c in browser.session.cookie_jar}["il_session"]
    form_token = browser.csrf
    page = await browser.post("/logout")
    assert page.status == 303 and page.location == "/login"
    assert (await browser.get("/")).status == 303
    assert "signed out" in (await browser.get("/login")).text

    # Everywhere: a copy of the cookie taken before signing out opens nothing, and its form
    # token changes nothing (it used to stay valid until the session's 12 hours were up).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as thief:
        stolen = {"Cookie": f"il_session={copied}"}
        async with thief.get(server.url + "/pipelines", headers=stolen, allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"].startswith("/login")
        async with thief.post(
            server.url + "/logout", data={"csrf": form_token}, headers=stolen, allow_redirects=False
        ) as resp:
            assert resp.status in (303, 403) and resp.headers.get("Location", "/login").startswith("/login")
    # Signing in again makes a new session, which works.
    await signed_in(browser, server)
    assert (await browser.get("/pipelines")).status == 200


async def test_ingest_keys_bad_keys_and_a_stale_form_are_refused(
    server: RunningServer, browser: Browser
) -> None:
    await browser.get("/login")
    page = await browser.post("/login", {"key": server.ingest_key})
    assert page.status == 403
    assert "ingest key" in page.text and "admin key" in page.text
    assert not any(c.startswith("il_session=") for c in page.headers.getall("Set-Cookie", []))
    page = await browser.post("/login", {"key": "il_admin_not-a-real-key"})
    assert page.status == 401 and "not valid" in page.text
    page = await browser.post("/login", {"key": server.admin_key, "csrf": "forged"})
    assert page.status == 403 and "expired" in page.text
    assert (await browser.get("/")).status == 303  # still signed out
    # A forged cookie is no session either.
    browser.session.cookie_jar.update_cookies({"il_session": "gAAAAABforged"})
    assert (await browser.get("/pipelines")).status == 303


async def test_post_without_csrf_token_is_forbidden(server: RunningServer, browser: Browser) -> None:
    await signed_in(browser, server)
    data = {"url": "http://127.0.0.1:9/x", "events": "invoice.created", "auth": "none"}
    page = await browser.post("/webhooks/endpoints", data, csrf=False)
    assert page.status == 403 and "security token" in page.text
    page = await browser.post("/webhooks/endpoints", {**data, "csrf": "x" * 32})
    assert page.status == 403
    page = await browser.post("/deliveries/replay", {"status": "dead"}, csrf=False)
    assert page.status == 403
    status, body = await server.request("GET", "/v1/endpoints")
    assert status == 200 and body["data"] == []
    # With the token it goes through.
    page = await browser.follow(await browser.post("/webhooks/endpoints", data))
    assert page.status == 200 and "Endpoint added" in page.text


async def test_a_revoked_key_signs_the_browser_out(server: RunningServer, browser: Browser) -> None:
    status, created = await server.request("POST", "/v1/keys", json={"kind": "admin", "name": "laptop"})
    assert status == 201
    page = await browser.login(created["key"])
    assert page.status == 303
    assert (await browser.get("/pipelines")).status == 200
    status, _ = await server.request("DELETE", f"/v1/keys/{created['id']}")
    assert status == 204
    page = await browser.get("/pipelines")
    assert page.status == 303 and page.location == "/login?next=%2Fpipelines"
    assert any(c.startswith("il_session=") for c in page.headers.getall("Set-Cookie", []))  # cleared


# ---- pages with data -------------------------------------------------------------------------


@dataclass
class Seeded:
    event_id: str
    hostile_event_id: str
    delivered_id: str
    dead_id: str
    endpoint_id: str
    generated_secret: str


@pytest.fixture
async def failing() -> AsyncIterator[Receiver]:
    """A receiver that answers 500 with a hostile body."""
    r = await Receiver().start()
    r.default = Reply(status=500, body=b'{"error": "' + HOSTILE.encode() + b'"}')
    yield r
    await r.stop()


async def _count(server: RunningServer, status: str, n: int) -> bool:
    _, body = await server.request("GET", "/v1/deliveries?limit=1")
    return bool(body["counts"].get(status, 0) >= n)


async def seed(server: RunningServer, receiver: Receiver, failing: Receiver) -> Seeded:
    await server.set_secret("hooks", HOOK_SECRET)
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "feature-usage-to-webhook",
                    "description": "Expansion signals, with the account, plan and owner attached.",
                    "source": {"match": ["feature.used"]},
                    "steps": [
                        {"filter.match": "feature in {export, api, webhook}"},
                        {
                            "enrich.entity": {
                                "from": "user_id",
                                "entity": "user",
                                "attach": ["account", "plan"],
                            }
                        },
                    ],
                    "destinations": [
                        {
                            "webhook.out": {
                                "url": receiver.url + "/hooks",
                                "auth": "hmac",
                                "secret": "ref:hooks",
                                "headers": {"X-Api-Key": "header-credential-value-123"},
                            },
                            "when": 'plan != "internal"',
                        },
                    ],
                }
            ]
        }
    )
    status, ep = await server.request(
        "POST",
        "/v1/endpoints",
        json={
            "url": receiver.url + "/billing",
            "events": ["invoice.created", "invoice.failed"],
            "format": "data",
            "description": "UsageFlow billing",
        },
    )
    assert status == 201, ep
    status, bearer = await server.request(
        "POST",
        "/v1/endpoints",
        json={
            "url": failing.url + "/failing",
            "events": ["invoice.failed"],
            "auth": "bearer",
            "secret": BEARER_TOKEN,
            "retry": FAST_DEAD,
        },
    )
    assert status == 201, bearer
    status, first = await server.ingest(
        "feature.used", {"user_id": "u1", "feature": "csv.export", "count": 1}
    )
    assert status == 202
    status, hostile = await server.ingest(
        "feature.used", {"user_id": "u2", "feature": "api", "note": HOSTILE, "plan": "pro"}
    )
    assert status == 202
    await server.ingest("feature.used", {"user_id": "u3", "feature": "dark-mode"})  # filtered out
    # invoice.failed goes to both endpoints; the failing one answers 500 and, with one attempt, is dead.
    status, _ = await server.ingest("invoice.failed", {"invoice_id": "inv_123", "amount": 120})
    assert status == 202
    await wait_for(lambda: _count(server, "delivered", 3))
    await wait_for(lambda: _count(server, "dead", 1))
    _, dead = await server.request("GET", "/v1/deliveries?status=dead")
    _, ok = await server.request("GET", f"/v1/events/{first['id']}")
    return Seeded(
        event_id=first["id"],
        hostile_event_id=hostile["id"],
        delivered_id=ok["deliveries"][0]["id"],
        dead_id=dead["data"][0]["id"],
        endpoint_id=ep["id"],
        generated_secret=ep["secret"],
    )


SECRETS = (HOOK_SECRET, BEARER_TOKEN, "header-credential-value-123")


async def test_every_page_renders_escaped_and_without_secrets(
    server: RunningServer, browser: Browser, receiver: Receiver, failing: Receiver
) -> None:
    s = await seed(server, receiver, failing)
    await signed_in(browser, server)
    pages = [
        "/",
        "/?range=1h",
        "/?range=7d",
        "/pipelines",
        "/webhooks/endpoints",
        "/webhooks/endpoints/new",
        f"/webhooks/endpoints/{s.endpoint_id}",
        "/webhooks/logs",
        "/webhooks/logs?status=dead",
        "/webhooks/dead",
        "/events",
        "/events?type=feature.*",
        "/events?type=invoice.failed&since=2000-01-01T00:00&until=2999-01-01T00:00",
        f"/events/{s.event_id}",
        f"/events/{s.hostile_event_id}",
        f"/deliveries/{s.delivered_id}",
        f"/deliveries/{s.dead_id}",
    ]
    texts: dict[str, str] = {}
    for path in pages:
        page = await browser.get(path)
        assert page.status == 200, (path, page.status, page.text[:300])
        assert page.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert page.headers["Cache-Control"] == "no-store"
        texts[path] = page.text
        # Hostile values are escaped wherever they appear; no secret value appears anywhere.
        assert "<script" not in page.text, path
        for secret in (*SECRETS, s.generated_secret, server.admin_key):
            assert secret not in page.text, (path, secret[:12])

    ev = texts[f"/events/{s.hostile_event_id}"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in ev
    # The event page: whole payload, the step trace, the deliveries.
    assert "filter.match" in ev and "enrich.entity" in ev and "CTL" in ev and "ENR" in ev
    assert "added" in ev and "account" in ev
    assert "delivered" in ev
    first = texts[f"/events/{s.event_id}"]
    assert "csv.export" in first and "user u1 not found" in first  # the enrich step's note
    dead = texts[f"/deliveries/{s.dead_id}"]
    assert "500" in dead and "&lt;script&gt;" in dead and "Replay" in dead

    cards = texts["/pipelines"]
    assert "01</span> source" in cards and "02</span> pipeline · 2 steps" in cards
    assert "03</span> destinations · 1" in cards
    assert "feature in {export, api, webhook}" in cards and "ref:hooks" in cards
    assert "X-Api-Key" in cards  # header names are shown, their values masked
    assert "endpoint" in cards

    overview = texts["/"]
    assert "Throughput" in overview and "<svg" in overview and "Success rate" in overview
    assert "Delivery latency" in overview
    # The tiles add up to what the API says: events, attempts, and the share that succeeded.
    _, events = await server.request("GET", "/v1/events?limit=100")
    _, deliveries = await server.request("GET", "/v1/deliveries?limit=100")
    attempts = sum(d["attempt_count"] for d in deliveries["data"])
    succeeded = sum(d["status"] == "delivered" for d in deliveries["data"])
    tiles = dict(re.findall(r'<p class="tile-label">([^<]+).*?<p class="tile-value">([^<]+)', overview, re.S))
    assert tiles["Events"] == str(len(events["data"])) and tiles["Attempts"] == str(attempts), tiles
    assert tiles["Success rate"] == fmt_pct(succeeded / attempts), (tiles, succeeded, attempts)

    logs = texts["/webhooks/logs"]
    assert "invoice.failed" in logs and "feature.used" in logs and "500" in logs and "200" in logs
    assert s.dead_id in texts["/webhooks/dead"] and "Replay all matching" in texts["/webhooks/dead"]
    assert "feature.used" in texts["/events?type=feature.*"]
    assert "invoice.failed" not in texts["/events?type=feature.*"]
    assert (
        "invoice.failed" in texts["/events?type=invoice.failed&since=2000-01-01T00:00&until=2999-01-01T00:00"]
    )

    # Search by id jumps to the event or the delivery.
    page = await browser.get(f"/events?id={s.event_id}")
    assert page.status == 303 and page.location == f"/events/{s.event_id}"
    page = await browser.get(f"/events?id={s.dead_id}")
    assert page.status == 303 and page.location == f"/deliveries/{s.dead_id}"
    page = await browser.get("/events?id=evt_nope")
    assert page.status == 404 and "No event" in page.text

    css = await browser.get("/static/dashboard.css")
    assert css.status == 200 and css.headers["Content-Type"].startswith("text/css")
    assert (await browser.get("/static/nope.css")).status == 404


async def test_editing_an_endpoint_keeps_its_retry_policy_and_shows_a_new_secret_once(
    server: RunningServer, browser: Browser, receiver: Receiver
) -> None:
    await signed_in(browser, server)
    policies = [{"max_attempts": 3, "base": 1, "factor": 2, "max": 10}, {"schedule": [0, 5], "jitter": 0}]
    for retry in policies:
        status, ep = await server.request(
            "POST",
            "/v1/endpoints",
            json={"url": receiver.url + "/e", "events": ["a.b"], "auth": "none", "retry": retry},
        )
        assert status == 201, ep
        # The form as the page shows it, with only the description changed.
        page = await browser.get(f"/webhooks/endpoints/{ep['id']}")
        shown = re.search(r'name="retry"[^>]*value="([^"]*)"', page.text)
        form = endpoint_form(ep, events="a.b", retry=shown.group(1) if shown else "", description="edited")
        assert (
            "Endpoint saved"
            in (await browser.follow(await browser.post(f"/webhooks/endpoints/{ep['id']}", form))).text
        )
        _, got = await server.request("GET", f"/v1/endpoints/{ep['id']}")
        assert got["description"] == "edited" and got["retry"] == retry

    # Numbers no field takes, named as such (float() reads them; the range check then said "less
    # than or equal to 60"), and the folded section holding the field opened to show it.
    for field, value in (("timeout", "nan"), ("timeout", "inf"), ("retry", "0, nan")):
        page = await browser.post(f"/webhooks/endpoints/{ep['id']}", {**form, field: value})
        assert page.status == 422, (field, value, page.status)
        hint = f"“{value.removeprefix('0, ')}” is not a number of seconds"
        assert hint in page.text and "less than or equal" not in page.text, (field, value)
        assert '<details class="field advanced" open>' in page.text
    page = await browser.post(f"/webhooks/endpoints/{ep['id']}", {**form, "description": "d" * 501})
    assert page.status == 422 and '<details class="field advanced" open>' in page.text

    # Switching signing on: the secret the API made is shown once, and it signs deliveries.
    page = await browser.follow(
        await browser.post(f"/webhooks/endpoints/{ep['id']}", {**form, "auth": "hmac"})
    )
    assert page.status == 200 and "shown only this once" in page.text
    secret = re.search(r'id="new-secret" class="secret-value" readonly value="([^"]+)"', page.text)
    assert secret is not None
    _, got = await server.request("GET", f"/v1/endpoints/{ep['id']}")
    assert got["auth"] == "hmac" and got["rotation_ends_at"] is None
    _, ev = await server.ingest("a.b", {"n": 1})

    async def both_arrived() -> bool:  # the first endpoint (auth: none) takes a.b to /e too
        return len([r for r in receiver.requests if r.path == "/e"]) >= 2

    await wait_for(both_arrived)
    (received,) = [r for r in receiver.requests if r.path == "/e" and "X-Ingestlayer-Signature" in r.headers]
    assert received.headers["X-Ingestlayer-Signature"].count("v1=") == 1
    assert received.verify(secret.group(1))["id"] == ev["id"]


async def test_endpoints_replay_and_test_send_through_forms(
    server: RunningServer, browser: Browser, receiver: Receiver, failing: Receiver
) -> None:
    s = await seed(server, receiver, failing)
    await signed_in(browser, server)

    # Add Endpoint: validation errors are shown next to their fields.
    await browser.get("/webhooks/endpoints/new")
    page = await browser.post(
        "/webhooks/endpoints", {"url": "ftp://x", "events": "invoice.created, bad type!", "auth": "hmac"}
    )
    assert page.status == 422 and 'aria-invalid="true"' in page.text
    page = await browser.post(
        "/webhooks/endpoints",
        {"url": receiver.url + "/new", "events": "", "auth": "hmac", "retry": "0, soon"},
    )
    assert (
        page.status == 422
        and "at least one event type" in page.text
        and "“soon” is not a number of seconds" in page.text
    )
    page = await browser.post(
        "/webhooks/endpoints",
        {
            "url": receiver.url + "/new",
            "events": "invoice.created\ninvoice.paid, subscription.*",
            "auth": "hmac",
            "format": "data",
            "retry": "0, 1, 5",
            "enabled": "1",
        },
    )
    page = await browser.follow(page)
    assert page.status == 200 and "shown only this once" in page.text
    secret = re.search(r'id="new-secret" class="secret-value" readonly value="([^"]+)"', page.text)
    assert secret is not None
    _, listed = await server.request("GET", "/v1/endpoints")
    created = next(e for e in listed["data"] if e["url"] == receiver.url + "/new")
    assert created["events"] == ["invoice.created", "invoice.paid", "subscription.*"]
    assert created["retry"] == {"schedule": [0.0, 1.0, 5.0]} and created["format"] == "data"
    # The secret is never shown again.
    page = await browser.get(f"/webhooks/endpoints/{created['id']}")
    assert secret.group(1) not in page.text and f"ref:endpoint-{created['id']}" in page.text

    # Send test event: the outcome of the worker's attempt is on the page.
    page = await browser.follow(await browser.post(f"/webhooks/endpoints/{created['id']}/test"))
    assert page.status == 200 and "Test event" in page.text
    assert "st-delivered" in page.text and "received" in page.text
    tests = [r for r in receiver.requests if r.path == "/new"]
    assert tests and tests[-1].json()["type"] == "ingestlayer.test"
    tests[-1].verify(secret.group(1))

    # Edit, disable, enable, rotate, delete.
    page = await browser.post(
        f"/webhooks/endpoints/{created['id']}",
        {"url": receiver.url + "/new2", "events": "invoice.paid", "auth": "hmac", "format": "ingestlayer"},
    )
    page = await browser.follow(page)
    assert "Endpoint saved" in page.text and receiver.url + "/new2" in page.text
    page = await browser.follow(
        await browser.post(f"/webhooks/endpoints/{created['id']}/enabled", {"enabled": "0"})
    )
    assert "Endpoint disabled" in page.text
    _, got = await server.request("GET", f"/v1/endpoints/{created['id']}")
    assert got["enabled"] is False and got["events"] == ["invoice.paid"]
    page = await browser.follow(
        await browser.post(f"/webhooks/endpoints/{created['id']}/enabled", {"enabled": "1"})
    )
    assert "Endpoint enabled" in page.text
    page = await browser.follow(await browser.post(f"/webhooks/endpoints/{created['id']}/rotate"))
    assert page.status == 200 and "shown only this once" in page.text
    rotated = re.search(r'readonly value="([^"]+)"', page.text)
    assert rotated is not None and rotated.group(1) != secret.group(1)
    page = await browser.follow(await browser.post(f"/webhooks/endpoints/{created['id']}/delete"))
    assert "Endpoint deleted" in page.text
    assert (await browser.get(f"/webhooks/endpoints/{created['id']}")).status == 404

    # Dead letters: replay one, then all matching; the worker makes new attempts.
    failing.default = Reply(status=200)
    page = await browser.follow(
        await browser.post(f"/deliveries/{s.dead_id}/replay", {"next": "/webhooks/dead"})
    )
    assert "Replaying" in page.text

    async def delivered() -> bool:
        _, d = await server.request("GET", f"/v1/deliveries/{s.dead_id}")
        return bool(d["status"] == "delivered")

    await wait_for(delivered)
    page = await browser.get(f"/deliveries/{s.dead_id}")
    assert "st-delivered" in page.text and page.text.count('class="code code-') >= 2

    failing.default = Reply(status=500)
    await server.ingest("invoice.failed", {"invoice_id": "inv_124"})
    await server.ingest("invoice.failed", {"invoice_id": "inv_125"})
    await wait_for(lambda: _count(server, "dead", 2))
    failing.default = Reply(status=200)
    await browser.get("/webhooks/dead")
    page = await browser.follow(
        await browser.post("/deliveries/replay", {"status": "dead", "next": "/webhooks/dead"})
    )
    assert "Replaying 2 deliveries" in page.text
    await wait_for(lambda: _count(server, "delivered", 6))


async def test_projects_are_isolated(
    server: RunningServer, browser: Browser, receiver: Receiver, failing: Receiver
) -> None:
    s = await seed(server, receiver, failing)
    rt = server.runtime
    _, _, other_admin = await rt.store.create_project("other")
    other = Browser(server.url)
    try:
        page = await other.login(other_admin)
        assert page.status == 303
        for path in (
            f"/events/{s.event_id}",
            f"/deliveries/{s.dead_id}",
            f"/webhooks/endpoints/{s.endpoint_id}",
        ):
            page = await other.get(path)
            assert page.status == 404, path
            assert s.event_id not in page.text or path.startswith("/events")
        for path in ("/events", "/webhooks/logs", "/webhooks/dead", "/pipelines", "/webhooks/endpoints", "/"):
            page = await other.get(path)
            assert page.status == 200
            for leaked in (s.event_id, s.dead_id, s.endpoint_id, "feature-usage-to-webhook", "inv_123"):
                assert leaked not in page.text, (path, leaked)
        # Replaying another project's delivery is refused and changes nothing.
        await other.get("/webhooks/dead")
        page = await other.post(f"/deliveries/{s.dead_id}/replay")
        assert page.status == 404
        _, d = await server.request("GET", f"/v1/deliveries/{s.dead_id}")
        assert d["status"] == "dead"
        # Bulk replay in the other project touches none of ours.
        await other.post("/deliveries/replay", {"status": "dead"})
        _, d = await server.request("GET", f"/v1/deliveries/{s.dead_id}")
        assert d["status"] == "dead"
    finally:
        await other.close()


async def test_event_log_pages_older_with_before(server: RunningServer, browser: Browser) -> None:
    batch = [{"type": "page.viewed", "payload": {"path": f"/p/{i}"}} for i in range(75)]
    status, _ = await server.request("POST", "/v1/events", key=server.ingest_key, json={"batch": batch})
    assert status == 202
    await server.ingest("invoice.paid", {"invoiceId": "inv_1"})
    await signed_in(browser, server)
    first = await browser.get("/events?type=page.*")
    assert first.status == 200 and first.text.count('href="/events/evt_') == 50
    assert "invoice.paid" not in first.text
    older = re.search(r'href="/events\?(type=page.%2A&amp;before=evt_\w+)" rel="next">older', first.text)
    assert older is not None, first.text[-2000:]
    second = await browser.get("/events?" + older.group(1).replace("&amp;", "&"))
    assert second.status == 200 and second.text.count('href="/events/evt_') == 25
    ids = set(re.findall(r'href="/events/(evt_[0-9A-Z]+)"', first.text))
    assert ids.isdisjoint(re.findall(r'href="/events/(evt_[0-9A-Z]+)"', second.text))
    assert 'rel="next"' not in second.text and "← newest" in second.text


async def test_the_pipelines_page_shows_a_large_project_a_page_at_a_time(
    server: RunningServer, browser: Browser
) -> None:
    """2,000 pipelines made one page of 3.8 MB in 2.5 s, every request to the server waiting."""
    pipelines = [
        {"name": f"p{i:03}", "source": {"match": [f"t{i}.*"]}, "destinations": [{"ref": "hook"}]}
        for i in range(120)
    ]
    await server.apply(
        {
            "destinations": [{"name": "hook", "webhook.out": {"url": "https://hooks.example.com/in"}}],
            "pipelines": pipelines,
        }
    )
    await signed_in(browser, server)
    seen: list[str] = []
    for number, expected in ((1, 50), (2, 50), (3, 20)):
        shown = await browser.get(f"/pipelines?page={number}")
        assert shown.status == 200 and f"120 pipelines: page {number} of 3." in shown.text
        names = re.findall(r'-name"><code class="wrap">(p\d{3})</code>', shown.text)
        assert len(names) == expected, (number, len(names))
        seen += names
        assert ('rel="next"' in shown.text) == (number < 3) and ('rel="prev"' in shown.text) == (number > 1)
    assert sorted(seen) == [f"p{i:03}" for i in range(120)]  # each once
    for odd in ("0", "99", "x", "-1"):  # no such page: the nearest one, and a message saying so
        page = await browser.get(f"/pipelines?page={odd}")
        assert page.status == 200 and 'class="flash flash-error"' in page.text, odd
        near = 3 if odd == "99" else 1
        assert f"page {near} of 3." in page.text and f"Showing page {near}." in page.text, odd


async def test_connect_slack_starts_the_oauth_flow(
    server: RunningServer, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "feature-usage-to-slack",
                    "source": {"match": ["feature.used"]},
                    "destinations": [
                        {
                            "slack": {
                                "channel": "#alerts",
                                "connection": "ref:slack-main",
                                "api_base": "http://127.0.0.1:9/api",
                            }
                        }
                    ],
                }
            ]
        }
    )
    await signed_in(browser, server)
    page = await browser.get("/pipelines")
    assert "Connect Slack" in page.text and 'name="name" value="slack-main"' in page.text
    # Not configured on this server: back to the page, saying what is missing.
    for name in ("INGESTLAYER_SLACK_CLIENT_ID", "INGESTLAYER_SLACK_CLIENT_SECRET", "INGESTLAYER_PUBLIC_URL"):
        monkeypatch.delenv(name, raising=False)
    page = await browser.follow(await browser.post("/connections/slack", {"name": "slack-main"}))
    assert "Slack could not be connected" in page.text and "INGESTLAYER_SLACK_CLIENT_ID" in page.text
    # Configured: the browser goes to Slack's consent page with a sealed state.
    monkeypatch.setenv("INGESTLAYER_SLACK_CLIENT_ID", "123.456")
    monkeypatch.setenv("INGESTLAYER_SLACK_CLIENT_SECRET", "slack-client-secret")
    monkeypatch.setenv("INGESTLAYER_PUBLIC_URL", server.url)
    monkeypatch.setenv("INGESTLAYER_SLACK_BASE_URL", "http://127.0.0.1:9")
    page = await browser.post("/connections/slack", {"name": "slack-main"})
    assert page.status == 302 and page.location is not None
    assert page.location.startswith("http://127.0.0.1:9/oauth/v2/authorize?client_id=123.456")
    assert "state=" in page.location and "slack-client-secret" not in page.location
    assert (await browser.post("/connections/slack", {"name": "slack-main"}, csrf=False)).status == 403


async def test_a_slack_connection_started_here_is_finished_by_this_browser_only(
    server: RunningServer, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An admin could otherwise send the consent link to another workspace's admin and have its
    bot token stored in their own project. The state is tied to the starting browser by a cookie;
    a callback without it is refused, and does not use up the real browser's state."""
    slack = await FakeSlack().start()
    try:
        monkeypatch.setenv("INGESTLAYER_SLACK_CLIENT_ID", slack.client_id)
        monkeypatch.setenv("INGESTLAYER_SLACK_CLIENT_SECRET", slack.client_secret)
        monkeypatch.setenv("INGESTLAYER_PUBLIC_URL", server.url)
        monkeypatch.setenv("INGESTLAYER_SLACK_BASE_URL", slack.url)
        monkeypatch.setenv("INGESTLAYER_SLACK_API_URL", slack.api_url)
        await signed_in(browser, server)
        await browser.get("/pipelines")
        started = await browser.post("/connections/slack", {"name": "slack-main"})
        assert started.status == 302 and started.location is not None
        cookie = started.headers["Set-Cookie"]
        assert "il_slack_oauth=" in cookie and "HttpOnly" in cookie and "Path=/oauth/slack/callback" in cookie
        assert "samesite=lax" in cookie.lower()

        # Someone else's browser, sent the link: Slack consents, our callback refuses.
        async with aiohttp.ClientSession() as other, other.get(started.location) as resp:
            page = await resp.text()
            assert resp.status == 400 and "started in another browser" in page, page
        assert not slack.tokens  # the code was never exchanged

        # The browser that started it finishes it.
        async with browser.session.get(started.location) as resp:
            page = await resp.text()
            assert resp.status == 200 and "Slack connected" in page, page
            assert resp.headers["Set-Cookie"].startswith("il_slack_oauth=")  # cleared
        _, listed = await server.request("GET", "/v1/secrets")
        assert [s["name"] for s in listed["data"]] == ["slack-main"]
    finally:
        await slack.stop()


def test_stats_helpers() -> None:
    # Ids as time bounds: every id minted at or after t sorts at or above the bound.
    t = 1_717_000_000.123
    assert id_bound("evt", t) < id_bound("evt", t + 0.01) < id_bound("evt", t + 3600)
    assert id_bound("evt", t).startswith("evt_") and len(id_bound("evt", t)) == 30
    # Latency histogram percentiles interpolate within 5 %-wide bins.
    assert bin_range(0) == (0.0, 0.5) and bin_range(25) == (25.0, 30.0) and bin_range(41) == (50.0, 100.0)
    hist = {2: 50, 25: 50}  # 50 at 1.0-1.5 ms, 50 at 25-30 ms
    p50 = percentile(hist, 0.5)
    p95 = percentile(hist, 0.95)
    assert p50 is not None and 1.0 <= p50 <= 1.5
    assert p95 is not None and 25.0 <= p95 <= 30.0
    assert percentile({}, 0.5) is None


async def _arrived(receiver: Receiver, path: str) -> bool:
    return any(r.path == path for r in receiver.requests)


async def test_capped_delivery_counts_show_as_at_least(
    server: RunningServer, browser: Browser, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add_deliveries(server.runtime.store, server.project_id, {"delivered": 4, "dead": 3, "pending": 1})
    monkeypatch.setattr(store_module, "DELIVERY_COUNT_CAP", 3)
    await signed_in(browser, server)

    overview = await browser.get("/")
    assert overview.status == 200
    shown = dict(re.findall(r'status=(\w+)">.*?<span class="count">([^<]+)</span>', overview.text))
    assert shown == {"pending": "1", "delivering": "0", "retrying": "0", "delivered": "3+"}, shown
    assert re.search(r'/webhooks/dead">.*?<span class="count">3\+</span>', overview.text)

    dead = await browser.get("/webhooks/dead")
    assert dead.status == 200 and "3+ dead deliveries in total" in dead.text

    logs = await browser.get("/webhooks/logs")
    assert logs.status == 200 and "dead (3+)" in logs.text and "pending (1)" in logs.text
