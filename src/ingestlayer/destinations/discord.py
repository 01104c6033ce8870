"""``discord``: execute a webhook (``POST {webhook_url}?wait=true``) with one embed per event.

Example::

    destinations:
      - discord: { webhook_url: ref:discord-alerts }
      - discord:
          webhook_url: env:DISCORD_WEBHOOK_URL
          template: "**$event.feature** used $event.count times by `$event.user_id`"
          username: ingestlayer
          color: "#5865F2"

The embed: ``title`` the event type, ``description`` the rendered template (or, without one,
``fields`` listing the event's key fields inline), ``timestamp`` the event's ``occurred_at``, and
a footer with the event id. Discord's limits are kept by cutting text safely: title 256,
description 4096, at most 25 fields (name 256, value 1024), 6000 characters in all; ``content``
2000. Event values are escaped so Discord shows them as sent (no stray bold, links or mentions),
and ``allowed_mentions`` is empty, so nothing in an event can ping ``@everyone``. In a template a
value is escaped for where its placeholder sits (:func:`discord_spots`): with backslashes in
text; inside a code span, where Discord shows backslashes, only its backticks change (to the
look-alike U+02CB); in a masked link's URL, ``[label](url)``, it is percent-encoded (``_`` stays
``_``, and a ``)`` cannot end the link).

Requests name API v10 (see API_VERSION). Answers: 2xx delivered; 429 retried after the body's
``retry_after`` (seconds, a float; else the ``X-RateLimit-Reset-After`` / ``Retry-After``
headers); 400 (invalid form body), 401, 403 and 404
(unknown webhook) dead at once with Discord's message; 5xx retried. The webhook URL holds the
webhook's token: it never appears in errors or the attempt log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from yarl import URL

from ingestlayer.delivery.retry import parse_retry_after
from ingestlayer.destinations.base import MAX_TIMEOUT_SECONDS, Outcome, SendContext, SendRequest
from ingestlayer.destinations.chat import (
    ELLIPSIS,
    Escapes,
    Redactor,
    Reply,
    Spot,
    backtick_run,
    check_http_url,
    check_paths,
    closing_run,
    escape_fitting,
    held_url_refused,
    in_code,
    in_url,
    in_url_part,
    is_transient_status,
    key_fields,
    post,
    render_markup,
    reply_outcome,
    truncate,
)
from ingestlayer.destinations.shared import check_reference

TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
MAX_FIELDS = 25
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 2048
EMBED_TOTAL_LIMIT = 6000
CONTENT_LIMIT = 2000
USERNAME_LIMIT = 80
EMPTY = "—"  # Discord rejects empty field names and values

# A backslash before any of these shows the character itself (Discord markdown escapes).
_MARKDOWN = frozenset("\\*_~`|>#[]<")
_COLOR = re.compile(r"^#?([0-9A-Fa-f]{6})$")
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 413})


def escape_char(ch: str) -> str:
    return "\\" + ch if ch in _MARKDOWN else ch


def escape(text: str) -> str:
    """Escape Discord markdown so a value shows exactly as sent."""
    return "".join(escape_char(ch) for ch in text)


def escape_limited(text: str, limit: int) -> str:
    return escape_fitting(text, limit, escape_char)


TEMPLATE_ESCAPES: Escapes = {
    Spot.TEXT: escape,
    Spot.CODE: in_code,
    Spot.URL: in_url,
    Spot.URL_PART: in_url_part,
    Spot.LABEL: escape,  # Discord's link labels are text: never found by discord_spots
}


def link_url_end(text: str, start: int) -> int:
    """Where the ``)`` that ends a masked link's URL starting at ``start`` is (pairs of
    parentheses inside it are kept), or -1."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            if not depth:
                return i
            depth -= 1
    return -1


def discord_spots(text: str, offsets: Sequence[int]) -> list[Spot]:
    """Where each placeholder (at ``offsets`` in ``text``) sits in a template's Discord markdown.

    A run of backticks opens a code span (or block) closed by the next run as long: nothing inside
    is markdown. ``[label](url)`` is a masked link: its label is text, its URL runs to the ``)``
    that closes it. A backslash makes the character after it plain text.
    """
    placeholders = set(offsets)
    spots: dict[int, Spot] = {}
    open_brackets = 0
    i = 0
    while i < len(text):
        ch = text[i]
        if i in placeholders:
            spots[i] = Spot.TEXT
        elif ch == "\\" and i + 1 not in placeholders:
            i += 1
        elif ch == "`":
            run = backtick_run(text, i)
            end = closing_run(text, i + run, run)
            if end is not None:
                spots.update((at, Spot.CODE) for at in range(i + run, end) if at in placeholders)
                i = end
            i += run
            continue
        elif ch == "[":
            open_brackets += 1
        elif ch == "]" and open_brackets:
            open_brackets -= 1
            end = link_url_end(text, i + 2) if text.startswith("(", i + 1) else -1
            if end != -1:
                for at in range(i + 2, end):
                    if at in placeholders:
                        starts = not text[i + 2 : at].strip(" <")
                        spots[at] = Spot.URL if starts else Spot.URL_PART
                i = end
        i += 1
    return [spots[at] for at in offsets]


