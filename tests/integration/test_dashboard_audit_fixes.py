"""Fixes from the dashboard audit, each checked the way a browser meets it.

1. Add endpoint / rotate secret answer with a redirect (POST-redirect-GET): a reload does not
   repeat them, and the one-time secret crosses the redirect in a sealed, path-scoped cookie.
2. Credentials in step settings (header values, URL query values) and in endpoint URLs (userinfo
   password, query values) are masked everywhere but the edit form's URL field.
3. A bad ``before`` cursor is a message, never a 500 (nor a NUL character on PostgreSQL).
4. Event search takes epoch seconds; a bad time shows its error and no rows, keeping the other.
5. Long unbroken text wraps instead of stretching a table or a card; the visually hidden header
   of the dead letters stays inside its scroll box on a phone.
6. A browser asking for an unknown page gets the dashboard's HTML 404; the API keeps its JSON.
7. A message carried across a redirect fits in the cookie a browser keeps, however long the value
   it quotes.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from markupsafe import escape

from ingestlayer.api.dashboard_views import MASK, mask, mask_url, scrub_text
from tests.e2e.test_dashboard_browser import new_page, sign_in
from tests.support.dashboard_client import Browser, signed_in
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, wait_for

SECRET_RE = re.compile(r'id="new-secret" class="secret-value" readonly value="([^"]+)"')


def _cookie(page: Any, name: str) -> str:
    found = [c for c in page.headers.getall("Set-Cookie", []) if c.startswith(name + "=")]
    assert len(found) == 1, page.headers.getall("Set-Cookie", [])
    return str(found[0])


async def _endpoints(server: RunningServer) -> list[dict[str, Any]]:
    status, body = await server.request("GET", "/v1/endpoints")
    assert status == 200, body
    data: list[dict[str, Any]] = body["data"]
    return data


# ---- 1. POST-redirect-GET with a one-time secret -----------------------------------------------


async def test_add_and_rotate_redirect_and_show_the_secret_once(
    server: RunningServer, browser: Browser, receiver: Receiver
) -> None:
    await signed_in(browser, server)
    await browser.get("/webhooks/endpoints/new")
    form = {"url": receiver.url + "/prg", "events": "a.b", "auth": "hmac", "enabled": "1"}
    posted = await browser.post("/webhooks/endpoints", form)
    # The POST answers with a redirect, not the page: reloading what the browser shows is a GET.
    assert posted.status == 303, (posted.status, posted.text[:300])
    (ep,) = await _endpoints(server)
    assert posted.location == f"/webhooks/endpoints/{ep['id']}"
    cookie = _cookie(posted, "il_secret")
    flags = [f.strip().lower() for f in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags
    assert f"path=/webhooks/endpoints/{ep['id']}".lower() in flags
    max_age = next(int(f.split("=")[1]) for f in flags if f.startswith("max-age="))
    assert 0 < max_age <= 600

    shown = await browser.get(posted.location)
    assert shown.status == 200 and "it is shown only this once" in shown.text
    assert "Endpoint added." in shown.text and "New signing secret" in shown.text
    secret = SECRET_RE.search(shown.text)
    assert secret is not None
    # Neither the redirect nor the cookie carries the secret in clear.
    assert secret.group(1) not in (posted.location or "") and secret.group(1) not in cookie
    # The page that showed it clears the cookie: a reload shows it no more, and adds nothing.
    assert "max-age=0" in _cookie(shown, "il_secret").lower()
    again = await browser.get(posted.location)
    assert again.status == 200 and "shown only this once" not in again.text
    assert secret.group(1) not in again.text
    assert len(await _endpoints(server)) == 1

    # The secret shown is the one that signs.
    tested = await browser.follow(await browser.post(f"/webhooks/endpoints/{ep['id']}/test"))
    assert "st-delivered" in tested.text
    receiver.requests[-1].verify(secret.group(1))

    # Rotate: one rotation, whose new secret is shown once after the redirect.
    rotated = await browser.post(f"/webhooks/endpoints/{ep['id']}/rotate")
    assert rotated.status == 303 and rotated.location == f"/webhooks/endpoints/{ep['id']}"
    page = await browser.get(rotated.location)
    new_secret = SECRET_RE.search(page.text)
    assert new_secret is not None and new_secret.group(1) != secret.group(1)
    assert "Signing secret rotated." in page.text
    page = await browser.get(rotated.location)
    assert "shown only this once" not in page.text and new_secret.group(1) not in page.text
    _, got = await server.request("GET", f"/v1/endpoints/{ep['id']}")
    assert len(got["previous_secrets"]) == 1  # rotated once

    # Switching signing on in the edit form: the generated secret likewise.
    status, plain = await server.request(
        "POST", "/v1/endpoints", json={"url": receiver.url + "/plain", "events": ["a.b"], "auth": "none"}
    )
    assert status == 201
    saved = await browser.post(f"/webhooks/endpoints/{plain['id']}", {**form, "auth": "hmac"})
    assert saved.status == 303 and saved.location == f"/webhooks/endpoints/{plain['id']}"
    page = await browser.get(saved.location)
    assert "Endpoint saved." in page.text
    assert SECRET_RE.search(page.text) is not None
    assert "shown only this once" not in (await browser.get(saved.location)).text


async def test_the_secret_cookie_is_bound_to_its_session(server: RunningServer, browser: Browser) -> None:
    await signed_in(browser, server)
    await browser.get("/webhooks/endpoints/new")
    posted = await browser.post(
        "/webhooks/endpoints", {"url": "http://127.0.0.1:9/x", "events": "a.b", "auth": "hmac"}
    )
    assert posted.status == 303
    sealed = _cookie(posted, "il_secret").split(";")[0].split("=", 1)[1]
    # Another session, given the cookie, shows nothing.
    other = Browser(server.url)
    try:
        await signed_in(other, server)
        other.session.cookie_jar.update_cookies({"il_secret": sealed})
        page = await other.get(posted.location or "")
        assert page.status == 200 and "shown only this once" not in page.text
    finally:
        await other.close()
    # Nor does another endpoint's page of the same session.
    status, second = await server.request(
        "POST", "/v1/endpoints", json={"url": "http://127.0.0.1:9/y", "events": ["a.b"], "auth": "none"}
    )
    assert status == 201
    browser.session.cookie_jar.update_cookies({"il_secret": sealed})
    page = await browser.get(f"/webhooks/endpoints/{second['id']}")
    assert page.status == 200 and "shown only this once" not in page.text


# ---- 2. secrets in step settings and URLs ------------------------------------------------------

STEP_KEY, STEP_TOKEN = "step-apikey-value-4242", "step-xauth-token-value-4343"
DEST_PASSWORD, DEST_TOKEN = "dest-password-value-5151", "dest-query-token-5252"
EP_PASSWORD, EP_TOKEN = "endpoint-password-value-6161", "endpoint-query-token-6262"
URL_SECRETS = (STEP_KEY, STEP_TOKEN, DEST_PASSWORD, DEST_TOKEN, EP_PASSWORD, EP_TOKEN)


def test_masking_helpers() -> None:
    assert mask_url("http://user:pw@host/p?token=T&email={email}#f") == (
        f"http://user:{MASK}@host/p?token={MASK}&email={{email}}#{MASK}"
    )
    assert mask_url("https://tok@host/p?bare") == f"https://{MASK}@host/p?{MASK}"
    assert mask_url("https://host/p") == "https://host/p"
    settings = {"provider": {"url": "https://h/l?apikey=K1234", "headers": {"X-Auth": "T5678", "A": "ref:a"}}}
    assert mask(settings) == {
        "provider": {"url": f"https://h/l?apikey={MASK}", "headers": {"X-Auth": MASK, "A": "ref:a"}}
    }
    assert scrub_text("T5678 at https://h/l?apikey=K1234", settings) == f"{MASK} at https://h/l?apikey={MASK}"


async def test_credentials_in_steps_and_urls_are_masked(
    srv: RunningServer, lite: Browser, receiver: Receiver
) -> None:
    server, browser = srv, lite
    dest_url = f"http://ops:{DEST_PASSWORD}@127.0.0.1:9/hook?token={DEST_TOKEN}"
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "people",
                    "source": {"match": ["user.signed_up"]},
                    "steps": [
                        {
                            "enrich.person": {
                                "from": "email",
                                "provider": {
                                    "url": f"https://people.example.com/lookup?email={{email}}&apikey={STEP_KEY}",
                                    "headers": {"X-Auth": STEP_TOKEN},
                                    "mapping": {"company": "company.name"},
                                },
                            }
                        }
                    ],
                    "destinations": [{"webhook.out": {"url": dest_url}, "name": "ops-hook"}],
                }
            ]
        }
    )
    ep_url = f"http://billing:{EP_PASSWORD}@127.0.0.1:9/in?token={EP_TOKEN}&v=2"
    status, ep = await server.request(
        "POST", "/v1/endpoints", json={"url": ep_url, "events": ["invoice.paid"], "auth": "none"}
    )
    assert status == 201, ep
    status, ev = await server.ingest("invoice.paid", {"n": 1})
    assert status == 202

    async def delivery() -> bool:
        _, body = await server.request("GET", f"/v1/events/{ev['id']}")
        return bool(body.get("deliveries"))

    await wait_for(delivery)
    _, body = await server.request("GET", f"/v1/events/{ev['id']}")
    delivery_id = body["deliveries"][0]["id"]

    await signed_in(browser, server)
    for path in (
        "/pipelines",
        "/webhooks/endpoints",
        f"/webhooks/endpoints/{ep['id']}",
        "/webhooks/logs",
        "/webhooks/dead",
        f"/webhooks/dead?destination={ep['destination_id']}",
        f"/events/{ev['id']}",
        f"/deliveries/{delivery_id}",
    ):
        page = await browser.get(path)
        assert page.status == 200, (path, page.status)
        text = page.text
        if path == f"/webhooks/endpoints/{ep['id']}":
            # The edit form's URL field too holds the URL masked (saving it unchanged keeps it).
            field = re.search(
                r'<input id="f-url" name="url" type="text" inputmode="url" required value="([^"]*)"', text
            )
            assert field is not None and field.group(1) == mask_url(ep_url).replace("&", "&amp;")
            title = re.search(r"<title>(.*?)</title>", page.text, re.S)
            assert title is not None and EP_PASSWORD not in title.group(1) and "billing:" in title.group(1)
        for secret in URL_SECRETS:
            assert secret not in text, (path, secret)
    cards = (await browser.get("/pipelines")).text
    assert "X-Auth" in cards and "apikey=" in cards and "email={email}" in cards  # names stay
    assert f"ops:{MASK}@127.0.0.1:9/hook?token={MASK}" in cards
    assert f"billing:{MASK}@127.0.0.1:9/in?token={MASK}&amp;v={MASK}" in cards
    logs = (await browser.get("/webhooks/logs")).text
    assert f"billing:{MASK}@127.0.0.1:9/in" in logs  # the destination filter's option


# ---- 3. cursors that are not ids -----------------------------------------------------------------


async def test_bad_cursors_and_nul_characters_are_messages_not_errors(
    server: RunningServer, browser: Browser
) -> None:
    await signed_in(browser, server)
    # The logs' cursor is sealed (see test_logs_pages_carry_no_count_of_other_projects): an attempt
    # id, or anything else typed in, is not one.
    for before in ("9223372036854775808", "%C2%B2", "12a", "-1", "1" * 30, "0", "gAAAAABfake"):
        page = await browser.get(f"/webhooks/logs?before={before}")
        assert page.status == 422, (before, page.status, page.text[:200])
        assert "is not a page of these logs" in page.text and "flash-error" in page.text
        assert "← newest" in page.text
    # PostgreSQL text holds no NUL: asking for one is no match, not a database error.
    for path in (
        "/webhooks/dead?before=%00",
        "/events?before=%00",
        "/events?type=%00",
        "/events?type=a%00*",
        "/events?id=%00",
        "/events?id=dlv_%00",
    ):
        page = await browser.get(path)
        assert page.status in (404, 422) and "flash-error" in page.text, (path, page.status)
    for path in ("/events/evt_%00", "/deliveries/dlv_%00"):
        page = await browser.get(path)
        assert page.status == 404 and "text/html" in page.headers["Content-Type"], (path, page.status)
    page = await browser.post("/deliveries/dlv_%00/replay")
    assert page.status == 404
    # An endpoint's page shows the test delivery named in ?test=; a NUL there names none.
    status, endpoint = await server.request(
        "POST", "/v1/endpoints", json={"url": "http://127.0.0.1:9/in", "events": ["a.*"]}
    )
    assert status == 201, endpoint
    for test in ("%00", "dlv_%00"):
        page = await browser.get(f"/webhooks/endpoints/{endpoint['id']}?test={test}")
        assert page.status == 200 and "http://127.0.0.1:9/in" in page.text, (test, page.status)


async def test_unknown_filters_are_messages_not_an_unfiltered_list(
    server: RunningServer, browser: Browser
) -> None:
    """A destination that is not the project's (mistyped, or deleted since the link was made) or a
    status that is none listed everything; the dead letters' "Replay all matching" then replayed
    every destination's dead deliveries."""
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "all",
                    "source": {"match": ["*"]},
                    "destinations": [
                        {"webhook.out": {"url": "http://127.0.0.1:9/dead"}, "retry": {"schedule": [0]}}
                    ],
                }
            ]
        }
    )
    status, ev = await server.ingest("invoice.paid", {"n": 1})
    assert status == 202

    async def dead() -> bool:
        _, body = await server.request("GET", "/v1/deliveries?status=dead")
        return bool(body["data"])

    await wait_for(dead)
    await signed_in(browser, server)
    page = await browser.get("/webhooks/dead")
    assert page.status == 200 and ev["id"] in page.text and "Replay all matching" in page.text
    for path, words in (
        ("/webhooks/dead?destination=dst_gone", "There is no destination &#39;dst_gone&#39;"),
        ("/webhooks/dead?destination=%00", "There is no destination"),
        ("/webhooks/logs?destination=dst_gone", "There is no destination &#39;dst_gone&#39;"),
        ("/webhooks/logs?status=bogus", "&#39;bogus&#39; is not a delivery status"),
    ):
        page = await browser.get(path)
        assert page.status == 422 and words in page.text and "flash-error" in page.text, (
            path,
            page.text[:300],
        )
        assert ev["id"] not in page.text, path  # nothing listed
        assert "Replay all matching" not in page.text, path


