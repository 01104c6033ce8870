"""Helpers shared by the chat destinations (``slack``, ``discord``, ``telegram``).

- secret references in configs (``ref:NAME`` / ``env:VAR``, never the credential itself);
- the event's envelope and its "key fields" (what a default message shows);
- ``$event.*`` templates whose substituted values are escaped for the target's markup, while the
  template's own text (the user's markup) is kept as written; in Slack and Discord markup, for
  the spot each placeholder sits in (:class:`Spot`: text, a code span, a link's URL or label);
- one bounded HTTP POST with the transport errors turned into :class:`Outcome` s, and every
  credential (tokens, webhook URLs) redacted from errors and excerpts.

(They live in the Slack package only because it is the one package of the three; nothing here is
Slack-specific.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from ingestlayer.delivery.egress import EgressDenied
from ingestlayer.delivery.retry import parse_retry_after
from ingestlayer.destinations.base import Outcome, SendContext, excerpt
from ingestlayer.destinations.shared import held_url_parts, percent_forms, secret_forms, url_credentials
from ingestlayer.pipeline.paths import get_path
from ingestlayer.pipeline.templates import (
    as_text,
    lookup,
    render_escaped,
    split_placeholders,
    strip_placeholders,
)
from ingestlayer.urlcheck import http_url_problem, url_characters_problem

# Enough for any chat API's JSON answer (Slack echoes the message back); bounded so a hostile
# endpoint cannot make a worker buffer gigabytes.
MAX_RESPONSE_BYTES = 256 * 1024
REDACTED = "<redacted>"
ELLIPSIS = "…"


def held_url_refused(reference: str, url: str) -> Outcome | None:
    """The ending of a delivery whose webhook URL, held in the secret ``reference``, holds a
    space or a control character: checked when used, since the URL is not in the configuration.
    The reference is named, never the URL (its token is the credential)."""
    problem = url_characters_problem(url, delimiters=False)
    if problem is None:
        return None
    return Outcome(ok=False, error=f"webhook_url ({reference}): the URL it holds {problem}", permanent=True)


def check_http_url(field_name: str, value: str) -> str:
    problem = http_url_problem(value)
    if problem:
        raise ValueError(f"{field_name} {problem}")
    return value.rstrip("/")


def check_paths(field_name: str, value: list[str] | None, limit: int) -> list[str] | None:
    if value is None:
        return None
    if not value:
        raise ValueError(f"{field_name} must list at least one payload field (or be left out)")
    if len(value) > limit:
        raise ValueError(f"{field_name}: at most {limit} fields fit in one message")
    for path in value:
        if not path or any(not part for part in path.split(".")) or any(c.isspace() for c in path):
            raise ValueError(f"{field_name}: {path!r} is not a payload path such as `plan` or `user.email`")
    return value


# ---- the event ------------------------------------------------------------------------------------


def envelope(event: Mapping[str, Any]) -> tuple[dict[str, Any], Mapping[str, Any]]:
    """(envelope, payload) of a ``SendRequest.event`` for template rendering."""
    env = {k: event.get(k) for k in ("type", "id", "occurred_at", "received_at", "source")}
    payload = event.get("payload")
    return env, payload if isinstance(payload, Mapping) else {}


def is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int, bool))


def key_fields(payload: Mapping[str, Any], paths: Sequence[str] | None, limit: int) -> list[tuple[str, str]]:
    """The fields a default message shows, as (label, text).

    With ``paths`` (the config's ``fields``): those, in order, skipping missing ones. Otherwise the
    first ``limit`` top-level fields holding a scalar (text, number, boolean), in payload order:
    nested objects, lists and nulls are left to templates.
    """
    out: list[tuple[str, str]] = []
    if paths is not None:
        for path in paths:
            value = get_path(payload, path)
            if value is not None:
                out.append((path, as_text(value)))
        return out[:limit]
    for key, value in payload.items():
        if len(out) >= limit:
            break
        if is_scalar(value):
            out.append((str(key), as_text(value)))
    return out


def render_template(source: str, event: Mapping[str, Any], escape: Callable[[str], str]) -> str:
    """Render ``$event.*`` placeholders with each value passed through ``escape``.

    The template's literal text is the user's own markup (Slack mrkdwn links, Telegram HTML tags)
    and is kept; only what comes from the event is escaped.
    """
    env, payload = envelope(event)
    return render_escaped(source, env, payload, escape)


class Spot(Enum):
    """Where a placeholder sits in a template's markup, which decides how its value is escaped."""

    TEXT = "text"
    CODE = "code"  # inside a code span or block: shown as it is, no escape of the markup applies
    URL = "url"  # the start of a link's URL: the value is taken as a URL (or its start)
    URL_PART = "url part"  # in a link's URL after the template's own text: a path segment, a query value
    LABEL = "label"  # Slack: a link's label, after the `|` that ends its URL


# (template text with each placeholder as one "x", the placeholders' offsets) -> their spots, in order
Locate = Callable[[str, Sequence[int]], list[Spot]]
Escapes = Mapping[Spot, Callable[[str], str]]

# What a backtick in a value becomes inside a code span, where a backtick would end the span and
# no escape is read: U+02CB MODIFIER LETTER GRAVE ACCENT, which looks like one.
CODE_BACKTICK = "\u02cb"
# Kept as written in a value that starts a link's URL: letters, digits, ``-._~`` and the
# delimiters of a URL's parts (``:/?#@&=+,;``), and ``%`` (what is already encoded). Everything
# else is percent-encoded (UTF-8 for non-ASCII, RFC 3986): spaces, ``| < > ( ) [ ] \ ` " '``...
URL_KEEP = ":/?#@&=+,;%"


def in_code(value: str) -> str:
    """A value inside a code span: only its backticks are changed (see CODE_BACKTICK)."""
    return value.replace("`", CODE_BACKTICK)


def in_url(value: str) -> str:
    """A value that starts a link's URL: percent-encoded but for URL_KEEP."""
    return quote(value, safe=URL_KEEP)


def in_url_part(value: str) -> str:
    """A value inside a link's URL, after the template's text: one component, so everything but
    letters, digits and ``-._~`` is percent-encoded (``/``, ``?``, ``&`` and ``#`` too: the value
    cannot add a path segment or a query parameter)."""
    return quote(value, safe="")


def backtick_run(text: str, start: int) -> int:
    """How many backticks there are in a row from ``start``."""
    end = start
    while end < len(text) and text[end] == "`":
        end += 1
    return end - start


def closing_run(text: str, start: int, length: int) -> int | None:
    """Where the next run of exactly ``length`` backticks from ``start`` begins: what closes a code
    span opened by such a run (None: the opening backticks are plain text)."""
    i = text.find("`", start)
    while i != -1:
        run = backtick_run(text, i)
        if run == length:
            return i
        i = text.find("`", i + run)
    return None


@dataclass(frozen=True)
class MarkupTemplate:
    """A chat template parsed once: its literal text, and each placeholder with its :class:`Spot`."""

    literals: tuple[str, ...]
    placeholders: tuple[tuple[str, Spot], ...]

    def render(self, event: Mapping[str, Any], escapes: Escapes) -> str:
        env, payload = envelope(event)
        out = [self.literals[0]]
        for (path, spot), literal in zip(self.placeholders, self.literals[1:], strict=True):
            out.append(escapes[spot](as_text(lookup(path, env, payload))))
            out.append(literal)
        return "".join(out)


@lru_cache(maxsize=1024)
def markup_template(source: str, locate: Locate) -> MarkupTemplate:
    """``source`` parsed, its placeholders' spots found by ``locate`` (once per template)."""
    literals, paths = split_placeholders(source)
    offsets: list[int] = []
    pos = 0
    for literal in literals[:-1]:
        pos += len(literal)
        offsets.append(pos)
        pos += 1
    spots = locate("x".join(literals), offsets)
    return MarkupTemplate(tuple(literals), tuple(zip(paths, spots, strict=True)))


def render_markup(source: str, event: Mapping[str, Any], locate: Locate, escapes: Escapes) -> str:
    """Render a Slack or Discord template: each value escaped for the spot it sits in."""
    return markup_template(source, locate).render(event, escapes)


def template_placeholders_only(source: str, replacement: str = "x") -> str:
    """The template with each placeholder replaced: what to validate the literal markup on."""
    return strip_placeholders(source, replacement)


def escape_fitting(text: str, limit: int, escape_char: Callable[[str], str]) -> str:
    """Escape ``text`` character by character, stopping (with "…") before ``limit`` is passed.

    An escape sequence is never cut in half, and the result is at most ``limit`` characters.
    """
    if limit <= 0:
        return ""
    pieces: list[str] = []
    used = 0
    for i, ch in enumerate(text):
        piece = escape_char(ch)
        rest_needs_ellipsis = i < len(text) - 1
        budget = limit - (len(ELLIPSIS) if rest_needs_ellipsis else 0)
        if used + len(piece) > budget:
            return "".join(pieces) + ELLIPSIS if limit >= len(ELLIPSIS) else "".join(pieces)
        pieces.append(piece)
        used += len(piece)
    return "".join(pieces)


def truncate(text: str, limit: int) -> str:
    """Plain text cut to ``limit`` characters, ending in "…" when cut."""
    if len(text) <= limit:
        return text
    return text[: max(limit - len(ELLIPSIS), 0)] + ELLIPSIS


# ---- redaction ------------------------------------------------------------------------------------


@dataclass
class Redactor:
    """Replaces credentials (tokens, webhook URLs and their secret path parts) in text."""

    secrets: list[str] = field(default_factory=list)

    def add(self, secret: str) -> None:
        """``secret`` as written and percent-encoded (a server may echo the path it was sent to
        encoded: a token's ``:`` as ``%3A``)."""
        for form in (secret, *percent_forms(secret)) if secret else ():
            if form not in self.secrets:
                self.secrets.append(form)
        # Longest first, so a URL goes before the token inside it.
        self.secrets.sort(key=len, reverse=True)

    def add_url(self, url: str) -> None:
        """A webhook URL is a credential: the URL, its path, and each long path segment, and
        what :meth:`add_url_credentials` takes."""
        for part in held_url_parts(url):
            self.add(part)
        self.add_url_credentials(url)

    def add_url_credentials(self, url: str | None) -> None:
        """What the dashboard masks in a URL (an ``api_base``, an ``avatar_url``): its password
        and ``user:password`` (sent as ``Authorization: Basic``), its query values; each in the
        forms a server may echo it in (:func:`~ingestlayer.destinations.shared.secret_forms`,
        none too short to name anything)."""
        for secret in url_credentials(url):
            for form in secret_forms(secret):
                self.add(form)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


# ---- HTTP -----------------------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def header_retry_after(self, *names: str) -> float | None:
        for name in names or ("Retry-After",):
            value = parse_retry_after(self.headers.get(name))
            if value is not None:
                return value
        return None


async def read_bounded(resp: aiohttp.ClientResponse, limit: int = MAX_RESPONSE_BYTES) -> bytes:
    """The response body, at most ``limit`` bytes of it."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)[:limit]


# What a POST with aiohttp raises when it gets no answer to classify (post_failure's cases).
POST_FAILURES = (TimeoutError, EgressDenied, aiohttp.ClientError, OSError, ValueError)


def post_failure(exc: Exception, timeout: float, redact: Callable[[str], str] = str) -> Outcome:
    """The failed Outcome of a POST that raised ``exc`` (one of ``POST_FAILURES``): a refusal
    by the egress policy is permanent, the rest may pass. Every message goes through ``redact``."""
    if isinstance(exc, TimeoutError):
        return Outcome(ok=False, error=f"timed out after {timeout:g}s")
    if isinstance(exc, EgressDenied):
        return Outcome(ok=False, error=redact(str(exc)), permanent=True)
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, EgressDenied):
            return Outcome(ok=False, error=redact(str(exc.os_error)), permanent=True)
        return Outcome(ok=False, error=redact(f"connection error: {exc.os_error or exc}"))
    return Outcome(ok=False, error=redact(f"{type(exc).__name__}: {exc}"))


async def post(
    ctx: SendContext,
    url: str,
    body: Any,
    *,
    timeout: float,
    redact: Redactor,
    headers: Mapping[str, str] | None = None,
) -> Reply | Outcome:
    """POST ``body`` as JSON; a :class:`Reply` when the server answered, else a failed Outcome.

    Errors never contain a credential: every message goes through ``redact``.
    """
    try:
        ctx.egress.check_url(url)
    except EgressDenied as exc:
        return Outcome(ok=False, error=redact(str(exc)), permanent=True)
    data = orjson.dumps(body)
    all_headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": ctx.user_agent,
        **(headers or {}),
    }
    try:
        async with ctx.session.post(
            url,
            data=data,
            headers=all_headers,
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            return Reply(resp.status, dict(resp.headers), await read_bounded(resp))
    except POST_FAILURES as exc:
        return post_failure(exc, timeout, redact)


def reply_outcome(
    reply: Reply,
    redact: Redactor,
    *,
    ok: bool,
    error: str | None = None,
    retry_after: float | None = None,
    permanent: bool = False,
) -> Outcome:
    """An Outcome for an answered request, the excerpt redacted and bounded."""
    return Outcome(
        ok=ok,
        status_code=reply.status,
        error=None if ok else redact(error or f"HTTP {reply.status}"),
        response_excerpt=excerpt(redact(reply.text())) if reply.body else None,
        retry_after=retry_after,
        permanent=permanent and not ok,
    )


def first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return truncate(line, limit)


def is_transient_status(status: int) -> bool:
    """Statuses worth retrying: timeouts, rate limits, server errors (and the odd redirect)."""
    return status in (408, 425, 429) or status >= 500 or 300 <= status < 400