def render(template: str, event: Mapping[str, Any]) -> str:
    """A ``template`` or ``content`` rendered: each event value escaped for where it sits."""
    return render_markup(template, event, discord_spots, TEMPLATE_ESCAPES)


def cut_markdown(text: str, limit: int) -> str:
    """Cut rendered markdown to ``limit`` without ending in a lone escaping backslash."""
    if len(text) <= limit:
        return text
    cut = text[: max(limit - len(ELLIPSIS), 0)]
    trailing = len(cut) - len(cut.rstrip("\\"))
    if trailing % 2:
        cut = cut[:-1]
    return cut + ELLIPSIS


class DiscordConfig(BaseModel):
    """Post each event to a Discord channel through a webhook (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    webhook_url: str = Field(
        description="The webhook URL as a reference, `ref:NAME` or `env:VAR` (it holds the webhook's token)."
    )
    template: str | None = Field(
        default=None,
        min_length=1,
        max_length=DESCRIPTION_LIMIT,
        description="Embed description with `$event.*` placeholders (Discord markdown); "
        "default: the key fields as embed fields.",
    )
    content: str | None = Field(
        default=None,
        min_length=1,
        max_length=CONTENT_LIMIT,
        description="Message text above the embed, with `$event.*` placeholders (mentions never ping).",
    )
    fields: list[str] | None = Field(
        default=None,
        description="Payload fields the default embed lists (at most 25); default: the first 25 scalars.",
    )
    username: str | None = Field(
        default=None, min_length=1, max_length=USERNAME_LIMIT, description="Overrides the webhook's name."
    )
    avatar_url: str | None = Field(default=None, description="Overrides the webhook's avatar (http(s) URL).")
    color: int | str | None = Field(
        default=None, description="Embed colour: `#5865F2` or an integer 0 to 16777215."
    )
    timeout: float = Field(
        default=10.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds to wait for Discord's answer."
    )

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str) -> str:
        return check_reference("webhook_url", v, "webhook URL")

    @field_validator("fields")
    @classmethod
    def _fields(cls, v: list[str] | None) -> list[str] | None:
        return check_paths("fields", v, MAX_FIELDS)

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        if v is not None and ("discord" in v.lower() or "clyde" in v.lower()):
            raise ValueError("username may not contain 'discord' or 'clyde' (Discord refuses it)")
        return v

    @field_validator("avatar_url")
    @classmethod
    def _avatar(cls, v: str | None) -> str | None:
        return None if v is None else check_http_url("avatar_url", v)

    @field_validator("color", mode="before")
    @classmethod
    def _color(cls, v: Any) -> int | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise ValueError("color must be `#RRGGBB` or an integer 0 to 16777215")
        if isinstance(v, str):
            m = _COLOR.fullmatch(v.strip())
            if not m:
                raise ValueError("color must be `#RRGGBB` or an integer 0 to 16777215")
            return int(m.group(1), 16)
        if not 0 <= v <= 0xFFFFFF:
            raise ValueError("color must be `#RRGGBB` or an integer 0 to 16777215")
        return v

    @model_validator(mode="after")
    def _shape(self) -> DiscordConfig:
        if self.template is not None and self.fields is not None:
            raise ValueError("`fields` shapes the default embed; with a `template`, leave it out")
        return self


def build_embed(
    event: Mapping[str, Any], *, template: str | None, fields: list[str] | None, color: int | None
) -> dict[str, Any]:
    """One embed within Discord's limits (each one, and 6000 characters in all)."""
    event_type = str(event.get("type") or "event")
    payload = event.get("payload")
    if not isinstance(payload, Mapping):
        payload = {}
    title = truncate(event_type, TITLE_LIMIT)
    footer = truncate(f"ingestlayer · {event.get('id') or ''}", FOOTER_LIMIT)
    remaining = EMBED_TOTAL_LIMIT - len(title) - len(footer)
    embed: dict[str, Any] = {"title": title}
    if template is not None:
        rendered = render(template, event).strip() or escape(event_type)
        embed["description"] = cut_markdown(rendered, min(DESCRIPTION_LIMIT, remaining))
    else:
        out: list[dict[str, Any]] = []
        for label, value in key_fields(payload, fields, MAX_FIELDS):
            name = truncate(label, FIELD_NAME_LIMIT).strip() or EMPTY
            room = min(FIELD_VALUE_LIMIT, remaining - len(name))
            if room < 8:  # not even a few characters of the value would fit
                break
            # Discord refuses a value of only whitespace ("This field is required"), as it does
            # an empty one.
            text = escape_limited(value, room) if value.strip() else EMPTY
            out.append({"name": name, "value": text, "inline": len(value) <= 40})
            remaining -= len(name) + len(text)
        if out:
            embed["fields"] = out
    occurred = event.get("occurred_at")
    if isinstance(occurred, str) and occurred:
        embed["timestamp"] = occurred
    embed["footer"] = {"text": footer}
    if color is not None:
        embed["color"] = color
    return embed


