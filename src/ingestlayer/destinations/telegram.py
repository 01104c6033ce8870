"""``telegram``: Bot API ``sendMessage`` with ``parse_mode: HTML``, escaped properly.

Example::

    destinations:
      - telegram: { bot_token: ref:telegram-bot, chat_id: -1001234567890 }
      - telegram:
          bot_token: env:TELEGRAM_BOT_TOKEN
          chat_id: "@acme_alerts"
          template: "<b>$event.feature</b> used by <code>$event.user_id</code> ($event.plan)"
          disable_notification: true

The default message is ``<b>event.type</b>`` and one ``key: value`` line per key field. A
``template`` is Telegram HTML: your own tags are kept (only the ones Telegram supports, balanced;
checked when the config is applied), and every event value is escaped (``&``, ``<``, ``>``, ``"``),
so ``<script>`` in a payload arrives as the text ``<script>``. The message is kept within 4096
characters of shown text (Telegram's measure, after entity parsing), cut between entities and tags
with the open tags closed; a template that shows no text falls back to the event type.

Answers: ``{"ok": true}`` delivered; 429 (``parameters.retry_after``) retried after that many
seconds; 400 (chat not found, can't parse entities, …), 401, 403 (bot blocked or kicked) and 404
dead at once with Telegram's description; 5xx retried. The token is part of the URL path
(``/bot<token>/sendMessage``): it is redacted (``bot<redacted>``) from every error and excerpt.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingestlayer.destinations.base import MAX_TIMEOUT_SECONDS, Outcome, SendContext, SendRequest
from ingestlayer.destinations.chat import (
    ELLIPSIS,
    Redactor,
    Reply,
    check_http_url,
    check_paths,
    is_transient_status,
    key_fields,
    render_template,
    reply_outcome,
    template_placeholders_only,
    truncate,
)
from ingestlayer.destinations.chat import (
    post as post_json,
)
from ingestlayer.destinations.shared import check_reference
from ingestlayer.pipeline.templates import first_placeholder

DEFAULT_API_BASE = "https://api.telegram.org"
API_BASE_ENV = "INGESTLAYER_TELEGRAM_API_URL"
TEXT_LIMIT = 4096
MAX_FIELDS = 50
DEFAULT_FIELDS = 10
PERMANENT_STATUSES = frozenset({400, 401, 403, 404})

TOKEN_RE = re.compile(r"^\d{1,20}:[A-Za-z0-9_-]{20,100}$")
CHAT_ID_RE = re.compile(r"^(-?\d{1,20}|@[A-Za-z][A-Za-z0-9_]{3,31})$")
# Tags Telegram's HTML parse mode supports (https://core.telegram.org/bots/api#html-style).
SUPPORTED_TAGS = frozenset(
    {
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "tg-emoji",
        "code",
        "pre",
        "blockquote",
    }
)
NAMED_ENTITIES = frozenset({"lt", "gt", "amp", "quot"})
# ' too: a value inside a single-quoted attribute (href='…$event.user…') would end it early.
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
# A tag, an entity, or one character: the units a message may be cut between.
_TOKEN = re.compile(r"<[^<>]*>|&(?:#\d{1,7}|#x[0-9A-Fa-f]{1,6}|[A-Za-z]{1,10});|.", re.S)
_TAG = re.compile(r"^<(/?)([A-Za-z][A-Za-z0-9-]*)((?:\s[^<>]*)?)(/?)>$")
# An attribute as Telegram's parser reads one: a value quoted either way, or unquoted of letters,
# digits, '.' and '-' only (href=https://… is refused).
_ATTR = re.compile(r"\s+([A-Za-z-]+)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9.-]+))?")
# An attribute of a template as written, placeholders and all: an unquoted value runs to the next
# space or '>', as an HTML reader takes it.
_TEMPLATE_ATTR = re.compile(r"\s+([A-Za-z-]+)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s\"'>]+))?")


def escape(text: str) -> str:
    """HTML-escape a value for Telegram: ``&``, ``<``, ``>``, ``"`` and ``'``."""
    return "".join(_ESCAPES.get(ch, ch) for ch in text)