async def test_a_message_quoting_a_long_value_still_reaches_the_next_page(
    srv: RunningServer, lite: Browser
) -> None:
    """The error quoted the whole destination sent with "Replay all matching": 20,000 characters
    made a 27 KB cookie, which browsers drop (over 4096 bytes) and proxies refuse, so the page
    the redirect led to said nothing."""
    await signed_in(lite, srv)
    await lite.get("/webhooks/dead")
    for name in ("d" * 20_000, "é" * 5_000, "\x01" * 5_000):
        page = await lite.post("/deliveries/replay", {"status": "dead", "destination": name})
        assert page.status == 303, (page.status, page.text[:300])
        cookie = _cookie(page, "il_flash")
        assert len(cookie) < 4096, len(cookie)
        shown = await lite.follow(page)
        assert "flash-error" in shown.text and "no destination" in shown.text, shown.text[:500]
        assert "…" in shown.text


async def test_logs_pages_carry_no_count_of_other_projects(
    server: RunningServer, browser: Browser, receiver: Receiver
) -> None:
    """Attempt ids count up across the server's projects: a page link holding them would tell a
    project, by the gaps between its own, how many attempts others made. The link is sealed, and
    the pages still list every attempt once."""
    _, other_ingest, other_admin = await server.runtime.store.create_project("other")
    for key in (server.admin_key, other_admin):
        status, body = await server.request(
            "POST",
            "/v1/endpoints",
            key=key,
            json={"url": receiver.url + "/pages", "events": ["page.*"], "auth": "none"},
        )
        assert status == 201, body
    mine: set[str] = set()
    for round_ in range(6):  # the two projects' attempts interleaved
        for key, n in ((server.ingest_key, 10), (other_ingest, 5)):
            batch = [{"type": "page.seen", "payload": {"round": round_, "i": i}} for i in range(n)]
            status, body = await server.request("POST", "/v1/events", key=key, json={"batch": batch})
            assert status == 202, body
            if key == server.ingest_key:
                mine.update(item["id"] for item in body["items"])
        expected = (round_ + 1) * 15

        async def arrived(expected: int = expected) -> bool:
            return len(receiver.requests) >= expected

        await wait_for(arrived, timeout=20)
    await signed_in(browser, server)
    first = await browser.get("/webhooks/logs")
    assert first.status == 200
    older = re.search(r'href="/webhooks/logs\?before=([^"&]+)" rel="next"', first.text)
    assert older is not None, first.text[-2000:]
    cursor = older.group(1)
    assert not cursor.isdigit() and len(cursor) > 40, cursor
    second = await browser.get(f"/webhooks/logs?before={cursor}")
    assert second.status == 200, second.text[:300]
    assert 'rel="next"' not in second.text  # 10 attempts left: the last page

    def deliveries(text: str) -> list[str]:
        return re.findall(r'href="/deliveries/(dlv_\w+)"', text)

    listed = deliveries(first.text) + deliveries(second.text)
    assert len(listed) == len(set(listed)) == 60, len(listed)  # 60 attempts, one each, in 2 pages
    events = {(await server.request("GET", f"/v1/deliveries/{d}"))[1]["event_id"] for d in set(listed)}
    assert events == mine  # every one of this project's, none of the other's
    # A cursor sealed by a server with another key is not a page either.
    tampered = cursor[:-8] + ("A" * 8 if not cursor.endswith("A" * 8) else "B" * 8)
    page = await browser.get(f"/webhooks/logs?before={tampered}")
    assert page.status == 422 and "is not a page of these logs" in page.text


