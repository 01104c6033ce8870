"""Slack, Discord and Telegram: messages, escaping, truncation, configs and answer classification.

The messages are checked against the same validators the local fakes use (Slack's Block Kit
limits, Discord's embed limits, Telegram's HTML parser), so "fits" means "the service accepts it".
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from yarl import URL

from ingestlayer.delivery.egress import EgressPolicy
from ingestlayer.destinations import discord as discord_mod
from ingestlayer.destinations import telegram as telegram_mod
from ingestlayer.destinations.base import SendContext, SendRequest
from ingestlayer.destinations.chat import Redactor, Reply, escape_fitting, key_fields, markup_template
from ingestlayer.destinations.discord import Discord, DiscordConfig, build_embed, embed_size, pinned_version
from ingestlayer.destinations.registry import destination_class
from ingestlayer.destinations.slack import Slack, SlackConfig
from ingestlayer.destinations.slack.blocks import build_message, cut_mrkdwn, slack_spots
from ingestlayer.destinations.slack.destination import classify_api_reply, classify_webhook_reply
from ingestlayer.destinations.slack.oauth import SlackOAuthError, open_state, seal_state
from ingestlayer.destinations.telegram import Telegram, TelegramConfig, build_text, check_html, fit_html
from ingestlayer.pipeline.config import ConfigError, parse_config
from ingestlayer.secretbox import SecretBox
from tests.support.fake_discord import validate_message
from tests.support.fake_slack import validate_blocks
from tests.support.fake_telegram import EntityError, parse_html
from tests.support.processes import free_port

EVENT: dict[str, Any] = {
    "id": "evt_01JTEST",
    "type": "user.signed_up",
    "occurred_at": "2026-03-01T12:30:00.000Z",
    "payload": {"email": "ada@acme.com", "plan": "pro", "source": "marketing-site"},
}
DOCS = Path(__file__).resolve().parents[2] / "docs" / "destinations"
NASTY = '<script>alert("x")</script> & co > *bold* _it_ `code` @everyone'


def event(payload: dict[str, Any], type_: str = "feature.used") -> dict[str, Any]:
    return {**EVENT, "type": type_, "payload": payload}


def reply(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    raw = body if isinstance(body, bytes) else (b"" if body is None else __import__("orjson").dumps(body))
    return Reply(status, headers or {}, raw)


def pipeline_doc(destinations: list[Any]) -> dict[str, Any]:
    return {"pipelines": [{"name": "p", "source": {"match": ["x.y"]}, "destinations": destinations}]}


def docstring_destinations(doc: str | None) -> list[Any]:
    """The ``destinations:`` of the YAML block after ``Example::`` in a docstring."""
    lines = (doc or "").split("Example::", 1)[1].splitlines()[1:]
    block: list[str] = []
    for line in lines:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    example = yaml.safe_load(textwrap.dedent("\n".join(block)))
    destinations: list[Any] = example["destinations"]
    return destinations


# ============================================================================================ shared


def test_key_fields_are_the_first_scalars_in_payload_order() -> None:
    payload = {"a": 1, "nested": {"x": 1}, "b": "two", "none": None, "list": [1], "c": True, "d": 1.5}
    assert key_fields(payload, None, 10) == [("a", "1"), ("b", "two"), ("c", "true"), ("d", "1.5")]
    assert key_fields(payload, None, 2) == [("a", "1"), ("b", "two")]
    assert key_fields(payload, ["d", "nested.x", "missing"], 10) == [("d", "1.5"), ("nested.x", "1")]


@pytest.mark.parametrize("limit", [1, 2, 5, 6, 11, 50])
def test_escape_fitting_never_cuts_an_entity(limit: int) -> None:
    out = escape_fitting(
        "a&b<c>" * 10, limit, lambda ch: {"&": "&amp;", "<": "&lt;", ">": "&gt;"}.get(ch, ch)
    )
    assert len(out) <= limit
    body = out.removesuffix("…")
    # Whatever was kept decodes cleanly: every & starts a whole entity.
    assert all(body[i:].startswith(("&amp;", "&lt;", "&gt;")) for i, ch in enumerate(body) if ch == "&")


def test_redactor_removes_urls_paths_and_tokens() -> None:
    r = Redactor()
    r.add_url("https://discord.com/api/webhooks/1234567890123456789/SeCrEtToKeN_abcdefghijklmnop")
    r.add("123456:ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghi")
    text = r(
        "POST https://discord.com/api/webhooks/1234567890123456789/SeCrEtToKeN_abcdefghijklmnop failed; "
        "path /api/webhooks/1234567890123456789/SeCrEtToKeN_abcdefghijklmnop; "
        "bot123456:ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghi"
    )
    assert "SeCrEt" not in text and "ABCDEFGHIJ" not in text
    assert "bot<redacted>" in text


# ============================================================================================= slack


def test_slack_default_message_is_the_recipe_card() -> None:
    msg = build_message(EVENT)
    assert msg["blocks"] == [
        {"type": "header", "text": {"type": "plain_text", "text": "user.signed_up", "emoji": True}},
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": "*email*\nada@acme.com"},
                {"type": "mrkdwn", "text": "*plan*\npro"},
                {"type": "mrkdwn", "text": "*source*\nmarketing-site"},
            ],
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": "ingestlayer · evt_01JTEST"}]},
    ]
    assert msg["text"] == "user.signed_up: email: ada@acme.com, plan: pro, source: marketing-site"
    assert validate_blocks(msg["blocks"]) == []


def test_slack_escapes_values_but_keeps_template_markup() -> None:
    msg = build_message(event({"who": "<@U123> & <!channel>"}))
    assert msg["blocks"][1]["fields"][0]["text"] == "*who*\n&lt;@U123&gt; &amp; &lt;!channel&gt;"
    assert "<" not in msg["text"] and "&amp;" in msg["text"]
    templated = build_message(
        event({"email": "a<b>@x.com", "uid": "u&1"}),
        template="*New:* $event.email <https://app.acme.com/u/$event.uid|open> ($event.type)",
    )
    section = templated["blocks"][0]["text"]["text"]
    # The value in the link's URL is one path segment, percent-encoded (`&` as %26).
    assert section == "*New:* a&lt;b&gt;@x.com <https://app.acme.com/u/u%261|open> (feature.used)"
    assert templated["text"] == section
    assert [b["type"] for b in templated["blocks"]] == ["section", "context"]


def test_slack_empty_template_render_falls_back_to_the_type() -> None:
    msg = build_message(event({}), template="$event.missing")
    assert msg["blocks"][0]["text"]["text"] == "feature.used"


def test_slack_message_fits_slack_limits_whatever_the_payload() -> None:
    payload = {f"k{i}": ("&<>" * 2000) for i in range(30)}
    msg = build_message(event(payload, type_="t." + "x" * 400))
    assert validate_blocks(msg["blocks"]) == []
    header, section, _ = msg["blocks"]
    assert len(header["text"]["text"]) == 150
    assert len(section["fields"]) == 10
    for f in section["fields"]:
        assert len(f["text"]) <= 2000
        assert f["text"].endswith("…") and not f["text"].rstrip("…").endswith(("&", "&a", "&am", "&l", "&g"))
    assert len(msg["text"]) <= 3000
    long = build_message(event({"v": "&" * 5000}), template="$event.v")
    assert validate_blocks(long["blocks"]) == []
    assert len(long["blocks"][0]["text"]["text"]) <= 3000


def test_slack_fields_choose_and_order_the_key_fields() -> None:
    msg = build_message(event({"a": 1, "b": 2, "user": {"email": "x@y"}}), fields=["user.email", "a"])
    texts = [f["text"] for f in msg["blocks"][1]["fields"]]
    assert texts == ["*user.email*\nx@y", "*a*\n1"]
    assert [b["type"] for b in build_message(event({"n": {"x": 1}}))["blocks"]] == ["header", "context"]


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [
        ("short", 10, "short"),
        ("abc &amp; def", 7, "abc …"),  # never half an entity
        ("see <https://x.com/very/long|link> now", 20, "see …"),  # never half a link
        ("<https://x.com|x> and more text here", 25, "<https://x.com|x> and mo…"),
    ],
)
def test_cut_mrkdwn(text: str, limit: int, expected: str) -> None:
    assert cut_mrkdwn(text, limit) == expected


# The template from docs/destinations/slack.md.
SLACK_DOCS_TEMPLATE = (
    "*$event.count exports* by <https://app.acme.com/users/$event.user_id|$event.user_id> ($event.plan)"
)


def slack_section(payload: dict[str, Any], template: str) -> str:
    msg = build_message(event(payload), template=template)
    assert validate_blocks(msg["blocks"]) == []
    text: str = msg["blocks"][0]["text"]["text"]
    assert msg["text"] == text
    return text


def test_slack_value_in_a_link_url_cannot_choose_the_label() -> None:
    text = slack_section(
        {"count": 120, "user_id": "u1|Click here for a refund", "plan": "free"}, SLACK_DOCS_TEMPLATE
    )
    assert text == (
        "*120 exports* by <https://app.acme.com/users/u1%7CClick%20here%20for%20a%20refund"
        "|u1\u2223Click here for a refund> (free)"
    )
    # One link, whose only `|` is the template's: the URL is the user's page, the label the value.
    (link,) = re.findall(r"<([^>]*)>", text)
    assert link.count("|") == 1
    # Where each placeholder sits is found once per template, not per event.
    assert markup_template(SLACK_DOCS_TEMPLATE, slack_spots) is markup_template(
        SLACK_DOCS_TEMPLATE, slack_spots
    )


def test_slack_link_url_values_are_percent_encoded() -> None:
    value = "a/b?c=d&e#f g>h<i)(j\\k`lé"
    # After the template's text: one component, so `/`, `?`, `&` and `#` are encoded too.
    assert slack_section({"v": value}, "<https://x.com/u/$event.v|open>") == (
        "<https://x.com/u/a%2Fb%3Fc%3Dd%26e%23f%20g%3Eh%3Ci%29%28j%5Ck%60l%C3%A9|open>"
    )
    # Starting the URL: a whole URL, whose delimiters are kept (`&` then sent as Slack's `&amp;`).
    url = "https://x.com/a b?q=1&r=|2>"
    assert slack_section({"u": url}, "<$event.u|open> <$event.u>") == (
        "<https://x.com/a%20b?q=1&amp;r=%7C2%3E|open> <https://x.com/a%20b?q=1&amp;r=%7C2%3E>"
    )


def test_slack_code_span_values_cannot_close_the_span() -> None:
    value = "a`b & <c> *d*"
    text = slack_section({"v": value}, "`$event.v` and ```$event.v``` but $event.v")
    assert (
        text
        == "`a\u02cbb &amp; &lt;c&gt; *d*` and ```a\u02cbb &amp; &lt;c&gt; *d*``` but a`b &amp; &lt;c&gt; *d*"
    )
    # A lone backtick opens no span: the value is plain text there.
    assert slack_section({"v": value}, "it's ` $event.v") == "it's ` a`b &amp; &lt;c&gt; *d*"


def test_slack_plain_text_escaping_is_unchanged() -> None:
    assert slack_section({"v": NASTY}, "*$event.v* said: $event.v") == (
        '*&lt;script&gt;alert("x")&lt;/script&gt; &amp; co &gt; *bold* _it_ `code` @everyone* said: '
        '&lt;script&gt;alert("x")&lt;/script&gt; &amp; co &gt; *bold* _it_ `code` @everyone'
    )


SLACK_API_CASES = [
    # (status, body, headers, ok, permanent, retry_after, error contains)
    (200, {"ok": True, "channel": "C1", "ts": "1.2"}, {}, True, False, None, None),
    (200, {"ok": False, "error": "ratelimited"}, {"Retry-After": "7"}, False, False, 7.0, "ratelimited"),
    (429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "3"}, False, False, 3.0, "rate limit"),
    (200, {"ok": False, "error": "channel_not_found"}, {}, False, True, None, "channel_not_found"),
    (200, {"ok": False, "error": "not_in_channel"}, {}, False, True, None, "invite"),
    (200, {"ok": False, "error": "invalid_auth"}, {}, False, True, None, "invalid_auth"),
    (200, {"ok": False, "error": "account_inactive"}, {}, False, True, None, "account_inactive"),
    (200, {"ok": False, "error": "token_revoked"}, {}, False, True, None, "token_revoked"),
    (200, {"ok": False, "error": "missing_scope", "needed": "chat:write"}, {}, False, True, None, "scope"),
    (200, {"ok": False, "error": "is_archived"}, {}, False, True, None, "archived"),
    (200, {"ok": False, "error": "msg_too_long"}, {}, False, True, None, "msg_too_long"),
    (200, {"ok": False, "error": "no_text"}, {}, False, True, None, "no_text"),
    (
        200,
        {"ok": False, "error": "invalid_blocks", "response_metadata": {"messages": ["bad header"]}},
        {},
        False,
        True,
        None,
        "bad header",
    ),
    (200, {"ok": False, "error": "internal_error"}, {}, False, False, None, "internal_error"),
    (200, {"ok": False, "error": "fatal_error"}, {}, False, False, None, "fatal_error"),
    (200, {"ok": False, "error": "service_unavailable"}, {}, False, False, None, "service_unavailable"),
    (200, {"ok": False, "error": "something_new"}, {}, False, False, None, "something_new"),
    (503, b"upstream down", {"Retry-After": "30"}, False, False, 30.0, "HTTP 503"),
    (500, b"oops", {}, False, False, None, "HTTP 500"),
    (404, b"not found", {}, False, True, None, "api_base"),
    (200, b"<html>proxy</html>", {}, False, False, None, "not a Slack Web API answer"),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "ok", "permanent", "retry_after", "error"), SLACK_API_CASES
)
def test_slack_api_answers(
    status: int,
    body: Any,
    headers: dict[str, str],
    ok: bool,
    permanent: bool,
    retry_after: float | None,
    error: str | None,
) -> None:
    out = classify_api_reply(reply(status, body, headers), Redactor())
    assert (out.ok, out.permanent, out.retry_after, out.status_code) == (ok, permanent, retry_after, status)
    if error is None:
        assert out.error is None
    else:
        assert out.error is not None and error in out.error
    assert out.response_excerpt is None or len(out.response_excerpt.encode()) <= 1024


@pytest.mark.parametrize(
    "code",
    [
        "msg_blocks_too_long",
        "invalid_array_arg",
        "invalid_metadata_format",
        "invalid_metadata_schema",
        "metadata_too_large",
        "metadata_must_be_sent_from_app",
        "cannot_reply_to_message",
        "slack_connect_file_link_sharing_blocked",
        "slack_connect_canvas_sharing_blocked",
        "slack_connect_lists_sharing_blocked",
        "attachment_payload_limit_exceeded",
        "too_many_contact_cards",
        "markdown_text_conflict",
        "missing_file_data",
        "restricted_action_thread_locked",
        "messages_tab_disabled",
        "accesslimited",
        "team_not_found",
    ],
)
def test_slack_api_codes_retrying_cannot_fix_are_dead_at_once(code: str) -> None:
    """Documented chat.postMessage errors that the same message meets again every time: they were
    retried for hours as "an error code ingestlayer does not know"."""
    out = classify_api_reply(reply(200, {"ok": False, "error": code}), Redactor())
    assert (out.ok, out.permanent) == (False, True)
    assert out.error is not None and out.error.startswith(f"{code}: ")
    assert "does not know" not in out.error


def test_slack_message_limit_exceeded_is_retried_as_the_workspace_limit() -> None:
    """A free workspace's high-volume message limit lifts when it sends less: retried, and said so."""
    out = classify_api_reply(reply(200, {"ok": False, "error": "message_limit_exceeded"}), Redactor())
    assert (out.ok, out.permanent) == (False, False)
    assert out.error == (
        "message_limit_exceeded: the workspace is sending too many messages "
        "(Slack's free-plan limit; retryable)"
    )