def utf16_len(text: str) -> int:
    """Telegram counts UTF-16 code units (an emoji outside the BMP is two)."""
    return len(text.encode("utf-16-le")) // 2


def check_html(markup: str) -> None:
    """Raise ValueError when Telegram would answer "can't parse entities" for ``markup``."""
    stack: list[str] = []
    for m in _TOKEN.finditer(markup):
        tok = m.group(0)
        if tok == "<" or (tok.startswith("<") and len(tok) > 1 and not _TAG.match(tok)):
            raise ValueError("a `<` that does not start a tag must be written `&lt;`")
        if tok == "&":
            raise ValueError("a `&` that does not start an entity must be written `&amp;`")
        if tok.startswith("&") and len(tok) > 1:
            name = tok[1:-1]
            if not name.startswith("#") and name not in NAMED_ENTITIES:
                raise ValueError(f"unsupported entity {tok}: Telegram knows &lt; &gt; &amp; &quot; and &#N;")
            continue
        tag = _TAG.match(tok)
        if not tag:
            continue
        closing, name, attrs = tag.group(1) == "/", tag.group(2).lower(), tag.group(3) + tag.group(4)
        if name not in SUPPORTED_TAGS:
            raise ValueError(
                f"Telegram does not support the tag <{name}> (supported: {', '.join(sorted(SUPPORTED_TAGS))})"
            )
        if closing:
            if not stack or stack[-1] != name:
                raise ValueError(f"</{name}> closes a tag that is not open")
            stack.pop()
        else:
            if attrs.rstrip().endswith("/"):
                raise ValueError(f"<{name}/>: Telegram tags cannot be self-closing")
            found = _attributes(name, attrs)
            if name == "a" and "href" not in found:
                raise ValueError("<a> needs an href")
            if name == "span" and found.get("class") != "tg-spoiler":
                raise ValueError('Telegram supports <span> only as <span class="tg-spoiler">')
            stack.append(name)
    if stack:
        raise ValueError(f"<{stack[-1]}> is never closed")


def check_template_attributes(template: str) -> None:
    """Raise ValueError when a placeholder is in an unquoted attribute value of ``template``.

    The literal markup is checked with each placeholder as one letter, which an unquoted value
    may hold; but what the placeholder brings (a URL's ':' and '/', a space) is not only letters,
    digits, '.' and '-', and Telegram would refuse every such message (can't parse entities).
    """
    for m in re.finditer(r"<[^<>]*>", template):
        tag = _TAG.match(m.group(0))
        if tag is None or tag.group(1):
            continue
        attrs, at = tag.group(3), 0
        while (attr := _TEMPLATE_ATTR.match(attrs, at)) is not None:
            value = attr.group(2) or ""
            placeholder = None if value[:1] in ("'", '"') else first_placeholder(value)
            if placeholder is not None:
                name = attr.group(1)
                raise ValueError(
                    f"{placeholder} is in the unquoted value of {name}= in <{tag.group(2)}>, "
                    f"which Telegram refuses unless it is only letters, digits, '.' and '-': "
                    f'put the value in quotes ({name}="…")'
                )
            at = attr.end()


def _attributes(tag: str, attrs: str) -> dict[str, str]:
    """A start tag's attributes and their values (unquoted), as Telegram's parser reads them."""
    found: dict[str, str] = {}
    at = 0
    text = attrs.rstrip().removesuffix("/").rstrip()
    while at < len(text):
        m = _ATTR.match(text, at)
        if m is None:
            raise ValueError(
                f"<{tag}>: attribute values must be in quotes (or letters, digits, '.' and '-' only)"
            )
        value = m.group(2) or ""
        found[m.group(1).lower()] = value[1:-1] if value[:1] in ("'", '"') else value
        at = m.end()
    return found


def _shown(tok: str) -> str:
    """What a token of the markup shows: nothing for a tag, the character of an entity."""
    if len(tok) > 1 and tok.startswith("<"):
        return ""
    if len(tok) > 1 and tok.startswith("&"):
        return html.unescape(tok)
    return tok


def shown_text(markup: str) -> str:
    """The text Telegram shows for ``markup`` (tags dropped, entities decoded)."""
    return "".join(_shown(m.group(0)) for m in _TOKEN.finditer(markup))


