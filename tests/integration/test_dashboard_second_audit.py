"""Fixes from the dashboard's second browser audit, each checked as a browser meets the page.

1. A chart point with no neighbour (no line through it) is drawn as a visible dot.
2. The endpoint form shows every invalid field's error at once, in sentences, each field marked.
3. Dead letters filtered by destination count that destination's; "Replay all matching" asks first.
5. An event's page says which destinations a ``when`` passed over, and names endpoints by URL.
6. Latency percentiles never exceed the longest attempt of their bucket.
7. A pipeline card's YAML shows a step whose options are all defaults as ``{}``.
8. Bad query values (range, before, page) are said above the content.
9. Whole-second timeouts read "10 s"; dead letters are sorted and headed by when they failed.
"""

from __future__ import annotations

import html
import re
from typing import Any

import yaml
from sqlalchemy import insert

from ingestlayer import clock as db_clock
from ingestlayer.store.schema import attempts
from ingestlayer.store.stats import DashboardStats
from tests.integration.test_delivery_counts import add_deliveries
from tests.support.dashboard_client import Browser, signed_in
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, wait_for


async def _endpoint(server: RunningServer, url: str, **extra: Any) -> dict[str, Any]:
    body = {"url": url, "events": ["a.*"], "auth": "none", **extra}
    status, ep = await server.request("POST", "/v1/endpoints", json=body)
    assert status == 201, ep
    return dict(ep)


async def _settled(server: RunningServer, event_id: str, statuses: set[str]) -> list[dict[str, Any]]:
    async def done() -> list[dict[str, Any]] | None:
        status, body = await server.request("GET", f"/v1/events/{event_id}")
        dels = body.get("deliveries") or [] if status == 200 else []
        return dels if dels and all(d["status"] in statuses for d in dels) else None

    found: list[dict[str, Any]] = await wait_for(done, timeout=20)
    return found


def _figure(html: str, chart: str) -> str:
    start = html.index(f'id="chart-{chart}"')
    return html[start : html.index("</figure>", start)]


# ---- 1. a lone chart point is visible ------------------------------------------------------------


async def test_a_point_with_no_neighbour_is_a_visible_dot(
    srv: RunningServer, lite: Browser, receiver: Receiver
) -> None:
    await _endpoint(srv, receiver.url + "/one")
    status, ev = await srv.ingest("a.b", {"n": 1})
    assert status == 202
    await _settled(srv, ev["id"], {"delivered"})
    await signed_in(lite, srv)
    page = await lite.get("/?range=1h")
    assert page.status == 200
    for chart in ("success", "latency"):
        fig = _figure(page.text, chart)
        # One bucket with attempts: no one-point polyline (it draws nothing), a dot drawn always.
        assert "<polyline" not in fig, fig
        assert re.search(r'<circle [^>]*class="alone"', fig), fig
    css = await lite.get("/static/dashboard.css")
    rule = re.search(r"([^{}]*circle\.alone[^{}]*)\{([^}]*)\}", css.text)
    assert rule is not None and "opacity: 1" in rule.group(2), rule


# ---- 6. percentiles capped at the longest attempt ------------------------------------------------


async def test_latency_percentiles_never_exceed_the_longest_attempt(
    server: RunningServer, browser: Browser
) -> None:
    """20 attempts of 10.015 s fall in the 10-15 s bin, where interpolation put p95 at 14.75 s."""
    (dlv,) = await add_deliveries(server.runtime.store, server.project_id, {"dead": 1})
    now = db_clock.now()
    rows = [
        {
            "delivery_id": dlv,
            "project_id": server.project_id,
            "n": i + 1,
            "started_at": now - 1 - i * 0.01,
            "duration_ms": 10_015.0,
            "status_code": None,
            "error": "timed out after 10s",
        }
        for i in range(20)
    ]
    async with server.runtime.store.engines.write.begin() as conn:
        await conn.execute(insert(attempts), rows)
    series = await DashboardStats(server.runtime.store.engines).series(server.project_id, "1h")
    assert series.p95 is not None and series.p50 is not None
    assert series.p50 <= series.p95 <= 10_015.0, (series.p50, series.p95)
    bucket_p95 = [p.p95 for p in series.points if p.p95 is not None]
    assert bucket_p95 and max(bucket_p95) <= 10_015.0, bucket_p95
    # The page's tile and data table likewise.
    await signed_in(browser, server)
    page = await browser.get("/?range=1h")
    assert page.status == 200 and "14.7 s" not in page.text and "10.0 s" in page.text