def embed_size(embed: Mapping[str, Any]) -> int:
    """Characters Discord counts toward the 6000 limit."""
    size = len(embed.get("title", "")) + len(embed.get("description", ""))
    size += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
    size += len(embed.get("footer", {}).get("text", ""))
    size += len(embed.get("author", {}).get("name", ""))
    return size


def _flatten_errors(node: Any, path: str = "") -> list[str]:
    """Discord's nested ``errors`` object as ``embeds.0.title: message`` lines."""
    out: list[str] = []
    if isinstance(node, dict):
        for err in node.get("_errors", []) if isinstance(node.get("_errors"), list) else []:
            if isinstance(err, dict):
                out.append(f"{path or 'body'}: {err.get('message') or err.get('code')}")
        for key, child in node.items():
            if key != "_errors":
                out.extend(_flatten_errors(child, f"{path}.{key}" if path else str(key)))
    return out


def classify_reply(reply: Reply, redact: Redactor) -> Outcome:
    if 200 <= reply.status < 300:
        return reply_outcome(reply, redact, ok=True)
    body = reply.json()
    info = body if isinstance(body, dict) else {}
    message = str(info.get("message") or "").strip()
    if reply.status == 429:
        retry_after: float | None = None
        raw = info.get("retry_after")
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            retry_after = max(float(raw), 0.0)
        if retry_after is None:
            retry_after = parse_retry_after(reply.headers.get("X-RateLimit-Reset-After"))
        if retry_after is None:
            retry_after = reply.header_retry_after()
        scope = "global " if info.get("global") else ""
        return reply_outcome(
            reply, redact, ok=False, error=f"Discord {scope}rate limit (HTTP 429)", retry_after=retry_after
        )
    reason = f"HTTP {reply.status}"
    if message:
        reason += f": {message}"
    if "code" in info:
        reason += f" (code {info['code']})"
    details = _flatten_errors(info.get("errors"))
    if details:
        reason += " — " + "; ".join(details[:3])
    permanent = reply.status in PERMANENT_STATUSES or not is_transient_status(reply.status)
    retry = reply.header_retry_after() if reply.status == 503 else None
    return reply_outcome(reply, redact, ok=False, error=reason, retry_after=retry, permanent=permanent)


# The API version requests name. Discord shows webhook URLs without one (/api/webhooks/…), which
# it serves as its default version, v6: there a 429's retry_after (and Retry-After) are
# milliseconds, read here as seconds (a wait of 0.6 s became 600 s). From v8 on they are
# seconds; versions before v8 are deprecated or discontinued.
API_VERSION = 10
_WEBHOOK_PATH = re.compile(r"^(?P<base>.*?/api)(?:/v(?P<version>\d+))?(?P<rest>/webhooks/.*)$")


def pinned_version(url: URL) -> URL:
    """``url`` asking for API_VERSION when it names no version, or one before v8."""
    found = _WEBHOOK_PATH.match(url.raw_path)
    if found is None or (found["version"] is not None and int(found["version"]) >= 8):
        return url
    # with_path drops the query (a thread_id, say): it is put back.
    return url.with_path(f"{found['base']}/v{API_VERSION}{found['rest']}", encoded=True).with_query(url.query)


class Discord:
    kind: ClassVar[str] = "discord"
    config_model: ClassVar[type[BaseModel]] = DiscordConfig

    def __init__(self, config: DiscordConfig) -> None:
        self.config = config

    def target(self) -> str:
        return f"discord webhook ({self.config.webhook_url})"

    def message(self, event: Mapping[str, Any]) -> dict[str, Any]:
        cfg = self.config
        color = cfg.color if isinstance(cfg.color, int) else None
        body: dict[str, Any] = {
            "embeds": [build_embed(event, template=cfg.template, fields=cfg.fields, color=color)],
            "allowed_mentions": {"parse": []},
        }
        if cfg.content is not None:
            rendered = render(cfg.content, event).strip()
            if rendered:
                body["content"] = cut_markdown(rendered, CONTENT_LIMIT)
        if cfg.username:
            body["username"] = cfg.username
        if cfg.avatar_url:
            body["avatar_url"] = cfg.avatar_url
        return body

    async def send(self, request: SendRequest, ctx: SendContext) -> Outcome:
        cfg = self.config
        redact = Redactor()
        try:
            url = (await ctx.resolve_secret(request.project_id, cfg.webhook_url)).strip()
        except LookupError as exc:
            return Outcome(ok=False, error=str(exc))
        redact.add_url(url)
        redact.add_url_credentials(cfg.avatar_url)
        try:
            target = URL(url)
            if target.scheme not in ("http", "https") or not target.host:
                raise ValueError
            target = pinned_version(target).update_query(wait="true")
        except ValueError:
            return Outcome(
                ok=False,
                error=f"webhook_url ({cfg.webhook_url}) does not hold an http(s) URL",
                permanent=True,
            )
        refused = held_url_refused(cfg.webhook_url, url)
        if refused is not None:
            return refused
        redact.add(str(target))
        reply = await post(ctx, str(target), self.message(request.event), timeout=cfg.timeout, redact=redact)
        return reply if isinstance(reply, Outcome) else classify_reply(reply, redact)
