"""Build the email: multipart/alternative, a text part and an HTML part, from the event.

The Message-ID is derived from the delivery id, so every retry or replay of one delivery carries
the same id and receivers (and MTAs that dedupe) see one message. Values substituted into HTML
are escaped; the template's own markup is kept as written.
"""

from __future__ import annotations

import html
import re
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime
from functools import cache
from typing import Any

from ingestlayer.destinations.base import SendRequest
from ingestlayer.destinations.email.config import EmailConfig, address_of
from ingestlayer.pipeline.templates import Template, as_text, render_escaped

MAX_SUBJECT_CHARS = 250
MAX_KEY_FIELDS = 25
MAX_FIELD_CHARS = 500
_WS = re.compile(r"\s+")
# The C0 controls and DEL that _WS does not turn into a space (it takes \t \n \v \f \r and
# \x1c-\x1f): a header cannot carry them (RFC 5322), and a NUL or an ESC (a terminal escape
# sequence) from an event reached the Subject as is.
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x7f]")
_MSGID_SAFE = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]")


@cache
def default_helo_name() -> str:
    """This machine's host name (``gethostname`` does no DNS lookup, unlike ``getfqdn``)."""
    name = socket.gethostname() or "localhost"
    return name if re.fullmatch(r"[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*", name) else "localhost"


def envelope_of(request: SendRequest) -> dict[str, Any]:
    ev = request.event
    return {"type": ev.get("type"), "id": ev.get("id"), "occurred_at": ev.get("occurred_at")}


def payload_of(request: SendRequest) -> dict[str, Any]:
    payload = request.event.get("payload")
    return payload if isinstance(payload, dict) else {"value": payload}


def _short(value: Any) -> str:
    text = as_text(value)
    return text if len(text) <= MAX_FIELD_CHARS else text[: MAX_FIELD_CHARS - 1] + "…"


def key_fields(payload: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The payload's top-level fields as (name, text): what a default message shows."""
    return [(str(k), _short(v)) for k, v in list(payload.items())[:MAX_KEY_FIELDS]]


def _esc(text: str) -> str:
    return html.escape(text, quote=True)


def default_text(envelope: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    lines = [str(envelope.get("type") or "event"), ""]
    fields = key_fields(payload)
    width = max((len(k) for k, _ in fields), default=0)
    lines += [f"{k.ljust(width)}  {v}" for k, v in fields]
    if len(payload) > MAX_KEY_FIELDS:
        lines.append(f"… and {len(payload) - MAX_KEY_FIELDS} more fields")
    lines += ["", f"Event {envelope.get('id')} · occurred at {envelope.get('occurred_at')}"]
    return "\n".join(lines) + "\n"


def default_html(envelope: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
    rows = "".join(
        f'<tr><th align="left" style="padding:4px 12px 4px 0;color:#555;font-weight:600">{_esc(k)}</th>'
        f'<td style="padding:4px 0">{_esc(v)}</td></tr>'
        for k, v in key_fields(payload)
    )
    more = (
        f'<p style="color:#555">… and {len(payload) - MAX_KEY_FIELDS} more fields</p>'
        if len(payload) > MAX_KEY_FIELDS
        else ""
    )
    return (
        '<!DOCTYPE html><html><body style="font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif">'
        f'<h2 style="margin:0 0 12px">{_esc(str(envelope.get("type") or "event"))}</h2>'
        f'<table cellspacing="0" style="border-collapse:collapse">{rows}</table>{more}'
        f'<p style="color:#888;font-size:12px">Event {_esc(str(envelope.get("id")))} · occurred at '
        f"{_esc(str(envelope.get('occurred_at')))}</p></body></html>"
    )


def html_from_text(text: str) -> str:
    """An HTML version of a rendered text body: everything escaped, line breaks kept."""
    body = "<br>\n".join(_esc(line) for line in text.rstrip("\n").split("\n"))
    return (
        '<!DOCTYPE html><html><body style="font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif">'
        f"<p>{body}</p></body></html>"
    )


def header_text(text: str) -> str:
    """A header value from event data: control characters dropped, whitespace runs (line breaks
    too: no header injection) made one space."""
    return _WS.sub(" ", _CONTROLS.sub("", text)).strip()


def clean_subject(text: str) -> str:
    """One line of header text, at most 250 characters."""
    text = header_text(text)
    return text if len(text) <= MAX_SUBJECT_CHARS else text[: MAX_SUBJECT_CHARS - 1] + "…"


def without_nul(body: str) -> str:
    """A body without NUL, which no line of a message may hold (RFC 5322); other controls are
    allowed text there."""
    return body.replace("\x00", "")


def message_id(delivery_id: str, sender: str) -> str:
    """``<dlv_…@sender-domain>``: the same for every attempt of one delivery."""
    domain = address_of(sender).rpartition("@")[2].strip("[]") or "ingestlayer.invalid"
    return f"<{_MSGID_SAFE.sub('', delivery_id)}@{_MSGID_SAFE.sub('', domain)}>"


def build_message(cfg: EmailConfig, request: SendRequest, *, now: datetime | None = None) -> EmailMessage:
    envelope = envelope_of(request)
    payload = payload_of(request)
    text = (
        Template(cfg.template).render_text(envelope, payload)
        if cfg.template is not None
        else default_text(envelope, payload)
    )
    if cfg.html_template is not None:
        html_body = render_escaped(cfg.html_template, envelope, payload, _esc)
    elif cfg.template is not None:
        html_body = html_from_text(text)
    else:
        html_body = default_html(envelope, payload)

    msg = EmailMessage()
    msg["Subject"] = clean_subject(Template(cfg.subject).render_text(envelope, payload)) or header_text(
        request.event_type
    )
    msg["From"] = cfg.from_
    msg["To"] = ", ".join(cfg.to)
    if cfg.cc:
        msg["Cc"] = ", ".join(cfg.cc)
    if cfg.reply_to:
        msg["Reply-To"] = cfg.reply_to
    msg["Date"] = format_datetime(now or datetime.now(UTC))
    msg["Message-ID"] = message_id(request.delivery_id, cfg.from_)
    # RFC 3834: an automatic message; vacation responders must not answer it.
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-Ingestlayer-Delivery"] = request.delivery_id
    msg["X-Ingestlayer-Event"] = header_text(request.event_type)
    msg["X-Ingestlayer-Event-Id"] = header_text(request.event_id)
    msg["X-Ingestlayer-Attempt"] = str(request.attempt)
    msg.set_content(without_nul(text))
    msg.add_alternative(without_nul(html_body), subtype="html")
    return msg