# ---- 3. dead letters by destination: counted so, replayed after a question ----------------------


async def test_dead_letters_count_the_filtered_destination_and_replay_asks_first(
    srv: RunningServer, lite: Browser, receiver: Receiver
) -> None:
    receiver.default = Reply(status=500)
    fast_dead = {"schedule": [0], "jitter": 0}
    a = await _endpoint(srv, receiver.url + "/a", events=["a.*"], retry=fast_dead)
    b = await _endpoint(srv, receiver.url + "/b", events=["b.*"], retry=fast_dead)
    sent = [(await srv.ingest(t, {"n": i}))[1]["id"] for i, t in enumerate(["a.x", "a.x", "a.x", "b.x"])]
    for event_id in sent:
        await _settled(srv, event_id, {"dead"})
    await signed_in(lite, srv)

    page = await lite.get(f"/webhooks/dead?destination={a['destination_id']}")
    assert page.status == 200
    text = re.sub(r"\s+", " ", page.text)
    assert "3 dead deliveries to <strong" in text and "4 dead" not in text, text
    # The first button only opens the question, which says how many; the form is inside it.
    confirm = re.search(
        r'<details class="danger"> <summary class="btn btn-primary">Replay all matching…</summary> '
        r'<form method="post" action="/deliveries/replay" class="confirm">(.*?)</form> </details>',
        text,
    )
    assert confirm is not None, text
    assert "Replay 3 dead deliveries to" in confirm.group(1)
    assert ">Replay 3 deliveries</button>" in confirm.group(1)
    assert f'name="destination" value="{a["destination_id"]}"' in confirm.group(1)
    # The logs' status filter counts the chosen destination's deliveries too.
    logs = await lite.get(f"/webhooks/logs?destination={b['destination_id']}")
    assert "dead (1)" in logs.text and "dead (4)" not in logs.text

    everything = re.sub(r"\s+", " ", (await lite.get("/webhooks/dead")).text)
    assert "4 dead deliveries in total, to every destination" in everything
    assert ">Replay 4 deliveries</button>" in everything

    done = await lite.follow(
        await lite.post("/deliveries/replay", {"status": "dead", "destination": a["destination_id"]})
    )
    assert "Replaying 3 deliveries." in done.text


# ---- 5. an event's page: destinations passed over, endpoints by URL ------------------------------


async def test_event_page_says_what_a_when_passed_over_and_names_endpoints_by_url(
    srv: RunningServer, lite: Browser, receiver: Receiver
) -> None:
    await srv.apply(
        {
            "pipelines": [
                {
                    "name": "plans",
                    "source": {"match": ["a.*"]},
                    "destinations": [
                        {"webhook.out": {"url": receiver.url + "/all"}, "name": "everyone"},
                        {
                            "webhook.out": {"url": receiver.url + "/pro"},
                            "name": "pro-only",
                            "when": 'plan = "pro"',
                        },
                    ],
                }
            ]
        }
    )
    ep = await _endpoint(srv, receiver.url + "/hook?token=abcdef123456")
    status, ev = await srv.ingest("a.b", {"plan": "free"})
    assert status == 202
    await _settled(srv, ev["id"], {"delivered"})

    # The API's trace records it, with the condition as written.
    _, got = await srv.request("GET", f"/v1/events/{ev['id']}")
    (plans,) = [t for t in got["trace"] if t["pipeline"] == "plans"]
    assert plans["destinations"] == ["everyone"]
    assert plans["passed_over"] == {"pro-only": 'when plan = "pro" is false'}

    await signed_in(lite, srv)
    page = await lite.get(f"/events/{ev['id']}")
    assert page.status == 200
    assert "Passed over <code>pro-only</code>: when plan = &#34;pro&#34; is false" in page.text, page.text
    # The endpoint's pipeline and destination read as its URL (masked), as on the pipelines page.
    assert f"endpoint:{ep['id']}" not in page.text
    masked = receiver.url + "/hook?token=••••••"
    assert page.text.count(f"<code>{masked}</code>") >= 1
    assert f'<code class="wrap">{masked}</code>' in page.text  # the trace entry's heading
    assert "abcdef123456" not in page.text


# ---- 7. a step with default options reads {} in the card's YAML, and round-trips -----------------


