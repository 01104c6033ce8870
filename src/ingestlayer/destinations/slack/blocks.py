"""The Slack message for an event: Block Kit blocks plus the ``text`` fallback.

Default (no template), like the recipe card::

    ┌──────────────────────────────┐
    │ user.signed_up               │  header (plain_text, ≤ 150)
    │ email            plan        │  section fields (mrkdwn "*key*\\nvalue", ≤ 10, each ≤ 2000)
    │ ada@acme.com     pro         │
    │ ingestlayer · evt_01…        │  context
    └──────────────────────────────┘

With a template: one mrkdwn section (≤ 3000) and the same context line.

Slack's rules: in mrkdwn and in ``text``, ``&``, ``<`` and ``>`` are control characters and must be
sent as ``&amp;``, ``&lt;``, ``&gt;``; every event value is escaped that way (and never cut inside
an escape). ``plain_text`` objects are shown literally and are not escaped.

In a template, a value is escaped for where its placeholder sits (:func:`slack_spots`): in the
URL of a ``<url|label>`` it is percent-encoded (a ``|``, ``>`` or space cannot end the URL and
choose the label); in a label each ``|`` becomes the look-alike U+2223 (Slack documents no escape
for a pipe); in a code span each backtick becomes the look-alike U+02CB, which does not end it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ingestlayer.destinations.chat import (
    Escapes,
    Spot,
    backtick_run,
    closing_run,
    escape_fitting,
    in_code,
    in_url,
    in_url_part,
    key_fields,
    render_markup,
    truncate,
)

HEADER_LIMIT = 150
SECTION_TEXT_LIMIT = 3000
FIELD_TEXT_LIMIT = 2000
MAX_FIELDS = 10
CONTEXT_TEXT_LIMIT = 2000
# `text` may be longer (Slack truncates at 40,000), but as a notification fallback shorter is better.
FALLBACK_LIMIT = 3000

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_PARTIAL_ENTITY = re.compile(r"&[#A-Za-z0-9]*$")


def escape_char(ch: str) -> str:
    return _ESCAPES.get(ch, ch)


def escape(text: str) -> str:
    """Escape text for Slack mrkdwn / ``text``: ``&``, ``<`` and ``>`` only, as Slack asks."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# What a value's `|` becomes in a link's label: U+2223 DIVIDES, which looks like one. Slack ends a
# link's URL at its first `|` and documents no escape for one, so none is sent after it either.
LABEL_BAR = "\u2223"

TEMPLATE_ESCAPES: Escapes = {
    Spot.TEXT: escape,
    Spot.CODE: lambda value: escape(in_code(value)),
    Spot.URL: lambda value: escape(in_url(value)),
    Spot.URL_PART: lambda value: escape(in_url_part(value)),
    Spot.LABEL: lambda value: escape(value).replace("|", LABEL_BAR),
}


def slack_spots(text: str, offsets: Sequence[int]) -> list[Spot]:
    """Where each placeholder (at ``offsets`` in ``text``) sits in a template's mrkdwn.

    ``<…>`` (a link, a mention, ``<!here>``) is read before any formatting, as Slack parses it, also
    inside code: in it, what comes before the first ``|`` is the URL (or id), the rest the label.
    A run of backticks (one: a code span; three: a block) opens code, closed by the next run as
    long; with no such run the backticks are plain text.
    """
    placeholders = set(offsets)
    spots: dict[int, Spot] = {}
    code_end = -1  # where the closing backticks of the code span we are in begin
    i = 0
    while i < len(text):
        ch = text[i]
        close = text.find(">", i + 1) if ch == "<" else -1
        if close != -1:
            bar = text.find("|", i + 1, close)
            for at in range(i + 1, close):
                if at in placeholders:
                    if bar != -1 and at > bar:
                        spots[at] = Spot.LABEL
                    else:
                        spots[at] = Spot.URL if at == i + 1 else Spot.URL_PART
            i = close + 1
        elif ch == "`":
            run = backtick_run(text, i)
            if i == code_end:
                code_end = -1
            elif i > code_end:
                code_end = closing_run(text, i + run, run) or -1
            i += run
        else:
            if i in placeholders:
                spots[i] = Spot.CODE if i < code_end else Spot.TEXT
            i += 1
    return [spots[at] for at in offsets]


def render(template: str, event: Mapping[str, Any]) -> str:
    """A template rendered: each event value escaped for where it sits."""
    return render_markup(template, event, slack_spots, TEMPLATE_ESCAPES)


def escape_limited(text: str, limit: int) -> str:
    return escape_fitting(text, limit, escape_char)


def cut_mrkdwn(text: str, limit: int) -> str:
    """Cut mrkdwn to ``limit`` characters without leaving half an entity or half a ``<link|…>``."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    cut = _PARTIAL_ENTITY.sub("", cut)
    open_at = cut.rfind("<")
    if open_at > cut.rfind(">"):
        cut = cut[:open_at]
    return cut + "…"


def plain(text: str, limit: int) -> dict[str, Any]:
    return {"type": "plain_text", "text": truncate(text, limit) or " ", "emoji": True}


def mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def field_text(label: str, value: str) -> str:
    """``*label*\\nvalue``, escaped, within Slack's 2000 characters per field."""
    head = "*" + escape_limited(label, 200) + "*\n"
    return head + (escape_limited(value, FIELD_TEXT_LIMIT - len(head)) or " ")


def context_block(event: Mapping[str, Any]) -> dict[str, Any]:
    text = f"ingestlayer · {escape(str(event.get('id') or ''))}"
    return {"type": "context", "elements": [mrkdwn(cut_mrkdwn(text, CONTEXT_TEXT_LIMIT))]}


def fallback_text(event_type: str, fields: Sequence[tuple[str, str]]) -> str:
    parts = ", ".join(f"{k}: {v}" for k, v in fields)
    text = f"{event_type}: {parts}" if parts else event_type
    return escape_limited(text, FALLBACK_LIMIT) or escape(event_type)


def build_message(
    event: Mapping[str, Any], *, template: str | None = None, fields: Sequence[str] | None = None
) -> dict[str, Any]:
    """``{"text", "blocks"}`` for ``chat.postMessage`` or an incoming webhook."""
    event_type = str(event.get("type") or "event")
    payload = event.get("payload")
    if not isinstance(payload, Mapping):
        payload = {}
    if template is not None:
        rendered = render(template, event).strip() or escape(event_type)
        text = cut_mrkdwn(rendered, SECTION_TEXT_LIMIT)
        return {
            "text": cut_mrkdwn(rendered, FALLBACK_LIMIT),
            "blocks": [{"type": "section", "text": mrkdwn(text)}, context_block(event)],
        }
    shown = key_fields(payload, fields, MAX_FIELDS)
    blocks: list[dict[str, Any]] = [{"type": "header", "text": plain(event_type, HEADER_LIMIT)}]
    if shown:
        blocks.append({"type": "section", "fields": [mrkdwn(field_text(k, v)) for k, v in shown]})
    blocks.append(context_block(event))
    return {"text": fallback_text(event_type, shown), "blocks": blocks}
