"""Slack through the real server: the OAuth connection, chat.postMessage, incoming webhooks.

Slack is :class:`tests.support.fake_slack.FakeSlack` on 127.0.0.1, which checks tokens, channels
and Block Kit as Slack does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import aiohttp
import pytest

from ingestlayer.destinations.slack.oauth import STATE_CACHE_PREFIX, STATE_TTL_SECONDS, seal_state
from ingestlayer.store.store import Store
from tests.support.api import add_endpoint
from tests.support.fake_slack import FakeSlack
from tests.support.receiver import Receiver
from tests.support.server import RunningServer, final_delivery, start_server, wait_for

FAST = {"schedule": [0, 0.05, 0.05, 0.05], "jitter": 0}


@pytest.fixture
async def slack(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeSlack]:
    fake = await FakeSlack().start()
    # The destination's default API base, so configs keep the recipe's exact shape.
    monkeypatch.setenv("INGESTLAYER_SLACK_API_URL", fake.api_url)
    yield fake
    await fake.stop()


@pytest.fixture
def slack_app(server: RunningServer, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> FakeSlack:
    """The server configured as the fake Slack's OAuth app."""
    monkeypatch.setenv("INGESTLAYER_SLACK_CLIENT_ID", slack.client_id)
    monkeypatch.setenv("INGESTLAYER_SLACK_CLIENT_SECRET", slack.client_secret)
    monkeypatch.setenv("INGESTLAYER_PUBLIC_URL", server.url)
    monkeypatch.setenv("INGESTLAYER_SLACK_BASE_URL", slack.url)
    return slack


def slack_pipeline(steps: list[Any] | None = None, **settings: Any) -> dict[str, Any]:
    retry = settings.pop("retry", FAST)
    return {
        "pipelines": [
            {
                "name": "feature-usage-to-slack",
                "source": {"match": ["feature.used"]},
                "steps": steps or [],
                "destinations": [{"slack": settings, "retry": retry}],
            }
        ]
    }


