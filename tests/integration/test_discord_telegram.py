"""Discord and Telegram through the real server, against local fakes that check what they check."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ingestlayer.timefmt import parse_iso
from tests.support.fake_discord import FakeDiscord
from tests.support.fake_telegram import FakeTelegram
from tests.support.server import RunningServer, final_delivery

FAST = {"schedule": [0, 0.05, 0.05, 0.05], "jitter": 0}
NASTY = '<script>alert("pwned")</script> & "quotes" > 1'


def pipeline(kind: str, **settings: Any) -> dict[str, Any]:
    retry = settings.pop("retry", FAST)
    return {
        "pipelines": [
            {
                "name": f"alerts-to-{kind}",
                "source": {"match": ["feature.used"]},
                "destinations": [{kind: settings, "retry": retry}],
            }
        ]
    }


async def raw_get(server: RunningServer, path: str) -> str:
    async with server.session.get(server.url + path, headers=server.auth()) as resp:
        assert resp.status == 200, path
        return await resp.text()


# ============================================================================================ discord


async def test_discord_embed_is_delivered_and_429_retry_after_is_honoured(
    server: RunningServer, discord: FakeDiscord
) -> None:
    await server.set_secret("discord-alerts", discord.add_webhook())
    discord.rate_limit(1, retry_after=0.6)
    await server.apply(pipeline("discord", webhook_url="ref:discord-alerts", username="ingestlayer"))
    _, ev = await server.ingest("feature.used", {"feature": "csv.export", "user_id": "u_1", "note": NASTY})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "delivered"
    assert [a["status_code"] for a in d["attempts"]] == [429, 200]
    assert "rate limit" in d["attempts"][0]["error"]
    first, second = discord.attempts
    # The schedule says 0.05 s; Discord's body said 0.6 s (its Retry-After header rounds up to 1).
    assert second - first >= 0.55
    # The wait chosen, from the attempt log (next_retry_at is set when the attempt ends), not from
    # arrival times, which a loaded machine only makes later.
    a0 = d["attempts"][0]
    chosen = parse_iso(a0["next_retry_at"]) - parse_iso(a0["started_at"]) - a0["duration_ms"] / 1000
    assert 0.55 <= chosen < 0.95, a0
    (sent,) = discord.executed
    # The URL as Discord shows it names no API version: the request names v10, whose 429 says
    # seconds (the default version, v6, said 600 ms, which was waited as 600 s).
    assert sent.version == 10
    assert sent.query == {"wait": "true"}
    assert sent.body["username"] == "ingestlayer"
    assert sent.body["allowed_mentions"] == {"parse": []}
    (embed,) = sent.body["embeds"]
    assert embed["title"] == "feature.used"
    assert embed["fields"][:2] == [
        {"name": "feature", "value": "csv.export", "inline": True},
        {"name": "user_id", "value": r"u\_1", "inline": True},
    ]
    assert embed["fields"][2]["value"] == r'\<script\>alert("pwned")\</script\> & "quotes" \> 1'
    assert embed["footer"]["text"] == f"ingestlayer · {ev['id']}"
    assert embed["timestamp"].startswith("20")
    assert '"webhook_id"' in d["attempts"][1]["response_excerpt"]


async def test_discord_unknown_webhook_is_dead_and_the_url_stays_secret(
    server: RunningServer, discord: FakeDiscord
) -> None:
    url = discord.add_webhook()
    hook_id, token = url.rsplit("/", 2)[1:]
    del discord.hooks[hook_id]
    await server.set_secret("gone", url)
    await server.apply(pipeline("discord", webhook_url="ref:gone", template="**$event.feature** used"))
    _, ev = await server.ingest("feature.used", {"feature": "api"})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "dead"
    (attempt,) = d["attempts"]
    assert attempt["status_code"] == 404
    assert attempt["error"] == "HTTP 404: Unknown Webhook (code 10015)"
    for path in (f"/v1/deliveries/{d['id']}", "/v1/destinations", f"/v1/events/{ev['id']}"):
        assert token not in await raw_get(server, path)


async def test_discord_huge_payload_fits_the_embed_limits(
    server: RunningServer, discord: FakeDiscord
) -> None:
    await server.set_secret("discord-alerts", discord.add_webhook())
    await server.apply(pipeline("discord", webhook_url="ref:discord-alerts"))
    payload = {f"field_{i:02d}": "*_" * 700 for i in range(30)}
    _, ev = await server.ingest("feature.used", payload)
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "delivered", d["attempts"]  # the fake answers 400 past any limit
    fields = discord.executed[0].body["embeds"][0]["fields"]
    assert 1 <= len(fields) <= 25


# =========================================================================================== telegram


async def test_telegram_escapes_event_values_which_arrive_intact(
    server: RunningServer, telegram: FakeTelegram
) -> None:
    await server.set_secret("telegram-bot", telegram.token)
    await server.apply(
        pipeline("telegram", bot_token="ref:telegram-bot", chat_id="@acme_alerts", api_base=telegram.url)
    )
    _, ev = await server.ingest("feature.used", {"feature": "csv.export", "note": NASTY})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "delivered", d["attempts"]
    (sent,) = telegram.messages
    # What a Telegram user sees: exactly the payload's text, nothing interpreted as markup.
    assert sent.text == f"feature.used\nfeature: csv.export\nnote: {NASTY}"
    assert sent.body["parse_mode"] == "HTML"
    assert sent.body["disable_web_page_preview"] is True
    assert sent.html.startswith("<b>feature.used</b>\n")
    assert "&lt;script&gt;" in sent.html and "&quot;quotes&quot;" in sent.html


async def test_telegram_template(server: RunningServer, telegram: FakeTelegram) -> None:
    await server.set_secret("telegram-bot", telegram.token)
    template = '<b>$event.feature</b> by <a href="https://app.acme.com/u/$event.user_id">$event.user_id</a>'
    await server.apply(
        pipeline(
            "telegram",
            bot_token="ref:telegram-bot",
            chat_id=-1001234567890,
            api_base=telegram.url,
            template=template,
        )
    )
    _, ev = await server.ingest("feature.used", {"feature": "a&b", "user_id": '"><script>'})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "delivered", d["attempts"]
    assert telegram.messages[0].text == 'a&b by "><script>'


async def test_telegram_token_never_appears_in_attempts_errors_or_logs(
    server: RunningServer, telegram: FakeTelegram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = telegram.token
    await server.set_secret("telegram-bot", token)
    telegram.rate_limit(1, retry_after=1)
    await server.apply(pipeline("telegram", bot_token="ref:telegram-bot", chat_id=999, api_base=telegram.url))
    _, ev = await server.ingest("feature.used", {"feature": "api"})
    d = await final_delivery(server, ev["id"])
    # 429 (retried after Telegram's retry_after), then "chat not found" (dead at once).
    assert d["status"] == "dead"
    assert [a["status_code"] for a in d["attempts"]] == [429, 400]
    assert d["attempts"][0]["error"] == "HTTP 429: Too Many Requests: retry after 1"
    assert d["attempts"][1]["error"] == "HTTP 400: Bad Request: chat not found"
    first, second = telegram.attempts
    assert second - first >= 0.95
    assert telegram.paths == [f"/bot{token}/sendMessage"] * 2  # the token was used ...

    # ... and a transport failure, whose error could quote the URL.
    await server.apply(
        pipeline(
            "telegram",
            bot_token="ref:telegram-bot",
            chat_id=999,
            api_base="http://127.0.0.1:9",
            retry={"schedule": [0]},
        )
    )
    _, ev2 = await server.ingest("feature.used", {"feature": "api"})
    d2 = await final_delivery(server, ev2["id"])
    assert d2["status"] == "dead" and d2["attempts"][0]["error"]

    for path in (
        f"/v1/deliveries/{d['id']}",
        f"/v1/deliveries/{d2['id']}",
        "/v1/deliveries",
        "/v1/destinations",
    ):
        assert token not in await raw_get(server, path), path
    assert token.split(":")[1] not in caplog.text
    assert "attempt delivery=" in caplog.text  # the dispatcher's attempt lines were captured


async def test_telegram_bad_token_is_dead_without_echoing_it(
    server: RunningServer, telegram: FakeTelegram, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "123456:" + "A" * 35
    monkeypatch.setenv("TG_TOKEN", wrong)
    await server.apply(pipeline("telegram", bot_token="env:TG_TOKEN", chat_id=4242, api_base=telegram.url))
    _, ev = await server.ingest("feature.used", {"feature": "api"})
    d = await final_delivery(server, ev["id"])
    assert d["status"] == "dead"
    (attempt,) = d["attempts"]
    assert attempt["status_code"] == 401 and attempt["error"] == "HTTP 401: Unauthorized"
    assert wrong not in await raw_get(server, f"/v1/deliveries/{d['id']}")
