"""``$event.*`` templates, used by ``transform`` and by destinations' message templates.

- ``$event.type``, ``$event.id``, ``$event.occurred_at``, ``$event.received_at``, ``$event.source``:
  the envelope; ``$event.payload.a.b``: the payload; any other ``$event.a.b``: the payload too.
- ``${event.a.b}`` delimits a placeholder inside a word.
- A template that is exactly one placeholder keeps the value's type (a number stays a number);
  inside text, values are rendered as text (JSON for objects and lists, empty for null).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from ingestlayer.pipeline.paths import get_path

ENVELOPE = frozenset({"type", "id", "occurred_at", "received_at", "source"})
_PLACEHOLDER = re.compile(r"\$\{event\.([A-Za-z0-9_.\-]+)\}|\$event\.([A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+)*)")


def lookup(path: str, envelope: Mapping[str, Any], payload: Mapping[str, Any]) -> Any:
    if path in ENVELOPE:
        return envelope.get(path)
    if path == "payload":
        # A copy: `transform: {set: {copy: $event.payload}}` would otherwise put the payload
        # inside itself, and the event could never be serialised again.
        return dict(payload)
    if path.startswith("payload."):
        return get_path(payload, path[8:])
    return get_path(payload, path)


def as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return orjson.dumps(value).decode()


class Template:
    """A template parsed once; ``render`` is called per event."""

    def __init__(self, source: str) -> None:
        self.source = source
        whole = _PLACEHOLDER.fullmatch(source)
        self._single = (whole.group(1) or whole.group(2)) if whole else None
        self._has_placeholders = bool(_PLACEHOLDER.search(source))

    def render(self, envelope: Mapping[str, Any], payload: Mapping[str, Any]) -> Any:
        if self._single is not None:
            return lookup(self._single, envelope, payload)
        if not self._has_placeholders:
            return self.source
        return _PLACEHOLDER.sub(
            lambda m: as_text(lookup(m.group(1) or m.group(2), envelope, payload)), self.source
        )

    def render_text(self, envelope: Mapping[str, Any], payload: Mapping[str, Any]) -> str:
        return as_text(self.render(envelope, payload))


def render_escaped(
    source: str, envelope: Mapping[str, Any], payload: Mapping[str, Any], escape: Callable[[str], str]
) -> str:
    """Render a template as text, escaping each substituted value (never the template's own text).

    For message formats with markup (HTML, Slack mrkdwn): what the user wrote is kept as markup,
    and nothing an event carries can inject any.
    """
    return _PLACEHOLDER.sub(
        lambda m: escape(as_text(lookup(m.group(1) or m.group(2), envelope, payload))), source
    )


def split_placeholders(source: str) -> tuple[list[str], list[str]]:
    """A template's literal pieces and the placeholder paths between them (one piece more than
    paths: ``"a $event.x b"`` is ``(["a ", " b"], ["x"])``)."""
    literals: list[str] = []
    paths: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(source):
        literals.append(source[pos : m.start()])
        paths.append(m.group(1) or m.group(2))
        pos = m.end()
    literals.append(source[pos:])
    return literals, paths


def strip_placeholders(source: str, replacement: str = "x") -> str:
    """The template with each placeholder replaced: its literal markup, to validate on its own."""
    return _PLACEHOLDER.sub(replacement, source)


def first_placeholder(text: str) -> str | None:
    """The first placeholder in ``text``, as written (``$event.url``, ``${event.id}``), or None."""
    m = _PLACEHOLDER.search(text)
    return m.group(0) if m else None


def render_value(value: Any, envelope: Mapping[str, Any], payload: Mapping[str, Any]) -> Any:
    """Render templates inside a JSON-like value (strings anywhere in dicts and lists)."""
    if isinstance(value, str):
        return Template(value).render(envelope, payload)
    if isinstance(value, list):
        return [render_value(v, envelope, payload) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, envelope, payload) for k, v in value.items()}
    return value