@pytest.mark.parametrize(
    ("status", "text", "headers", "ok", "permanent", "retry_after"),
    [
        (200, "ok", {}, True, False, None),
        (400, "invalid_payload", {}, False, True, None),
        (400, "no_text", {}, False, True, None),
        (403, "action_prohibited", {}, False, True, None),
        (404, "no_service", {}, False, True, None),
        (404, "channel_not_found", {}, False, True, None),
        (410, "channel_is_archived", {}, False, True, None),
        (429, "rate_limited", {"Retry-After": "2"}, False, False, 2.0),
        (500, "rollup_error", {}, False, False, None),
        (503, "", {"Retry-After": "5"}, False, False, 5.0),
    ],
)
def test_slack_incoming_webhook_answers(
    status: int, text: str, headers: dict[str, str], ok: bool, permanent: bool, retry_after: float | None
) -> None:
    out = classify_webhook_reply(reply(status, text.encode(), headers), Redactor())
    assert (out.ok, out.permanent, out.retry_after) == (ok, permanent, retry_after)
    if not ok:
        assert out.error is not None and f"HTTP {status}" in out.error and text in out.error


def test_slack_docstring_example_is_valid() -> None:
    destinations = docstring_destinations(SlackConfig.__doc__)
    cfg = parse_config(pipeline_doc(destinations))
    kinds = [d.kind for d in cfg.destinations]
    assert kinds == ["slack", "slack", "slack"]
    assert cfg.pipelines[0].routes[0].when == 'plan = "free"'
    assert cfg.destinations[0].settings["connection"] == "ref:slack-main"
    # What apply stores validates again to the config the example wrote (the dispatcher
    # rebuilds from it): nothing dropped or changed on the way.
    for spec, written in zip(cfg.destinations, destinations, strict=True):
        settings = {k: v for k, v in written["slack"].items() if k != "when"}  # the route's, not Slack's
        assert SlackConfig.model_validate(spec.settings) == SlackConfig.model_validate(settings)