async def test_a_step_with_default_options_shows_an_empty_mapping_that_applies_unchanged(
    srv: RunningServer, lite: Browser
) -> None:
    document = {
        "pipelines": [
            {
                "name": "people",
                "source": {"match": ["a.*"]},
                "steps": [{"enrich.entity": {}}, {"enrich.person": {}}],
                "destinations": [{"webhook.out": {"url": "http://127.0.0.1:9/x"}}],
            }
        ]
    }
    await srv.apply(document)
    await signed_in(lite, srv)
    page = await lite.get("/pipelines")
    found = re.search(r'<details class="yaml">.*?<pre><code>(.*?)</code></pre>', page.text, re.S)
    assert found is not None, page.text
    shown = html.unescape(found.group(1))
    assert "- enrich.entity: {}" in shown and "- enrich.person: {}" in shown, shown
    assert "null" not in shown
    # The YAML as shown, applied again: nothing to change.
    status, body = await srv.request(
        "POST", "/v1/apply", json={"document": yaml.safe_load(shown), "dry_run": True}
    )
    assert status == 200, body
    assert {c["action"] for c in body["changes"]} == {"unchanged"}, body


# ---- 8. bad query values are said above the content ----------------------------------------------


async def test_bad_query_values_are_said_not_silently_replaced(srv: RunningServer, lite: Browser) -> None:
    status, ev = await srv.ingest("a.b", {"n": 1})
    assert status == 202
    await signed_in(lite, srv)

    def alert(text: str) -> str:
        found = re.search(r'<p class="flash flash-error" role="alert">(.*?)</p>', text)
        assert found is not None, text[-3000:]
        return html.unescape(found.group(1))

    page = await lite.get("/?range=3y")
    # The page shows the default window, and says so (200: what is shown is a page).
    assert page.status == 200 and "'3y' is not a time window" in alert(page.text)
    assert '<a href="/?range=24h" aria-current="true">' in page.text  # what is shown instead
    assert "flash-error" not in (await lite.get("/?range=7d")).text

    page = await lite.get("/events?before=xyz")
    assert page.status == 422 and "'xyz' is not a page of these events" in alert(page.text)
    assert ev["id"] not in page.text  # no rows under the error
    ok = await lite.get(f"/events?before={ev['id'][:-1]}Z")
    assert ok.status == 200 and "flash-error" not in ok.text

    page = await lite.get("/pipelines?page=abc")
    assert page.status == 200 and "'abc' is not a page number. Showing page 1." in alert(page.text)
    page = await lite.get("/pipelines?page=999")
    assert page.status == 200 and "There is no page 999: there is 1 page. Showing page 1." in alert(page.text)
    assert "flash-error" not in (await lite.get("/pipelines?page=1")).text

    page = await lite.get("/webhooks/dead?before=xyz")
    assert page.status == 422 and "not a delivery id" in alert(page.text)


# ---- 2. the endpoint form: every error at once, in sentences, every field marked -----------------


def _field_errors(text: str) -> dict[str, str]:
    return {
        name: html.unescape(msg)
        for name, msg in re.findall(r'<p class="field-error" id="err-(\w+)">(.*?)</p>', text)
    }


def _marked(text: str, name: str) -> bool:
    """Whether a control of field ``name`` is aria-invalid and described by its error."""
    for tag in re.findall(rf'<(?:input|select|textarea)[^>]*name="{name}"[^>]*>', text):
        described = re.search(r'aria-describedby="([^"]*)"', tag)
        if 'aria-invalid="true"' in tag and described and f"err-{name}" in described.group(1).split():
            return True
    return False


