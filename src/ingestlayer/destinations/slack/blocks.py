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
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ingestlayer.destinations.chat import (
    escape_fitting,
    key_fields,
    render_template,
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
        rendered = render_template(template, event, escape).strip() or escape(event_type)
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