@pytest.mark.parametrize(
    ("settings", "field", "message"),
    [
        ({"channel": "#a", "connection": "xoxb-123-456-abc"}, "connection", "never the bot token itself"),
        ({"webhook_url": "https://hooks.slack.com/services/T/B/X"}, "webhook_url", "never the webhook URL"),
        ({"channel": "#a"}, "", "needs `connection: ref:NAME`"),
        ({"connection": "ref:s"}, "", "`channel` is required"),
        ({"connection": "ref:s", "webhook_url": "ref:w", "channel": "#a"}, "", "not both"),
        ({"webhook_url": "ref:w", "channel": "#a"}, "", "posts to the channel it was created for"),
        ({"connection": "ref:s", "channel": "my channel"}, "channel", "no spaces"),
        ({"connection": "ref:s", "channel": "#a", "api_base": "slack.com"}, "api_base", "http"),
        ({"connection": "ref:s", "channel": "#a", "fields": ["a"] * 11}, "fields", "at most 10"),
        ({"connection": "ref:s", "channel": "#a", "tempalte": "x"}, "tempalte", "Extra inputs"),
        ({"connection": "ref:s", "channel": "#a", "template": "x", "fields": ["a"]}, "", "leave it out"),
        ({"connection": "ref:", "channel": "#a"}, "connection", "secret reference"),
    ],
)
def test_slack_config_errors_name_the_field(settings: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(pipeline_doc([{"slack": settings}]))
    path = "pipelines[0].destinations[0].slack" + (f".{field}" if field else "")
    assert info.value.path == path
    assert message in info.value.message
    # A pasted credential is never echoed back.
    assert "xoxb-123" not in str(info.value) and "hooks.slack.com" not in str(info.value)


def test_slack_api_base_defaults_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = SlackConfig(connection="ref:s", channel="#a")
    assert cfg.resolved_api_base() == "https://slack.com/api"
    monkeypatch.setenv("INGESTLAYER_SLACK_API_URL", "http://127.0.0.1:9/api/")
    assert cfg.resolved_api_base() == "http://127.0.0.1:9/api"
    assert (
        SlackConfig(connection="ref:s", channel="#a", api_base="http://x/api/").resolved_api_base()
        == "http://x/api"
    )


def test_registry_loads_the_chat_destinations() -> None:
    assert destination_class("slack") is Slack
    assert destination_class("discord") is Discord
    assert destination_class("telegram") is Telegram


def test_oauth_state_is_sealed_expiring_and_bound() -> None:
    box = SecretBox("k1")
    sealed, state = seal_state(
        box, "prj_1", "slack-main", "https://il.example/oauth/slack/callback", now=1000
    )
    assert "prj_1" not in sealed and "slack-main" not in sealed  # encrypted, not just signed
    opened = open_state(box, sealed, now=1000 + 599)
    assert (opened.project_id, opened.name, opened.nonce) == ("prj_1", "slack-main", state.nonce)
    with pytest.raises(SlackOAuthError, match="expired"):
        open_state(box, sealed, now=1000 + 601)
    with pytest.raises(SlackOAuthError, match="not valid"):
        open_state(SecretBox("another-master-key"), sealed, now=1000)
    with pytest.raises(SlackOAuthError, match="not valid"):
        open_state(box, sealed[:-4] + "AAAA", now=1000)
    with pytest.raises(SlackOAuthError, match="not valid"):
        open_state(box, "ünicode", now=1000)


# =========================================================================================== discord


def test_discord_embed_shape() -> None:
    embed = build_embed(EVENT, template=None, fields=None, color=None)
    assert embed == {
        "title": "user.signed_up",
        "fields": [
            {"name": "email", "value": "ada@acme.com", "inline": True},
            {"name": "plan", "value": "pro", "inline": True},
            {"name": "source", "value": "marketing-site", "inline": True},
        ],
        "timestamp": "2026-03-01T12:30:00.000Z",
        "footer": {"text": "ingestlayer · evt_01JTEST"},
    }
    body = Discord(DiscordConfig(webhook_url="ref:d", content="New: $event.email", username="il")).message(
        EVENT
    )
    assert body["allowed_mentions"] == {"parse": []}
    assert body["content"] == "New: ada@acme.com" and body["username"] == "il"
    assert validate_message(body) == {}


def test_discord_escapes_markdown_in_values() -> None:
    embed = build_embed(event({"v": NASTY}), template="*$event.v*", fields=None, color=0x5865F2)
    assert embed["description"] == (
        r'*\<script\>alert("x")\</script\> & co \> \*bold\* \_it\_ \`code\` @everyone*'
    )
    assert embed["color"] == 0x5865F2 and "fields" not in embed


def discord_description(payload: dict[str, Any], template: str) -> str:
    embed = build_embed(event(payload), template=template, fields=None, color=None)
    assert validate_message({"embeds": [embed]}) == {}
    description: str = embed["description"]
    return description


def test_discord_code_span_values_show_without_backslashes() -> None:
    # The template from docs/destinations/discord.md.
    template = "**$event.feature** used $event.count times by `$event.user_id`"
    payload = {"feature": "csv_export", "count": 3, "user_id": "u_1"}
    assert discord_description(payload, template) == "**csv\\_export** used 3 times by `u_1`"
    # A backtick in the value cannot close the span (nor a code block's ```).
    value = "a`b ```c *d* \\e"
    assert discord_description({"v": value}, "`$event.v` ``$event.v`` ```\n$event.v\n```") == (
        "`a\u02cbb \u02cb\u02cb\u02cbc *d* \\e` ``a\u02cbb \u02cb\u02cb\u02cbc *d* \\e`` "
        "```\na\u02cbb \u02cb\u02cb\u02cbc *d* \\e\n```"
    )
    # No span: an unclosed backtick, or one the template escapes.
    assert discord_description({"v": "u_1"}, "`$event.v") == "`u\\_1"
    assert discord_description({"v": "u_1"}, "\\`$event.v\\`") == "\\`u\\_1\\`"


def test_discord_link_url_values_are_percent_encoded() -> None:
    template = "[$event.customer](https://app/u/$event.customer)"
    assert discord_description({"customer": "cus_123"}, template) == "[cus\\_123](https://app/u/cus_123)"
    value = "a/b?c&d e|f<g>h\\i`jé"
    assert discord_description({"customer": value}, "[x](https://app/u/$event.customer)") == (
        "[x](https://app/u/a%2Fb%3Fc%26d%20e%7Cf%3Cg%3Eh%5Ci%60j%C3%A9)"
    )
    # A value starting the URL is a whole URL: its delimiters are kept.
    assert discord_description({"u": "https://e.com/a_b?q=1 2"}, "[open]($event.u)") == (
        "[open](https://e.com/a_b?q=1%202)"
    )


def test_discord_value_cannot_end_a_link_url() -> None:
    value = "x) [refund](https://evil.example"
    described = discord_description(
        {"customer": value}, "[account](https://app/u/$event.customer) and (more)"
    )
    assert described == "[account](https://app/u/x%29%20%5Brefund%5D%28https%3A%2F%2Fevil.example) and (more)"
    # The link's URL is all of the value: it ends at the template's `)`.
    assert re.findall(r"\]\(([^)]*)\)", described) == [
        "https://app/u/x%29%20%5Brefund%5D%28https%3A%2F%2Fevil.example"
    ]
    # A URL with its own pair of parentheses is one URL.
    assert (
        discord_description({"v": "a)"}, "[w](https://w.org/F_(b)/$event.v)")
        == "[w](https://w.org/F_(b)/a%29)"
    )


def test_discord_plain_text_escaping_is_unchanged() -> None:
    escaped = r'\<script\>alert("x")\</script\> & co \> \*bold\* \_it\_ \`code\` @everyone'
    # Text, a masked link's label, and text after a link or a code span.
    assert discord_description({"v": NASTY}, "$event.v [$event.v](https://a.b) `c` $event.v") == (
        f"{escaped} [{escaped}](https://a.b) `c` {escaped}"
    )
    body = Discord(DiscordConfig(webhook_url="ref:d", content="**$event.v**")).message(event({"v": "a_b*"}))
    assert body["content"] == "**a\\_b\\***"


def test_discord_embed_stays_within_every_limit() -> None:
    payload = {f"field_{i:02d}": "x*" * 1500 for i in range(40)}
    embed = build_embed(event(payload, type_="t." + "y" * 300), template=None, fields=None, color=None)
    assert len(embed["title"]) == 256
    assert 0 < len(embed["fields"]) <= 25
    assert all(len(f["value"]) <= 1024 and f["value"] for f in embed["fields"])
    assert embed_size(embed) <= 6000
    assert validate_message({"embeds": [embed]}) == {}
    # No value ends in a lone escaping backslash.
    assert all(
        not f["value"].removesuffix("…").endswith("\\") or f["value"].endswith("\\\\…")
        for f in embed["fields"]
    )
    described = build_embed(event({"v": "_" * 9000}), template="$event.v", fields=None, color=None)
    assert len(described["description"]) <= 4096
    assert validate_message({"embeds": [described]}) == {}
    empty = build_embed(event({"blank": ""}), template=None, fields=None, color=None)
    assert empty["fields"] == [{"name": "blank", "value": "—", "inline": True}]


DISCORD_CASES = [
    (200, {"id": "1"}, {}, True, False, None, None),
    (204, None, {}, True, False, None, None),
    (
        429,
        {"message": "You are being rate limited.", "retry_after": 0.75, "global": False},
        {"Retry-After": "1"},
        False,
        False,
        0.75,
        "rate limit",
    ),
    (429, {"message": "x", "retry_after": 2.5, "global": True}, {}, False, False, 2.5, "global"),
    (429, b"<html>cloudflare</html>", {"X-RateLimit-Reset-After": "1.500"}, False, False, 1.5, "429"),
    (429, b"", {"Retry-After": "4"}, False, False, 4.0, "429"),
    (
        400,
        {
            "message": "Invalid Form Body",
            "code": 50035,
            "errors": {"embeds": {"0": {"title": {"_errors": [{"code": "X", "message": "Too long."}]}}}},
        },
        {},
        False,
        True,
        None,
        "embeds.0.title: Too long.",
    ),
    (
        401,
        {"message": "Invalid Webhook Token", "code": 50027},
        {},
        False,
        True,
        None,
        "Invalid Webhook Token",
    ),
    (403, {"message": "Missing Permissions", "code": 50013}, {}, False, True, None, "Missing Permissions"),
    (
        404,
        {"message": "Unknown Webhook", "code": 10015},
        {},
        False,
        True,
        None,
        "Unknown Webhook (code 10015)",
    ),
    (500, b"", {}, False, False, None, "HTTP 500"),
    (502, b"bad gateway", {}, False, False, None, "HTTP 502"),
]


@pytest.mark.parametrize(
    ("status", "body", "headers", "ok", "permanent", "retry_after", "error"), DISCORD_CASES
)
def test_discord_answers(
    status: int,
    body: Any,
    headers: dict[str, str],
    ok: bool,
    permanent: bool,
    retry_after: float | None,
    error: str | None,
) -> None:
    out = discord_mod.classify_reply(reply(status, body, headers), Redactor())
    assert (out.ok, out.permanent, out.retry_after) == (ok, permanent, retry_after)
    if error is not None:
        assert out.error is not None and error in out.error


def test_discord_docstring_example_and_config_errors() -> None:
    cfg = parse_config(pipeline_doc(docstring_destinations(discord_mod.__doc__)))
    assert [d.settings["color"] for d in cfg.destinations] == [None, 0x5865F2]
    for settings, field, message in [
        ({"webhook_url": "https://discord.com/api/webhooks/1/tok"}, "webhook_url", "never the webhook URL"),
        ({"webhook_url": "ref:d", "username": "Discord Bot"}, "username", "may not contain"),
        ({"webhook_url": "ref:d", "color": "blue"}, "color", "#RRGGBB"),
        ({"webhook_url": "ref:d", "color": 2**25}, "color", "#RRGGBB"),
        ({"webhook_url": "ref:d", "avatar_url": "x"}, "avatar_url", "http"),
        ({"webhook_url": "ref:d", "fields": ["a"] * 26}, "fields", "at most 25"),
        ({}, "webhook_url", "Field required"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config(pipeline_doc([{"discord": settings}]))
        assert info.value.path == f"pipelines[0].destinations[0].discord.{field}", settings
        assert message in info.value.message
        assert "tok" not in info.value.message


# ========================================================================================== telegram


def test_telegram_default_text_escapes_every_value() -> None:
    text = build_text(event({"note": NASTY, "n": 3}, type_="a<b>"), template=None, fields=None)
    assert text == (
        "<b>a&lt;b&gt;</b>\n"
        "note: &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; co &gt; *bold* _it_ `code` @everyone\n"
        "n: 3"
    )
    assert parse_html(text) == f"a<b>\nnote: {NASTY}\nn: 3"


def test_telegram_default_text_cuts_each_value_at_1000_shown_characters() -> None:
    """Telegram counts &lt; as the one character it shows: a value of "<"s was cut by its
    escaped length, and showed 200 of its 1,000."""
    text = build_text(event({"u": "<" * 5000, "v": "ok"}), template=None, fields=None)
    shown = parse_html(text)
    assert "u: " + "<" * 999 + "…\nv: ok" in shown, shown[-40:]


def test_telegram_template_keeps_its_tags_and_escapes_values() -> None:
    text = build_text(
        event({"u": '"><script>', "f": "csv & <b>"}),
        template='<b>$event.f</b> by <a href="https://app/u/$event.u">$event.u</a>',
        fields=None,
    )
    assert text == (
        "<b>csv &amp; &lt;b&gt;</b> by "
        '<a href="https://app/u/&quot;&gt;&lt;script&gt;">&quot;&gt;&lt;script&gt;</a>'
    )
    assert parse_html(text) == 'csv & <b> by "><script>'


def test_telegram_a_quote_in_a_value_cannot_end_a_single_quoted_attribute() -> None:
    """href='…/$event.user' with o'brien ended the attribute early: Telegram refused every such
    message (400 can't parse entities), so the delivery went dead."""
    text = build_text(
        event({"user": "o'brien"}),
        template="<a href='https://app.acme.com/u/$event.user'>$event.user</a> &amp; "
        '<span class="tg-spoiler">x</span>',
        fields=None,
    )
    assert text == (
        "<a href='https://app.acme.com/u/o&#39;brien'>o&#39;brien</a> &amp; "
        '<span class="tg-spoiler">x</span>'
    )
    assert parse_html(text) == "o'brien & x"
    check_html(text)
    # What was sent before, which Telegram refuses (and the fake now does too).
    with pytest.raises(EntityError):
        parse_html("<a href='https://app.acme.com/u/o'brien'>o'brien</a>")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("<script>$event.x</script>", "does not support the tag <script>"),
        ("<b>$event.x", "<b> is never closed"),
        ("<b>$event.x</i></b>", "</i> closes a tag that is not open"),
        ("Q&A: $event.x", "`&` that does not start an entity"),
        ("a < b: $event.x", "`<` that does not start a tag"),
        ("&nbsp;$event.x", "unsupported entity &nbsp;"),
        ("<a>$event.x</a>", "<a> needs an href"),
        ("line<br/>$event.x", "does not support the tag <br>"),
        # What Telegram's parser refuses in every message, so refused when configured.
        ("<a href=https://app.acme.com/u>$event.x</a>", "attribute values must be in quotes"),
        ("<a href='https://a.b/c'x>$event.x</a>", "attribute values must be in quotes"),
        ("<span>$event.x</span>", '<span class="tg-spoiler">'),
        # A placeholder in an unquoted value: what it brings (a URL) is refused unquoted.
        ("<a href=$event.url>$event.x</a>", "$event.url is in the unquoted value of href= in <a>"),
        ("<a href=https://app/u/${event.id}>x</a>", "${event.id} is in the unquoted value of href="),
        ('<a title="t" HREF = $event.url >x</a>', 'put the value in quotes (HREF="…")'),
        ("<tg-emoji emoji-id=$event.e>x</tg-emoji>", "$event.e is in the unquoted value of emoji-id="),
    ],
)
def test_telegram_template_must_be_telegram_html(template: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(pipeline_doc([{"telegram": {"bot_token": "ref:t", "chat_id": 1, "template": template}}]))
    assert info.value.path == "pipelines[0].destinations[0].telegram.template"
    assert message in info.value.message


def test_telegram_placeholder_in_a_quoted_attribute_is_accepted_and_unquoted_one_was_refused() -> None:
    """With each placeholder checked as `x`, href=$event.url passed the check; the URL it brings
    made every message "can't parse entities". In quotes (even with an `=` before it) it is fine."""
    for template in (
        '<a href="https://app/?u=$event.url">x</a>',
        "<a href='$event.url'>x</a> <span class=tg-spoiler>$event.url</span>",
    ):
        config = TelegramConfig(bot_token="ref:t", chat_id=1, template=template)
        text = build_text(event({"url": "https://a.b/c d"}), template=config.template, fields=None)
        parse_html(text)
    with pytest.raises(EntityError):
        parse_html(
            build_text(event({"url": "https://a.b/c"}), template="<a href=$event.url>x</a>", fields=None)
        )


@pytest.mark.parametrize(
    "markup",
    [
        "<b>" + "a&amp;" * 3000 + "</b>",
        "<b>title</b>\n" + "<i>x &lt; y</i> " * 1000,
        "😀" * 5000,
        "<pre><code>" + "&quot;" * 5000 + "</code></pre>",
        "plain " * 1000,
    ],
)
def test_telegram_fit_html_cuts_between_entities_and_closes_tags(markup: str) -> None:
    out = fit_html(markup)
    # Telegram's limit: 4096 UTF-16 units of the text after entity parsing.
    shown = parse_html(out)
    assert 4000 < len(shown.encode("utf-16-le")) // 2 <= 4096
    check_html(out)  # balanced, no half entity
    assert shown.endswith("…")


def test_telegram_fit_html_keeps_markup_whose_shown_text_fits() -> None:
    # 4,000 characters shown, 16,000 of markup: within Telegram's limit, so nothing is cut.
    markup = "<b>" + "&lt;" * 4000 + "</b>"
    assert fit_html(markup) == markup


def test_telegram_long_default_message_is_accepted() -> None:
    text = build_text(event({f"k{i}": "<&>" * 3000 for i in range(10)}), template=None, fields=None)
    assert len(parse_html(text).encode("utf-16-le")) // 2 <= 4096


TELEGRAM_CASES = [
    (200, {"ok": True, "result": {"message_id": 1}}, True, False, None, None),
    (
        429,
        {
            "ok": False,
            "error_code": 429,
            "description": "Too Many Requests: retry after 3",
            "parameters": {"retry_after": 3},
        },
        False,
        False,
        3.0,
        "retry after 3",
    ),
    (
        400,
        {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"},
        False,
        True,
        None,
        "chat not found",
    ),
    (
        400,
        {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: can't parse entities: Unsupported start tag",
        },
        False,
        True,
        None,
        "can't parse entities",
    ),
    (401, {"ok": False, "error_code": 401, "description": "Unauthorized"}, False, True, None, "Unauthorized"),
    (
        403,
        {"ok": False, "error_code": 403, "description": "Forbidden: bot was blocked by the user"},
        False,
        True,
        None,
        "blocked",
    ),
    (404, {"ok": False, "error_code": 404, "description": "Not Found"}, False, True, None, "Not Found"),
    (
        400,
        {
            "ok": False,
            "error_code": 400,
            "description": "Bad Request: group chat was upgraded to a supergroup chat",
            "parameters": {"migrate_to_chat_id": -100777},
        },
        False,
        True,
        None,
        "chat_id: -100777",
    ),
    (
        500,
        {"ok": False, "error_code": 500, "description": "Internal Server Error"},
        False,
        False,
        None,
        "500",
    ),
    (502, b"<html>bad gateway</html>", False, False, None, "HTTP 502"),
]


@pytest.mark.parametrize(("status", "body", "ok", "permanent", "retry_after", "error"), TELEGRAM_CASES)
def test_telegram_answers(
    status: int, body: Any, ok: bool, permanent: bool, retry_after: float | None, error: str | None
) -> None:
    out = telegram_mod.classify_reply(reply(status, body), Redactor())
    assert (out.ok, out.permanent, out.retry_after) == (ok, permanent, retry_after)
    if error is not None:
        assert out.error is not None and error in out.error


def test_telegram_docstring_example_and_config_errors() -> None:
    cfg = parse_config(pipeline_doc(docstring_destinations(telegram_mod.__doc__)))
    assert [d.settings["chat_id"] for d in cfg.destinations] == [-1001234567890, "@acme_alerts"]
    assert TelegramConfig(bot_token="env:T", chat_id="-100123").chat_id == -100123
    for settings, field, message in [
        (
            {"bot_token": "123456:ABCdefGHIjklMNOpqrSTUvwxYZ0123456789", "chat_id": 1},
            "bot_token",
            "never the bot token",
        ),
        ({"bot_token": "ref:t", "chat_id": "alerts"}, "chat_id", "@channelusername"),
        ({"bot_token": "ref:t", "chat_id": True}, "chat_id", "@channelusername"),
        ({"bot_token": "ref:t", "chat_id": "-10012345678901234567"}, "chat_id", "52 significant bits"),
        ({"bot_token": "ref:t", "chat_id": -(2**60)}, "chat_id", "52 significant bits"),
        ({"bot_token": "ref:t", "chat_id": 1, "message_thread_id": 2**53}, "message_thread_id", "52 signif"),
        ({"bot_token": "ref:t"}, "chat_id", "Field required"),
        ({"bot_token": "ref:t", "chat_id": 1, "api_base": "ftp://x"}, "api_base", "http"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_config(pipeline_doc([{"telegram": settings}]))
        assert info.value.path == f"pipelines[0].destinations[0].telegram.{field}", settings
        assert message in info.value.message
        assert "ABCdef" not in str(info.value)


class _ExplodingSession:
    """A session whose every request fails with an error quoting the URL, as aiohttp's can."""

    def __init__(self) -> None:
        self.urls: list[str] = []

    def post(self, url: str, **_: Any) -> Any:
        self.urls.append(url)
        raise aiohttp.InvalidURL(url)


async def test_telegram_token_never_appears_in_errors() -> None:
    token = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw"

    async def resolve(_project: str, _ref: str) -> str:
        return token

    session = _ExplodingSession()
    ctx = SendContext(session=session, resolve_secret=resolve, egress=EgressPolicy(True), user_agent="t")  # type: ignore[arg-type]
    request = SendRequest("dlv_1", "prj_1", "evt_1", "x.y", 1, EVENT, "{}")
    dest = Telegram(TelegramConfig(bot_token="ref:tg", chat_id=1, api_base="http://127.0.0.1:9"))
    out = await dest.send(request, ctx)
    assert session.urls == [f"http://127.0.0.1:9/bot{token}/sendMessage"]
    assert out.ok is False and out.error is not None
    assert token not in out.error and "bot<redacted>/sendMessage" in out.error
    assert token not in dest.target()

    async def resolve_bad(_project: str, _ref: str) -> str:
        return "not a token/../../etc"

    ctx.resolve_secret = resolve_bad
    bad = await dest.send(request, ctx)
    assert bad.permanent and bad.error is not None and "not a token" not in bad.error


async def test_discord_and_slack_webhook_urls_never_appear_in_errors() -> None:
    url = "http://127.0.0.1:9/api/webhooks/123456789012345678/VerySecretWebhookToken_abcdef"

    async def resolve(_project: str, _ref: str) -> str:
        return url

    session = _ExplodingSession()
    ctx = SendContext(session=session, resolve_secret=resolve, egress=EgressPolicy(True), user_agent="t")  # type: ignore[arg-type]
    request = SendRequest("dlv_1", "prj_1", "evt_1", "x.y", 1, EVENT, "{}")
    for dest in (Discord(DiscordConfig(webhook_url="ref:d")), Slack(SlackConfig(webhook_url="ref:s"))):
        out = await dest.send(request, ctx)
        assert out.error is not None and "VerySecret" not in out.error, out.error
    assert session.urls[0].endswith("?wait=true")


async def test_a_chat_webhook_that_cannot_be_reached_or_does_not_answer_is_retried() -> None:
    """Nothing listening is a connection error that names no part of the webhook URL; a server
    that never answers, a timeout: both may pass, so neither is permanent."""

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # holds the connection open until the client gives up

    listener = await asyncio.start_server(silent, "127.0.0.1", 0)
    ports = {"closed": free_port(), "silent": listener.sockets[0].getsockname()[1]}
    outcomes = {}
    request = SendRequest("dlv_1", "prj_1", "evt_1", "x.y", 1, EVENT, "{}")
    try:
        async with aiohttp.ClientSession() as session:
            for name, port in ports.items():
                url = f"http://127.0.0.1:{port}/api/webhooks/123456789012345678/VerySecretWebhookToken_abcdef"

                async def resolve(_project: str, _ref: str, url: str = url) -> str:
                    return url

                ctx = SendContext(
                    session=session, resolve_secret=resolve, egress=EgressPolicy(True), user_agent="t"
                )
                dest = Discord(DiscordConfig(webhook_url="ref:d", timeout=0.3))
                outcomes[name] = await dest.send(request, ctx)
    finally:
        listener.close()
        await listener.wait_closed()
    closed, quiet = outcomes["closed"], outcomes["silent"]
    assert not closed.ok and not closed.permanent, closed
    assert (closed.error or "").startswith("connection error: ") and "VerySecret" not in (
        closed.error or ""
    ), closed
    assert not quiet.ok and not quiet.permanent and quiet.error == "timed out after 0.3s", quiet


# ============================================================================================== docs


@pytest.mark.parametrize(
    ("page", "model"),
    [("slack.md", SlackConfig), ("discord.md", DiscordConfig), ("telegram.md", TelegramConfig)],
)
def test_docs_pages_examples_apply_and_reference_every_field(page: str, model: Any) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    documents = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]
    assert documents
    kind = page.removesuffix(".md")
    for doc in documents:
        cfg = parse_config(doc)
        assert {d.kind for d in cfg.destinations} == {kind}
    reference = text.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", reference, re.M))
    assert documented == set(model.model_fields)


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        # As Discord shows webhook URLs: no version, which it serves as v6 (429s in milliseconds).
        ("https://discord.com/api/webhooks/123/tok-en", "https://discord.com/api/v10/webhooks/123/tok-en"),
        (
            "https://discordapp.com/api/webhooks/1/t?thread_id=9",
            "https://discordapp.com/api/v10/webhooks/1/t?thread_id=9",
        ),
        ("https://discord.com/api/v6/webhooks/1/t", "https://discord.com/api/v10/webhooks/1/t"),
        ("https://discord.com/api/v9/webhooks/1/t", "https://discord.com/api/v9/webhooks/1/t"),  # seconds
        ("https://discord.com/api/v10/webhooks/1/t", "https://discord.com/api/v10/webhooks/1/t"),
        (
            "https://proxy.internal/relay/discord",
            "https://proxy.internal/relay/discord",
        ),  # not Discord's path
    ],
)
def test_discord_requests_name_an_api_version_whose_429s_say_seconds(given: str, sent: str) -> None:
    assert str(pinned_version(URL(given))) == sent