async def test_feature_usage_recipe_posts_the_default_titled_block(
    server: RunningServer, slack: FakeSlack
) -> None:
    await server.set_secret("slack-main", slack.issue_token())
    for user, plan in (("u_free", "free"), ("u_pro", "pro")):
        await server.request(
            "POST", "/v1/group", json={"user_id": user, "account_id": f"acc_{user}", "traits": {"plan": plan}}
        )
    await server.apply(
        {
            "pipelines": [
                {
                    "name": "feature-usage-to-slack",
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
                    # The recipe card's destination, as written there.
                    "destinations": [
                        {
                            "slack": {
                                "channel": "#alerts",
                                "connection": "ref:slack-main",
                                "when": 'plan = "free"',
                            }
                        }
                    ],
                }
            ]
        }
    )
    _, free = await server.ingest("feature.used", {"user_id": "u_free", "feature": "csv.export", "count": 1})
    _, pro = await server.ingest("feature.used", {"user_id": "u_pro", "feature": "csv.export", "count": 1})
    d = await final_delivery(server, free["id"])
    assert d["status"] == "delivered"
    (posted,) = slack.messages
    assert posted.channel == "C0ALERTS01"
    assert posted.headers["Authorization"].startswith("Bearer xoxb-")
    header, section, context = posted.body["blocks"]
    assert header == {"type": "header", "text": {"type": "plain_text", "text": "feature.used", "emoji": True}}
    assert [f["text"] for f in section["fields"]] == [
        "*user_id*\nu_free",
        "*feature*\ncsv.export",
        "*count*\n1",
        "*account*\nacc_u_free",
        "*plan*\nfree",
    ]
    assert context["elements"][0]["text"] == f"ingestlayer · {free['id']}"
    assert posted.body["text"].startswith("feature.used: user_id: u_free")
    (attempt,) = d["attempts"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert '"ok":true' in attempt["response_excerpt"]
    # The pro user's event matched no destination.
    _, pro_event = await server.request("GET", f"/v1/events/{pro['id']}")
    assert pro_event["deliveries"] == []


async def test_oauth_connects_a_workspace_then_delivers(server: RunningServer, slack_app: FakeSlack) -> None:
    session = server.session
    async with session.get(
        server.url + "/v1/connections/slack/authorize?name=slack-main",
        headers=server.auth(),
        allow_redirects=False,
    ) as resp:
        assert resp.status == 302, await resp.text()
        to_slack = resp.headers["Location"]
    parts = urlsplit(to_slack)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == slack_app.url + "/oauth/v2/authorize"
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert query["client_id"] == slack_app.client_id
    assert query["scope"] == "chat:write,chat:write.public"
    assert query["redirect_uri"] == server.url + "/oauth/slack/callback"
    assert server.project_id not in query["state"]  # sealed, not readable

    # The browser follows Slack's consent page back to our callback, with no API key.
    async with aiohttp.ClientSession() as browser, browser.get(to_slack) as resp:
        page = await resp.text()
        assert resp.status == 200, page
        assert str(resp.url).startswith(server.url + "/oauth/slack/callback?code=")
        callback_url = str(resp.url)
    assert "Slack connected: Acme Corp" in page
    assert resp.headers["Cache-Control"] == "no-store"
    # Like the dashboard's pages: no script runs, no other site frames it.
    assert "script-src" not in resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["X-Content-Type-Options"] == "nosniff"
    (token,) = slack_app.tokens
    assert token not in page

    _, secrets = await server.request("GET", "/v1/secrets")
    assert [s["name"] for s in secrets["data"]] == ["slack-main"]
    # Slack's code and our state are single-use: a replayed callback changes nothing.
    async with aiohttp.ClientSession() as browser, browser.get(callback_url) as resp:
        assert resp.status == 400
        assert "used already" in await resp.text()

    await server.apply(slack_pipeline(channel="#alerts", connection="ref:slack-main"))
    _, ev = await server.ingest("feature.used", {"feature": "api", "plan": "free"})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "delivered"
    assert slack_app.messages[0].headers["Authorization"] == f"Bearer {token}"
    # The token is stored encrypted and never shown.
    for path in (
        "/v1/secrets",
        "/v1/destinations",
        "/v1/pipelines",
        f"/v1/events/{ev['id']}",
        f"/v1/deliveries/{d['id']}",
        "/v1/deliveries",
    ):
        async with session.get(server.url + path, headers=server.auth()) as resp:
            assert resp.status == 200, path
            assert token not in await resp.text(), path


async def test_oauth_reconnect_replaces_the_token(server: RunningServer, slack_app: FakeSlack) -> None:
    status, body = await server.request(
        "GET", "/v1/connections/slack/authorize?name=slack-main", headers={"Accept": "application/json"}
    )
    assert status == 200 and body["name"] == "slack-main" and body["expires_at"]
    async with aiohttp.ClientSession() as browser:
        async with browser.get(body["authorize_url"], headers={"Accept": "application/json"}) as resp:
            first = await resp.json()
        assert first["connected"] is True and first["replaced"] is False
        assert first["team"] == {"id": "T0ACME", "name": "Acme Corp"}
        _, again = await server.request(
            "GET", "/v1/connections/slack/authorize?name=slack-main", headers={"Accept": "application/json"}
        )
        async with browser.get(again["authorize_url"], headers={"Accept": "application/json"}) as resp:
            second = await resp.json()
        assert second["replaced"] is True


async def test_one_callback_wins_when_two_api_processes_get_the_same_state(
    server: RunningServer, slack_app: FakeSlack
) -> None:
    """A browser that sends the callback twice, to two API processes behind one address: the
    workspace is connected once, and the other request is told the link was used, before it
    spends Slack's code."""
    other = await start_server(server.runtime.settings.database_url, project="acme-other")
    try:
        _, body = await server.request(
            "GET", "/v1/connections/slack/authorize?name=slack-main", headers={"Accept": "application/json"}
        )
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(body["authorize_url"], allow_redirects=False) as consent,
        ):
            assert consent.status == 302
            back = urlsplit(consent.headers["Location"])
        path = f"{back.path}?{back.query}"

        async def callback(api: RunningServer) -> tuple[int, dict[str, Any]]:
            async with (
                aiohttp.ClientSession() as browser,
                browser.get(api.url + path, headers={"Accept": "application/json"}) as resp,
            ):
                return resp.status, await resp.json()

        answers = sorted(await asyncio.gather(callback(server), callback(other)), key=lambda a: a[0])
        assert [status for status, _ in answers] == [200, 400]
        assert answers[0][1]["connected"] is True
        assert answers[1][1]["error"]["code"] == "used_state"
        assert len(slack_app.tokens) == 1  # Slack was asked for one token, not two
    finally:
        await other.stop()


async def test_cache_swap_lets_one_of_many_stores_win(db_url: str) -> None:
    stores = [Store.from_url(db_url), Store.from_url(db_url)]
    try:
        project_id, _, _ = await stores[0].create_project("acme")
        await stores[0].cache_put(project_id, "state:1", "pending", ttl=60)
        won = await asyncio.gather(
            *(stores[i % 2].cache_swap(project_id, "state:1", "pending", "used", ttl=60) for i in range(8))
        )
        assert sorted(won) == [False] * 7 + [True]
        assert await stores[1].cache_get(project_id, "state:1") == "used"
        # Nothing to swap: a key never set, another project's key, an expired entry.
        assert not await stores[0].cache_swap(project_id, "state:2", "pending", "used", ttl=60)
        other_id, _, _ = await stores[0].create_project("other")
        await stores[0].cache_put(other_id, "state:3", "pending", ttl=60)
        assert not await stores[0].cache_swap(project_id, "state:3", "pending", "used", ttl=60)
        await stores[0].cache_put(project_id, "state:4", "pending", ttl=0.05)
        await asyncio.sleep(0.1)
        assert not await stores[0].cache_swap(project_id, "state:4", "pending", "used", ttl=60)
    finally:
        for store in stores:
            await store.close()