async def test_the_endpoint_forms_show_every_error_at_once_in_sentences(
    srv: RunningServer, lite: Browser, receiver: Receiver
) -> None:
    await signed_in(lite, srv)
    await lite.get("/webhooks/endpoints/new")
    # What the audit typed: each of five fields wrong, and the form showed one error at a time.
    form = {
        "url": "ftp://nope",
        "events": "invoice..created, BAD TYPE",
        "auth": "bearer",
        "secret": "",
        "signing": "ingestlayer",
        "format": "ingestlayer",
        "timeout": "-5",
        "retry": "0, abc, 60",
        "description": "",
        "enabled": "1",
    }
    page = await lite.post("/webhooks/endpoints", form)
    assert page.status == 422
    errors = _field_errors(page.text)
    assert set(errors) == {"url", "events", "secret", "timeout", "retry"}, errors
    assert errors["url"] == "This URL must be an absolute http:// or https:// URL."
    assert errors["events"].startswith("“invoice..created” is not an event type:")
    assert errors["secret"] == "Bearer auth sends your token: type it here."
    assert errors["timeout"] == "“-5” seconds cannot be a timeout: type more than 0 and at most 60."
    assert errors["retry"].startswith("“abc” is not a number of seconds:")
    for name in errors:
        assert _marked(page.text, name), name
    for message in errors.values():
        assert "`" not in message and (message[0].isupper() or message[0] == "“") and message.endswith("."), (
            message
        )

    # What the user typed is named, not a list position: "retry.schedule[0] … got -1.0".
    page = await lite.post(
        "/webhooks/endpoints",
        {**form, "url": receiver.url, "events": "a.b", "auth": "none", "timeout": "10", "retry": "-1, 5"},
    )
    errors = _field_errors(page.text)
    assert errors == {"retry": "“-1” is negative: a delay is 0 seconds (at once) or more."}, errors
    _, listed = await srv.request("GET", "/v1/endpoints")
    assert listed["data"] == []  # nothing was added by any of these

    # The edit form: the fields that had no aria-invalid (Description, Body format, Signature
    # headers) are marked too, with the others, all at once.
    ep = await _endpoint(srv, receiver.url + "/edit")
    await lite.get(f"/webhooks/endpoints/{ep['id']}")
    edit = {
        **form,
        "url": ep["url"],
        "events": "a.b",
        "auth": "none",
        "retry": "",
        "format": "xml",
        "signing": "other",
        "description": "d" * 501,
        "timeout": "x",
    }
    page = await lite.post(f"/webhooks/endpoints/{ep['id']}", edit)
    assert page.status == 422
    errors = _field_errors(page.text)
    assert set(errors) == {"format", "signing", "description", "timeout"}, errors
    assert errors["description"] == "At most 500 characters: this one has 501."
    for name in errors:
        assert _marked(page.text, name), name


# ---- 9. cosmetic: whole-second timeouts, the format select, dead letters' columns, contrast ----


def _contrast(fg: str, bg: str) -> float:
    def lum(hex_colour: str) -> float:
        channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        r, g, b = (c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels)
        return 0.2126 * r + 0.7152 * g + 0.0722 * b

    hi, lo = sorted((lum(fg), lum(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


async def test_timeouts_format_select_dead_letter_columns_and_badge_contrast(
    srv: RunningServer, lite: Browser, receiver: Receiver
) -> None:
    whole = await _endpoint(srv, receiver.url + "/w")
    half = await _endpoint(srv, receiver.url + "/h", events=["b.*"], timeout=2.5)
    await signed_in(lite, srv)
    page = await lite.get(f"/webhooks/endpoints/{whole['id']}")
    assert "<dt>Timeout</dt><dd>10 s</dd>" in page.text and "10.0 s" not in page.text
    assert "<dt>Timeout</dt><dd>2.5 s</dd>" in (await lite.get(f"/webhooks/endpoints/{half['id']}")).text
    # The format options are short enough for the half-width select; the shapes are the hint's.
    options = re.findall(r'<option value="(?:ingestlayer|data)"[^>]*>([^<]*)</option>', page.text)
    assert options[:2] == ["ingestlayer", "data"], options
    assert 'aria-describedby="h-format"' in page.text and '"occurred_at"' in page.text

    # Dead letters: listed by creation, and the first column is headed so; the failure time
    # is in its own column with the last response.
    receiver.default = Reply(status=500)
    await _endpoint(srv, receiver.url + "/dead", events=["c.*"], retry={"schedule": [0], "jitter": 0})
    _, ev = await srv.ingest("c.x", {})
    (dead,) = await _settled(srv, ev["id"], {"dead"})
    _, full = await srv.request("GET", f"/v1/deliveries/{dead['id']}")
    text = (await lite.get("/webhooks/dead")).text
    heads = re.findall(r'<th scope="col"[^>]*>([^<]*)<', text)
    assert heads[:5] == ["Created", "Event", "Destination", "Attempts", "Failed"], heads
    row = text[text.index("<tbody") :]
    first_time = re.search(r'<time datetime="([^"]+)"', row)
    assert first_time is not None and first_time.group(1) == full["created_at"], (first_time, full)

    css = (await lite.get("/static/dashboard.css")).text
    rule = re.search(r"\.st-retrying[^{]*\{([^}]*)\}", css)
    assert rule is not None
    colour = re.search(r"color: (#[0-9a-f]{6})", rule.group(1))
    assert colour is not None and _contrast(colour.group(1), "#fef3c7") >= 4.5, rule.group(1)