def fit_html(markup: str, limit: int = TEXT_LIMIT) -> str:
    """Cut HTML between tokens so the text it shows holds at most ``limit`` UTF-16 units (what
    Telegram counts, after parsing: ``&lt;`` is one), closing the tags left open, with "…"."""
    if utf16_len(shown_text(markup)) <= limit:
        return markup
    out: list[str] = []
    used = 0
    stack: list[str] = []
    for m in _TOKEN.finditer(markup):
        tok = m.group(0)
        units = utf16_len(_shown(tok))
        if used + units + len(ELLIPSIS) > limit:
            break
        tag = _TAG.match(tok) if tok.startswith("<") else None
        if tag:
            name = tag.group(2).lower()
            if not tag.group(1):
                stack.append(name)
            elif stack and stack[-1] == name:
                stack.pop()
        out.append(tok)
        used += units
    return "".join(out) + ELLIPSIS + "".join(f"</{n}>" for n in reversed(stack))


def build_text(event: Mapping[str, Any], *, template: str | None, fields: list[str] | None) -> str:
    """The message's HTML: the template rendered, or the default title and key-field lines."""
    event_type = str(event.get("type") or "event")
    if template is not None:
        rendered = render_template(template, event, escape).strip()
        # Markup that shows nothing (`<b></b>` for an empty value) is "message text is empty".
        if not shown_text(rendered).strip():
            rendered = f"<b>{escape(event_type)}</b>"
        return fit_html(rendered)
    payload = event.get("payload")
    lines = [f"<b>{escape(event_type)}</b>"]
    limit = len(fields) if fields is not None else DEFAULT_FIELDS
    for label, value in key_fields(payload if isinstance(payload, Mapping) else {}, fields, limit):
        # Each value is cut on its own first, so one huge field cannot crowd out the others; by
        # the characters Telegram shows (an entity such as &lt; is one), then escaped: cut after
        # escaping, a value of "<"s showed 200 of its 1,000.
        lines.append(f"{escape(label)}: {escape(truncate(value, 1000))}")
    return fit_html("\n".join(lines))


# Telegram's ids have at most 52 significant bits ("a signed 64-bit integer or double-precision
# float type are safe"): a larger one is a typo, and past 64 bits could not even be sent as JSON.
MAX_ID = 2**52


def _telegram_id(field: str, value: int) -> int:
    if not -MAX_ID < value < MAX_ID:
        raise ValueError(f"{field} {value} is not a Telegram id (they have at most 52 significant bits)")
    return value