async def test_oauth_failures_are_clear_400s(
    server: RunningServer, slack_app: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The admin key is required to start a connection.
    status, body = await server.request(
        "GET", "/v1/connections/slack/authorize?name=x", key=server.ingest_key
    )
    assert status == 403
    status, body = await server.request("GET", "/v1/connections/slack/authorize?name=bad name")
    assert status == 422 and body["error"]["field"] == "name"

    async def callback(query: str) -> tuple[int, str]:
        async with (
            aiohttp.ClientSession() as browser,
            browser.get(server.url + "/oauth/slack/callback" + query) as resp,
        ):
            return resp.status, await resp.text()

    status, page = await callback("?code=abc")
    assert status == 400 and "no state" in page
    status, page = await callback("?code=abc&state=forged")
    assert status == 400 and "not valid" in page

    async def start() -> str:
        _, b = await server.request(
            "GET", "/v1/connections/slack/authorize?name=slack-main", headers={"Accept": "application/json"}
        )
        url: str = b["authorize_url"]
        return url

    # The user cancels on Slack's page.
    slack_app.deny = True
    async with aiohttp.ClientSession() as browser, browser.get(await start()) as resp:
        assert resp.status == 400
        assert "access_denied" in await resp.text()
    slack_app.deny = False

    # Slack refuses the exchange (a wrong client secret): nothing stored.
    monkeypatch.setenv("INGESTLAYER_SLACK_CLIENT_SECRET", "wrong")
    async with aiohttp.ClientSession() as browser, browser.get(await start()) as resp:
        assert resp.status == 400
        assert "bad_client_secret" in await resp.text()
    status, secrets = await server.request("GET", "/v1/secrets")
    assert secrets["data"] == []

    # JSON for API clients.
    state = parse_qs(urlsplit(await start()).query)["state"][0]
    async with (
        aiohttp.ClientSession() as browser,
        browser.get(
            server.url + "/oauth/slack/callback",
            params={"code": "made-up", "state": state},
            headers={"Accept": "application/json"},
        ) as resp,
    ):
        assert resp.status == 400
        assert (await resp.json())["error"]["code"] == "slack_refused"

    # Not configured: a 400 naming what to set, not a 500.
    monkeypatch.delenv("INGESTLAYER_SLACK_CLIENT_ID")
    status, body = await server.request("GET", "/v1/connections/slack/authorize?name=slack-main")
    assert status == 400
    assert "INGESTLAYER_SLACK_CLIENT_ID" in body["error"]["message"]


async def test_a_connection_cannot_take_the_name_of_an_endpoint_secret(
    server: RunningServer, slack_app: FakeSlack, receiver: Receiver
) -> None:
    """The bot token is stored under the name the admin chose: one of an endpoint's own secrets
    (``endpoint-<id>``, its signing secret) would have been replaced by it, as PUT
    /v1/secrets/{name} refuses to do. Refused when the connection starts, and at the callback
    (a state sealed before that check) before Slack's code is spent."""
    ep = await add_endpoint(server, receiver, events=["invoice.created"])
    managed = f"endpoint-{ep['id']}"
    for name in (managed, f"{managed}.2"):
        status, body = await server.request(
            "GET", f"/v1/connections/slack/authorize?name={name}", headers={"Accept": "application/json"}
        )
        assert status == 409 and body["error"]["field"] == "name", body
        assert ep["id"] in body["error"]["message"]
        # As PUT /v1/secrets/{name} answers for the same name.
        status, put = await server.request("PUT", f"/v1/secrets/{name}", json={"value": "x"})
        assert status == 409, put

    # A state for that name, sealed as the start step did before it checked: Slack consents and
    # sends the browser back with a real code, and the callback refuses it without exchanging it.
    _, started = await server.request(
        "GET", "/v1/connections/slack/authorize?name=slack-main", headers={"Accept": "application/json"}
    )
    rt = server.runtime
    sealed, state = seal_state(rt.box, server.project_id, managed, server.url + "/oauth/slack/callback")
    await rt.store.cache_put(
        server.project_id, STATE_CACHE_PREFIX + state.nonce, "pending", STATE_TTL_SECONDS
    )
    parts = urlsplit(started["authorize_url"])
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | {"state": sealed}
    forged = f"{parts.scheme}://{parts.netloc}{parts.path}?{urlencode(query)}"
    async with aiohttp.ClientSession() as browser:
        async with browser.get(forged) as resp:
            page = await resp.text()
            assert resp.status == 409 and ep["id"] in page and "Nothing was stored" in page, page
        assert not slack_app.tokens  # the code was never exchanged
        async with browser.get(forged, headers={"Accept": "application/json"}) as resp:
            assert resp.status == 400 and (await resp.json())["error"]["code"] == "used_state"

    # The endpoint's secret is the one it was created with: it still signs.
    _, listed = await server.request("GET", "/v1/secrets")
    assert [s["name"] for s in listed["data"]] == [managed]
    status, ev = await server.ingest("invoice.created", {"n": 1})
    assert status == 202, ev

    async def arrived() -> bool:
        return any(r.headers.get("X-Ingestlayer-Event") == "invoice.created" for r in receiver.requests)

    await wait_for(arrived)
    (got,) = receiver.requests
    assert got.verify(ep["secret"])["id"] == ev["id"]


async def test_ratelimited_is_retried_after_retry_after(server: RunningServer, slack: FakeSlack) -> None:
    await server.set_secret("slack-main", slack.issue_token())
    slack.rate_limit(1, retry_after=1)
    await server.apply(slack_pipeline(channel="#alerts", connection="ref:slack-main"))
    _, ev = await server.ingest("feature.used", {"feature": "api"})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [429, 200]
    assert "rate limit" in d["attempts"][0]["error"]
    (first_at, first), (second_at, second) = slack.api_calls
    assert (first, second) == ("ratelimited", "ok")
    # The schedule says 0.05 s; Slack asked for 1 s, and got it.
    assert second_at - first_at >= 0.95


async def test_channel_not_found_is_dead_at_once_with_the_reason(
    server: RunningServer, slack: FakeSlack
) -> None:
    await server.set_secret("slack-main", slack.issue_token())
    await server.apply(slack_pipeline(channel="#no-such-channel", connection="ref:slack-main"))
    _, ev = await server.ingest("feature.used", {"feature": "api"})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "dead"
    (attempt,) = d["attempts"]  # not retried: the schedule had 4 attempts
    assert attempt["error"].startswith("channel_not_found:")
    assert '"error":"channel_not_found"' in attempt["response_excerpt"]
    assert d["last_error"] == attempt["error"]


async def test_templated_message_escapes_event_values(server: RunningServer, slack: FakeSlack) -> None:
    await server.set_secret("slack-main", slack.issue_token())
    template = (
        "*$event.feature* used by <https://app.acme.com/users/$event.user_id|$event.user_id>: $event.note"
    )
    await server.apply(
        slack_pipeline(
            channel="C0ALERTS01", connection="ref:slack-main", template=template, username="ingest"
        )
    )
    _, ev = await server.ingest("feature.used", {"feature": "api", "user_id": "u1", "note": "a<b> & c"})
    assert (await final_delivery(server, ev["id"]))["status"] == "delivered"
    body = slack.messages[0].body
    expected = "*api* used by <https://app.acme.com/users/u1|u1>: a&lt;b&gt; &amp; c"
    assert body["blocks"][0] == {"type": "section", "text": {"type": "mrkdwn", "text": expected}}
    assert body["text"] == expected
    assert body["username"] == "ingest"


async def test_incoming_webhook(server: RunningServer, slack: FakeSlack) -> None:
    hook = slack.add_webhook("C0ALERTS01")
    archived = slack.add_webhook("C0OLDSTUFF")
    await server.set_secret("alerts-hook", hook)
    await server.set_secret("old-hook", archived)
    await server.apply(slack_pipeline(webhook_url="ref:alerts-hook"))
    _, ev = await server.ingest("feature.used", {"feature": "api", "plan": "pro"})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "delivered"
    assert d["attempts"][0]["response_excerpt"] == "ok"
    assert slack.messages[0].channel == "C0ALERTS01"
    assert slack.messages[0].body["blocks"][0]["text"]["text"] == "feature.used"

    await server.apply(slack_pipeline(webhook_url="ref:old-hook"))
    _, ev = await server.ingest("feature.used", {"feature": "api"})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "dead"
    (attempt,) = d["attempts"]
    assert attempt["error"] == "HTTP 410: channel_is_archived"
    secret_part = urlsplit(archived).path.rsplit("/", 1)[1]
    for path in (f"/v1/deliveries/{d['id']}", "/v1/destinations"):
        async with server.session.get(server.url + path, headers=server.auth()) as resp:
            assert secret_part not in await resp.text()
