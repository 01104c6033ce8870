"""A receiver that echoes the request it got never puts a configured credential in what is stored.

What a destination stores of an answer (an attempt's response excerpt and error, a step's error)
is shown by the API, on a delivery's page, in the logs and in an endpoint's test result. The
dashboard masks a destination's inline header values, its URL's password and its query values;
a receiver that echoes the request (httpbin's /anything: the URL, the headers, and the
``Authorization: Basic`` made from the URL's ``user:password``) used to put all of them into the
stored excerpt, where only the secrets resolved from references were scrubbed. Each credential
is searched for as written, base64-encoded (standard and URL-safe) and, for the userinfo, as
``user:password`` and its base64 form (what HTTP Basic sends).
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ingestlayer.urlmask import MASK
from tests.integration.test_enrich_steps import trace_of
from tests.support.dashboard_client import Browser, signed_in
from tests.support.receiver import Received, Receiver, Reply, serve_handler
from tests.support.server import RunningServer, wait_for

URL_USER = "apiuser"
URL_PASSWORD = "ECHOURLPASSWORD"
QUERY_TOKEN = "ECHOQUERYTOKEN"
INLINE_HEADER = "ECHOINLINEHEADER"
# Under a name that does not say "credential": the dashboard masks it all the same.
INLINE_PLAIN_NAME = "ECHOPLAINNAMEDHEADER"
BEARER = "ECHOBEARERSECRET"
EDIT_FIELD = re.compile(r'<input id="f-url" name="url" type="text" inputmode="url" required value="([^"]*)"')


def forms(*values: str) -> list[str]:
    """Each value as written and base64-encoded (standard and URL-safe)."""
    out = []
    for v in values:
        out += [v, base64.b64encode(v.encode()).decode(), base64.urlsafe_b64encode(v.encode()).decode()]
    return out


CREDENTIALS = forms(
    URL_PASSWORD, f"{URL_USER}:{URL_PASSWORD}", QUERY_TOKEN, INLINE_HEADER, INLINE_PLAIN_NAME, BEARER
)


def leaked(text: str) -> list[str]:
    return [c for c in CREDENTIALS if c in text]


def echo_url(receiver_url: str, path: str) -> str:
    """``receiver_url`` + ``path`` with a password in its userinfo and a token in its query."""
    return (
        receiver_url.replace("http://", f"http://{URL_USER}:{URL_PASSWORD}@") + f"{path}?token={QUERY_TOKEN}"
    )


async def finished(server: RunningServer, event_id: str, n: int) -> list[dict[str, Any]]:
    async def done() -> list[dict[str, Any]] | None:
        _, ev = await server.request("GET", f"/v1/events/{event_id}")
        found: list[dict[str, Any]] = ev["deliveries"]
        ok = len(found) == n and all(d["status"] in ("delivered", "dead") for d in found)
        return found if ok else None

    result: list[dict[str, Any]] = await wait_for(done)
    return result


async def delivered(server: RunningServer, receiver: Receiver, n: int) -> Received:
    """An ``order.paid`` event numbered ``n`` reaches the receiver; the request it got."""
    _, ev = await server.ingest("order.paid", {"n": n})
    (delivery,) = await finished(server, ev["id"], 1)
    assert delivery["status"] == "delivered", delivery
    got = receiver.requests[-1]
    assert got.json()["payload"]["n"] == n
    return got


async def test_an_echoing_receiver_leaves_no_credential_in_excerpts_pages_or_test_results(
    server: RunningServer, receiver: Receiver, browser: Browser
) -> None:
    receiver.default = Reply(status=200, echo=True)
    await server.set_secret("echosec", BEARER)
    inline = {"X-Api-Key": INLINE_HEADER, "X-Access": INLINE_PLAIN_NAME}
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "echoes",
                    "source": {"match": ["echo.*"]},
                    "destinations": [
                        {
                            "webhook.out": {
                                "url": echo_url(receiver.url, "/ok/bearer"),
                                "auth": "bearer",
                                "secret": "ref:echosec",
                                "headers": inline,
                            },
                            "name": "echo-bearer",
                        },
                        {
                            # Without an Authorization of its own, the URL's user:password is
                            # sent as Authorization: Basic.
                            "webhook.out": {"url": echo_url(receiver.url, "/ok/basic"), "headers": inline},
                            "name": "echo-basic",
                        },
                    ],
                }
            ]
        }
    )
    _, ev = await server.ingest("echo.me", {"n": 1})
    deliveries = await finished(server, ev["id"], 2)
    assert {d["status"] for d in deliveries} == {"delivered"}, deliveries
    # Everything was sent: the receiver got each credential.
    got = {r.path: r.headers for r in receiver.requests}
    assert got["/ok/bearer"]["X-Api-Key"] == INLINE_HEADER
    assert got["/ok/bearer"]["X-Access"] == INLINE_PLAIN_NAME
    assert got["/ok/bearer"]["Authorization"] == f"Bearer {BEARER}"
    basic = base64.b64encode(f"{URL_USER}:{URL_PASSWORD}".encode()).decode()
    assert got["/ok/basic"]["Authorization"] == f"Basic {basic}"

    excerpts = {}
    for d in deliveries:
        _, full = await server.request("GET", f"/v1/deliveries/{d['id']}")
        assert leaked(str(full)) == [], (d["destination"], leaked(str(full)))
        (attempt,) = full["attempts"]
        excerpts[d["destination"]] = attempt["response_excerpt"]
    # The echo is in the excerpt, each credential in it replaced, so none was simply cut off.
    for excerpt in excerpts.values():
        assert "?token=<redacted>" in excerpt and '"args":{"token":"<redacted>"}' in excerpt, excerpt
        assert '"X-Api-Key":"<redacted>"' in excerpt, excerpt
    assert '"Authorization":"Bearer <redacted>"' in excerpts["echo-bearer"]
    assert '"Authorization":"Basic <redacted>"' in excerpts["echo-basic"]
    assert '"basic_auth":"<redacted>"' in excerpts["echo-basic"]

    # An endpoint, tested from the dashboard and through the API.
    status, ep = await server.request(
        "POST",
        "/v1/endpoints",
        json={
            "url": echo_url(receiver.url, "/ok/endpoint"),
            "events": ["never.*"],
            "auth": "none",
            "headers": inline,
        },
    )
    assert status == 201, ep
    status, tested = await server.request("POST", f"/v1/destinations/{ep['destination_id']}/test")
    assert status == 200 and tested["attempts"], tested
    assert "Basic <redacted>" in tested["attempts"][0]["response_excerpt"], tested
    assert leaked(str(tested)) == [], leaked(str(tested))

    await signed_in(browser, server)
    page = await browser.follow(await browser.post(f"/webhooks/endpoints/{ep['id']}/test"))
    assert page.status == 200 and "Basic &lt;redacted&gt;" in page.text, page.text[-2000:]
    # The edit form's URL field too holds the URL masked (saving it unchanged keeps it).
    field = EDIT_FIELD.search(page.text)
    assert field is not None and MASK in field.group(1), page.text[-2000:]
    pages = {"endpoint test": page.text}
    for path in ("/webhooks/logs", *(f"/deliveries/{d['id']}" for d in deliveries)):
        shown = await browser.get(path)
        assert shown.status == 200, (path, shown.status)
        pages[path] = shown.text
    for path, text in pages.items():
        assert leaked(text) == [], (path, leaked(text))
    assert "token=&lt;redacted&gt;" in pages["/webhooks/logs"]
    for d in deliveries:
        assert "X-Api-Key&#34;:&#34;&lt;redacted&gt;" in pages[f"/deliveries/{d['id']}"]


async def test_a_credential_at_the_excerpts_end_is_not_left_in_part(
    server: RunningServer, receiver: Receiver
) -> None:
    """The excerpt keeps the answer's first 1024 bytes: a credential across that end used to be
    cut before it was scrubbed, so its first part was stored."""
    token = "ECHOCUTTOKEN" + "x" * 40
    receiver.default = Reply(status=500, body=b"." * 1000 + token.encode() + b"." * 100)
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "cut",
                    "source": {"match": ["cut.*"]},
                    "destinations": [
                        {
                            "webhook.out": {"url": f"{receiver.url}/cut?token={token}"},
                            "retry": {"schedule": [0], "jitter": 0},
                        }
                    ],
                }
            ]
        }
    )
    _, ev = await server.ingest("cut.me", {"n": 1})
    (d,) = await finished(server, ev["id"], 1)
    _, full = await server.request("GET", f"/v1/deliveries/{d['id']}")
    (attempt,) = full["attempts"]
    assert attempt["response_excerpt"].startswith("." * 1000 + "<redacted>"), attempt
    assert "ECHOCUT" not in str(full)


# ---- steps and chat destinations calling a server that echoes -------------------------------------


def told(request: web.Request) -> str:
    """What an echoing error page says: the path and query as requested, then the values of the
    credential headers, X-Auth before Authorization."""
    values = [request.headers[h] for h in ("X-Auth", "Authorization") if h in request.headers]
    return " ".join([request.raw_path, *values])


async def test_a_lookup_provider_echoing_the_request_leaves_no_credential_in_the_step_error(
    server: RunningServer, receiver: Receiver
) -> None:
    async def page(request: web.Request) -> web.Response:
        # Answered with 200 but no JSON object: a failed lookup, whose error quotes the answer.
        return web.Response(text=told(request), content_type="text/html")

    base, runner = await serve_handler(page)
    try:
        provider = {
            "url": echo_url(base, "/p").replace(
                f"?token={QUERY_TOKEN}", f"?email={{email}}&api_key={QUERY_TOKEN}"
            ),
            # No Authorization of its own: the URL's user:password is sent as Authorization: Basic.
            "headers": {"X-Auth": INLINE_HEADER},
            "mapping": {"role": "title"},
        }
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": "p",
                        "source": {"match": ["signup"]},
                        "steps": [{"enrich.person": {"attach": ["role"], "provider": provider}}],
                        "destinations": [{"webhook.out": {"url": receiver.url + "/hooks"}}],
                    }
                ]
            }
        )
        _, ev = await server.ingest("signup", {"email": "a@corp.io"})
        step = (await trace_of(server, ev["id"]))[0]["steps"][0]
        assert "answered 200 without a JSON object" in step["error"], step
        assert "api_key=<redacted> <redacted> Basic <redacted>" in step["error"], step
        _, full = await server.request("GET", f"/v1/events/{ev['id']}")
        assert leaked(str(full)) == [], leaked(str(full))
    finally:
        await runner.cleanup()


async def test_a_model_server_echoing_the_request_leaves_no_credential_in_the_step_error(
    server: RunningServer, receiver: Receiver
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        message = f"no access for {told(request)}"
        return web.json_response({"error": {"message": message}}, status=401)

    base, runner = await serve_handler(refuse)
    try:
        classify = {
            "field": "topic",
            "labels": ["billing", "other"],
            "provider": "openai",
            "model": "m",
            # No api_key: the URL's user:password is sent as Authorization: Basic.
            "base_url": echo_url(base, "/v1").split("?")[0],
            "prompt": "$event.text",
        }
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": "c",
                        "source": {"match": ["ticket"]},
                        "steps": [{"classify": classify}],
                        "destinations": [{"webhook.out": {"url": receiver.url + "/hooks"}}],
                    }
                ]
            }
        )
        _, ev = await server.ingest("ticket", {"text": "hello"})
        step = (await trace_of(server, ev["id"]))[0]["steps"][0]
        assert "answered HTTP 401: no access for" in step["error"], step
        assert "Basic <redacted>" in step["error"] and f"{URL_USER}:••••••@" in step["error"], step
        _, full = await server.request("GET", f"/v1/events/{ev['id']}")
        assert leaked(str(full)) == [], leaked(str(full))
    finally:
        await runner.cleanup()


async def test_a_telegram_api_base_echoing_the_request_leaves_no_credential_in_the_attempt(
    server: RunningServer,
) -> None:
    async def refuse(request: web.Request) -> web.Response:
        # The path as requested, and again percent-encoded (the token's ":" as "%3A"), and the
        # token's secret part alone.
        path = request.raw_path
        told_again = f"{quote(path, safe='')} {path.split(':')[-1].split('/')[0]}"
        return web.json_response(
            {"ok": False, "error_code": 400, "description": f"Bad Request: {told(request)} {told_again}"},
            status=400,
        )

    base, runner = await serve_handler(refuse)
    try:
        await server.set_secret("tg", "123456:ABCdefGhIJKlmNoPQRsTUVwxyZ")
        api_base = echo_url(base, "/tg").split("?")[0]
        await server.apply(
            {
                "pipelines": [
                    {
                        "name": "t",
                        "source": {"match": ["tg"]},
                        "destinations": [
                            {
                                "telegram": {"bot_token": "ref:tg", "chat_id": 1, "api_base": api_base},
                                "retry": {"schedule": [0], "jitter": 0},
                            }
                        ],
                    }
                ]
            }
        )
        _, ev = await server.ingest("tg", {"n": 1})
        (d,) = await finished(server, ev["id"], 1)
        _, full = await server.request("GET", f"/v1/deliveries/{d['id']}")
        (attempt,) = full["attempts"]
        assert "Basic <redacted>" in str(attempt), attempt
        assert leaked(str(full)) == [], leaked(str(full))
        for form in ("ABCdefGhIJKlmNoPQRsTUVwxyZ", "123456%3AABC", "%2Fbot123456"):
            assert form not in str(full), (form, attempt)
    finally:
        await runner.cleanup()


PATH_TOKEN = "PathT0kenAbCdEf12345678"  # as Slack's and Discord's webhook URLs carry theirs


async def test_a_token_in_a_urls_path_is_shown_nowhere(
    server: RunningServer, receiver: Receiver, browser: Browser
) -> None:
    receiver.default = Reply(status=200, echo=True)
    url = f"{receiver.url}/services/T0123/{PATH_TOKEN}"
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "chat",
                    "source": {"match": ["chat.*"]},
                    "destinations": [{"webhook.out": {"url": url}, "name": "chat-hook"}],
                }
            ]
        }
    )
    status, ep = await server.request("POST", "/v1/endpoints", json={"url": url, "events": ["chat.*"]})
    assert status == 201 and PATH_TOKEN not in str(ep), ep
    _, ev = await server.ingest("chat.said", {"n": 1})
    deliveries = await finished(server, ev["id"], 2)
    assert {d["status"] for d in deliveries} == {"delivered"}, deliveries
    assert {r.path for r in receiver.requests} == {f"/services/T0123/{PATH_TOKEN}"}  # sent as written

    status, dest = await server.request("GET", "/v1/destinations/chat-hook")
    assert status == 200 and dest["config"]["url"] == f"{receiver.url}/services/T0123/{MASK}", dest
    for path in (
        "/v1/destinations",
        "/v1/endpoints",
        "/v1/pipelines",
        *(f"/v1/deliveries/{d['id']}" for d in deliveries),
    ):
        status, answer = await server.request("GET", path)
        assert status == 200 and PATH_TOKEN not in str(answer), (path, answer)
    _, full = await server.request("GET", f"/v1/deliveries/{deliveries[0]['id']}")
    assert "/services/T0123/<redacted>" in full["attempts"][0]["response_excerpt"], full

    await signed_in(browser, server)
    pages = ("/pipelines", "/webhooks/endpoints", f"/webhooks/endpoints/{ep['id']}", "/webhooks/logs")
    for path in (*pages, *(f"/deliveries/{d['id']}" for d in deliveries)):
        page = await browser.get(path)
        assert page.status == 200 and PATH_TOKEN not in page.text, path