class TelegramConfig(BaseModel):
    """Send each event to a Telegram chat through a bot (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    bot_token: str = Field(
        description="The bot's token (from @BotFather) as a reference, `ref:NAME` or `env:VAR`."
    )
    chat_id: int | str = Field(
        description="The chat: a numeric id (groups and channels are negative) or `@channelusername`."
    )
    template: str | None = Field(
        default=None,
        min_length=1,
        max_length=TEXT_LIMIT,
        description="Message HTML with `$event.*` placeholders; default: the event type and key fields.",
    )
    fields: list[str] | None = Field(
        default=None, description="Payload fields the default message lists; default: the first 10 scalars."
    )
    disable_notification: bool = Field(default=False, description="Deliver silently.")
    message_thread_id: int | None = Field(default=None, description="A forum topic of the chat.")
    api_base: str | None = Field(
        default=None, description=f"Bot API base URL; default `${API_BASE_ENV}` or {DEFAULT_API_BASE}."
    )
    timeout: float = Field(
        default=10.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds to wait for Telegram's answer."
    )

    @field_validator("bot_token")
    @classmethod
    def _token(cls, v: str) -> str:
        return check_reference("bot_token", v, "bot token")

    @field_validator("chat_id", mode="before")
    @classmethod
    def _chat_id(cls, v: Any) -> Any:
        # Before pydantic's coercion, which would turn YAML's `yes` into the chat 1.
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError("chat_id must be a numeric chat id or `@channelusername`")
        if isinstance(v, str):
            text = v.strip()
            if not CHAT_ID_RE.fullmatch(text):
                raise ValueError(
                    "chat_id must be a numeric chat id (e.g. -1001234567890) or `@channelusername`"
                )
            if text.startswith("@"):
                return text
            v = int(text)
        return _telegram_id("chat_id", v)

    @field_validator("message_thread_id")
    @classmethod
    def _thread_id(cls, v: int | None) -> int | None:
        return None if v is None else _telegram_id("message_thread_id", v)

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                check_template_attributes(v)
                check_html(template_placeholders_only(v))
            except ValueError as exc:
                raise ValueError(f"template is not valid Telegram HTML: {exc}") from None
        return v

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str] | None) -> list[str] | None:
        return check_paths("fields", v, MAX_FIELDS)

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url("api_base", v)

    @model_validator(mode="after")
    def _shape(self) -> TelegramConfig:
        if self.template is not None and self.fields is not None:
            raise ValueError("`fields` shapes the default message; with a `template`, leave it out")
        return self

    def resolved_api_base(self) -> str:
        return (self.api_base or os.environ.get(API_BASE_ENV) or DEFAULT_API_BASE).rstrip("/")


def classify_reply(reply: Reply, redact: Redactor) -> Outcome:
    body = reply.json()
    info = body if isinstance(body, dict) else {}
    if 200 <= reply.status < 300 and info.get("ok") is True:
        return reply_outcome(reply, redact, ok=True)
    description = str(info.get("description") or "").strip()
    code = info.get("error_code") if isinstance(info.get("error_code"), int) else reply.status
    params = info.get("parameters") if isinstance(info.get("parameters"), dict) else {}
    reason = f"HTTP {reply.status}: {description}" if description else f"HTTP {reply.status}"
    if code == 429 or reply.status == 429:
        retry_after: float | None = None
        raw = (params or {}).get("retry_after")
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            retry_after = max(float(raw), 0.0)
        if retry_after is None:
            retry_after = reply.header_retry_after()
        return reply_outcome(reply, redact, ok=False, error=reason, retry_after=retry_after)
    migrated = (params or {}).get("migrate_to_chat_id")
    if migrated is not None:
        reason += f" (the group is now the supergroup {migrated}: set chat_id: {migrated})"
        return reply_outcome(reply, redact, ok=False, error=reason, permanent=True)
    if 200 <= reply.status < 300:
        return reply_outcome(reply, redact, ok=False, error=f"{reason}: not a Bot API answer")
    permanent = reply.status in PERMANENT_STATUSES or not is_transient_status(reply.status)
    return reply_outcome(reply, redact, ok=False, error=reason, permanent=permanent)


class Telegram:
    kind: ClassVar[str] = "telegram"
    config_model: ClassVar[type[BaseModel]] = TelegramConfig

    def __init__(self, config: TelegramConfig) -> None:
        self.config = config

    def target(self) -> str:
        return f"telegram {self.config.chat_id}"

    def message(self, event: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.config
        body: dict[str, Any] = {
            "chat_id": cfg.chat_id,
            "text": build_text(event, template=cfg.template, fields=cfg.fields),
            "parse_mode": "HTML",
            "disable_web_page_preview": True,
        }
        if cfg.disable_notification:
            body["disable_notification"] = True
        if cfg.message_thread_id is not None:
            body["message_thread_id"] = cfg.message_thread_id
        return body

    async def send(self, request: SendRequest, ctx: SendContext) -> Outcome:
        cfg = self.config
        redact = Redactor()
        try:
            token = (await ctx.resolve_secret(request.project_id, cfg.bot_token)).strip()
        except LookupError as exc:
            return Outcome(ok=False, error=str(exc))
        redact.add(token)
        redact.add(token.partition(":")[2])  # the secret part, echoed on its own
        redact.add_url_credentials(cfg.resolved_api_base())
        if not TOKEN_RE.fullmatch(token):
            return Outcome(
                ok=False,
                error=f"bot_token ({cfg.bot_token}) does not hold a Telegram bot token (123456:ABC…)",
                permanent=True,
            )
        url = f"{cfg.resolved_api_base()}/bot{token}/sendMessage"
        reply = await post_json(ctx, url, self.message(request.event), timeout=cfg.timeout, redact=redact)
        return reply if isinstance(reply, Outcome) else classify_reply(reply, redact)