# ---- 4. event search by time ---------------------------------------------------------------------


async def test_event_search_takes_epoch_seconds_and_keeps_valid_times(
    srv: RunningServer, lite: Browser
) -> None:
    server, browser = srv, lite
    status, ev = await server.ingest("order.placed", {"n": 1})
    assert status == 202
    now = int(time.time())
    await signed_in(browser, server)

    page = await browser.get(f"/events?since={now - 600}&until={now + 600}")
    assert page.status == 200 and ev["id"] in page.text and "flash-error" not in page.text
    # The datetime-local inputs show the epoch seconds as a time they can hold.
    local = datetime.fromtimestamp(now - 600, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert f'name="since" type="datetime-local" step="1" value="{local}"' in page.text
    page = await browser.get(f"/events?since={now + 600}")
    assert page.status == 200 and ev["id"] not in page.text and "No events match" in page.text
    page = await browser.get(f"/events?until={now - 600}.5")
    assert page.status == 200 and ev["id"] not in page.text

    # A bad "From" is reported, the list is not shown unfiltered under it, and "Until" is kept.
    page = await browser.get(f"/events?since=yesterday&until={now - 600}")
    assert page.status == 422 and "“From”" in page.text and "not a time" in page.text
    assert ev["id"] not in page.text and "No events" not in page.text
    until_local = datetime.fromtimestamp(now - 600, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert f'name="until" type="datetime-local" step="1" value="{until_local}"' in page.text
    assert "“Until”" not in page.text
    for bad in ("253402300800", "-62135596801", "10000-01-01T00:00", "nan", "1e5", "²"):
        page = await browser.get(f"/events?until={bad}")
        assert page.status == 422 and "“Until”" in page.text and ev["id"] not in page.text, bad
    for good in ("253402300799", "-62135596800", "0001-01-01T00:00", "2024-01-01T00:00:00+02:00"):
        page = await browser.get(f"/events?since={good.replace('+', '%2B')}")
        assert page.status == 200 and "flash-error" not in page.text, good

    # From later than Until: said, and nothing listed.
    page = await browser.get(f"/events?since={now + 60}&until={now - 60}")
    assert page.status == 200 and "later than" in page.text and ev["id"] not in page.text


# ---- 5. layout -----------------------------------------------------------------------------------


@pytest.mark.timeout(120)
async def test_long_text_wraps_and_hidden_headers_stay_in_their_box(
    srv: RunningServer, receiver: Receiver, chromium: Any
) -> None:
    server = srv
    receiver.default = Reply(status=500)
    long_name = "d" * 200
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "long",
                    "source": {"match": ["long.thing"]},
                    "destinations": [{"webhook.out": {"url": receiver.url + "/l"}, "name": long_name}],
                }
            ]
        }
    )
    status, ep = await server.request(
        "POST",
        "/v1/endpoints",
        json={
            "url": receiver.url + "/" + "p" * 300,
            "events": ["x.y"],
            "auth": "none",
            "description": "z" * 500,
            "retry": {"schedule": [0], "jitter": 0},
        },
    )
    assert status == 201, ep
    await server.ingest("x.y", {"n": 1})

    async def dead() -> bool:
        _, body = await server.request("GET", "/v1/deliveries?status=dead")
        return bool(body["data"])

    await wait_for(dead)

    page = await new_page(chromium)
    await sign_in(page, server)
    await page.goto(server.url + "/webhooks/endpoints")
    table, box = await page.evaluate(
        "() => [document.querySelector('table.endpoints').getBoundingClientRect().width,"
        " document.querySelector('.table-wrap').clientWidth]"
    )
    assert table <= box + 1, (table, box)

    await page.goto(server.url + "/pipelines")
    # Past the card's edge, or past its own box (the card clips what overflows it).
    overflow = await page.evaluate(
        """() => [...document.querySelectorAll('.dest-name')].map(e => {
             const card = e.closest('.recipe').getBoundingClientRect();
             const past = e.getBoundingClientRect().right - card.right;
             return Math.max(past, e.scrollWidth - e.clientWidth); })"""
    )
    assert overflow and max(overflow) <= 1, overflow
    await page.context.close()

    phone = await new_page(chromium, width=390, height=844)
    await sign_in(phone, server)
    for path in ("/webhooks/dead", "/webhooks/endpoints", "/pipelines"):
        await phone.goto(server.url + path)
        width = await phone.evaluate("() => document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
    await phone.context.close()


# ---- 6. unknown paths ----------------------------------------------------------------------------


async def test_unknown_paths_get_the_dashboards_404_page(srv: RunningServer, lite: Browser) -> None:
    server, browser = srv, lite
    # What a browser sends when it navigates.
    browser.session.headers["Accept"] = "text/html,application/xhtml+xml,*/*;q=0.8"
    for path in ("/nothing", "/webhooks/nope", "/events/x/y", "/v1x"):
        page = await browser.get(path)  # signed out
        assert page.status == 404 and page.headers["Content-Type"].startswith("text/html"), path
        assert "Not found" in page.text and 'href="/"' in page.text
        assert "default-src 'none'" in page.headers["Content-Security-Policy"]
    await signed_in(browser, server)
    page = await browser.get("/webhooks/nope")
    assert page.status == 404 and 'aria-label="Main"' in page.text  # the signed-in layout
    # The API's paths keep their JSON, even for a browser; so do API clients anywhere.
    for path, accept in [
        *((p, "text/html") for p in ("/v1/nope", "/v1", "/openapi.json/x", "/docs/nope", "/redoc/x")),
        ("/nothing", "*/*"),
        ("/nothing", "application/json"),
    ]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.url + path, headers={"Accept": accept}) as resp,
        ):
            assert resp.status == 404, path
            assert resp.headers["Content-Type"].startswith("application/json"), (path, accept)
    # A trailing slash is another path (no redirect built from the Host header); method errors
    # are as before.
    page = await browser.get("/events/")
    assert page.status == 404 and "Not found" in page.text
    page = await browser.get("/logout")
    assert page.status == 405


async def test_an_unknown_id_gets_a_404_page_naming_it(srv: RunningServer, lite: Browser) -> None:
    """Each page of one event, delivery or endpoint, and each form posted to one, answers an id
    this project has none of with the same 404 page, naming what was asked for."""
    await signed_in(lite, srv)
    for method, path, what, key in [
        ("GET", "/events/evt_nope", "event", "evt_nope"),
        ("GET", "/deliveries/dlv_nope", "delivery", "dlv_nope"),
        ("POST", "/deliveries/dlv_nope/replay", "delivery", "dlv_nope"),
        ("POST", "/deliveries/dlv_%00/replay", "delivery", "dlv_\x00"),
        ("GET", "/webhooks/endpoints/ep_nope", "endpoint", "ep_nope"),
        ("POST", "/webhooks/endpoints/ep_nope", "endpoint", "ep_nope"),
        ("POST", "/webhooks/endpoints/ep_nope/test", "endpoint", "ep_nope"),
    ]:
        page = await (lite.get(path) if method == "GET" else lite.post(path))
        assert page.status == 404, (method, path)
        assert f"There is no {what} {escape(repr(key))} in this project." in page.text, (method, path)
