"""Big, odd and hostile events through the chat, Notion and PostgreSQL destinations.

Each test sends an event the real service would refuse as it stands (a blank Discord field, a
Telegram message with no visible text, an over-long Notion email, a NUL character for
PostgreSQL…) and checks that it is delivered in the form the service accepts, through the real
server and the local fakes in tests/support, which refuse what the real services refuse.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from tests.integration.test_delivery import final_delivery
from tests.integration.test_notion import SCHEMA, notion_doc
from tests.integration.test_postgres_destination import pg_doc, table_name, target, target_db
from tests.support.fake_discord import FakeDiscord
from tests.support.fake_notion import FakeNotion
from tests.support.fake_telegram import FakeTelegram
from tests.support.server import RunningServer

__all__ = ["target", "target_db"]  # fixtures, used by name

FAST = {"schedule": [0, 0.05, 0.05, 0.05], "jitter": 0}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    # What is under test is the destinations; one store backend is enough here.
    return sqlite_url


def pipeline(kind: str, **settings: Any) -> dict[str, Any]:
    return {
        "pipelines": [
            {
                "name": f"alerts-to-{kind}",
                "source": {"match": ["feature.used"]},
                "destinations": [{kind: settings, "retry": FAST}],
            }
        ]
    }


async def deliver(
    server: RunningServer, payload: dict[str, Any], type_: str = "feature.used"
) -> dict[str, Any]:
    status, ev = await server.ingest(type_, payload)
    assert status == 202, ev
    return await final_delivery(server, ev["id"])


# ============================================================================================ discord


async def test_discord_blank_field_value_is_sent_as_a_dash(
    server: RunningServer, discord: FakeDiscord
) -> None:
    # Discord answers 400 "This field is required" for a field value of only whitespace.
    await server.set_secret("discord-alerts", discord.add_webhook())
    await server.apply(pipeline("discord", webhook_url="ref:discord-alerts"))
    d = await deliver(server, {"feature": "export", "note": "   \n\t "})
    assert d["status"] == "delivered", d["attempts"]
    fields = discord.executed[0].body["embeds"][0]["fields"]
    assert fields[1] == {"name": "note", "value": "—", "inline": True}


# =========================================================================================== telegram


async def test_telegram_template_with_no_visible_text_falls_back_to_the_event_type(
    server: RunningServer, telegram: FakeTelegram
) -> None:
    # `<b></b>` is not empty markup, but Telegram answers 400 "message text is empty" for it.
    await server.set_secret("telegram-bot", telegram.token)
    await server.apply(
        pipeline(
            "telegram",
            bot_token="ref:telegram-bot",
            chat_id=4242,
            api_base=telegram.url,
            template="<b>$event.feature</b> <i>$event.user</i>",
        )
    )
    d = await deliver(server, {"feature": "", "user": " "})
    assert d["status"] == "delivered", d["attempts"]
    assert telegram.messages[0].text == "feature.used"


async def test_telegram_limit_counts_the_text_telegram_shows_not_the_escapes(
    server: RunningServer, telegram: FakeTelegram
) -> None:
    # 4096 characters after entity parsing: "&lt;" is one character of the message, not four.
    await server.set_secret("telegram-bot", telegram.token)
    await server.apply(
        pipeline(
            "telegram", bot_token="ref:telegram-bot", chat_id=4242, api_base=telegram.url, template="$event.x"
        )
    )
    d = await deliver(server, {"x": "<&>" * 1200 + "tail"})
    assert d["status"] == "delivered", d["attempts"]
    (sent,) = telegram.messages
    assert sent.text == "<&>" * 1200 + "tail"  # 3604 characters: it fits, so nothing is cut

    telegram.messages.clear()
    d = await deliver(server, {"x": "<" * 5000})
    assert d["status"] == "delivered", d["attempts"]
    (sent,) = telegram.messages
    assert len(sent.text) == 4096 and sent.text.endswith("<…")


# ============================================================================================= notion


async def test_notion_values_over_notions_limits_become_empty_or_fit(
    server: RunningServer, notion: FakeNotion
) -> None:
    dbid = notion.add_database(SCHEMA)
    await server.set_secret("notion", notion.token)
    await server.apply(notion_doc(notion, dbid))
    # An email past Notion's 200 characters (a 400 validation_error), and a number past 64 bits.
    long_email = "x" * 250 + "@acme.com"
    d = await deliver(
        server, {"email": long_email, "seats": "123456789012345678901234567890"}, "user.signed_up"
    )
    assert d["status"] == "delivered", d["attempts"]
    props = notion.pages[0]["properties"]
    assert props["Email"] == {"email": None}
    assert props["Seats"] == {"number": 1.2345678901234568e29}
    assert props["Name"]["title"][0]["text"]["content"] == f"{long_email} signed up"


async def test_notion_dedupe_reads_a_large_query_answer_whole(
    server: RunningServer, notion: FakeNotion
) -> None:
    # The answer to the dedupe query carries the page's properties: with long texts it arrives
    # in several network reads, and must be read whole, or the page is not seen and made twice.
    dbid = notion.add_database({**SCHEMA, "Delivery": "rich_text"})
    await server.set_secret("notion", notion.token)
    await server.apply(notion_doc(notion, dbid, dedupe_property="Delivery"))
    notion.slow_network = True
    notion.lose_answer_next(504)
    d = await deliver(server, {"email": "a@b.co", "notes": "é" * 48_000}, "user.signed_up")
    assert d["status"] == "delivered", d["attempts"]
    assert [a["status_code"] for a in d["attempts"]] == [504, 200]
    assert '"existing":true' in d["attempts"][1]["response_excerpt"]
    assert len(notion.pages) == 1


# =========================================================================================== postgres


async def test_postgres_nul_characters_are_dropped_not_dead(
    server: RunningServer, target: asyncpg.Connection, target_db: str
) -> None:
    # PostgreSQL's text and jsonb cannot hold U+0000 ("unsupported Unicode escape sequence").
    table = table_name()
    await server.set_secret("warehouse", target_db)
    await server.apply(
        pg_doc(table, create_table=True, columns={"account": "$event.account"}, jsonb_column="payload")
    )
    d = await deliver(server, {"account": "ac\u0000me", "nested": {"k\u0000ey": ["v\u0000", 1]}})
    assert d["status"] == "delivered", d["attempts"]
    row = await target.fetchrow(f'SELECT account, payload::text AS payload FROM "{table}"')
    assert row is not None
    assert row["account"] == "acme"
    assert row["payload"] == '{"nested": {"key": ["v", 1]}, "account": "acme"}'
