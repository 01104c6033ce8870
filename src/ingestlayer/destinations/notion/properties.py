"""Event values → Notion property values, in the shapes ``pages.create`` accepts.

Each builder takes whatever the template produced (text, a number, a list, null…) and returns the
property value object; a value that does not fit the type becomes Notion's empty value (``null``,
``[]``, ``false``) instead of failing the delivery. Notion's limits are applied here: 2,000
characters (UTF-16 code units) per text object, 100 text objects, select names without commas and
at most 100 characters, 100 multi-select options, URLs of at most 2,000 characters and emails of
at most 200 (a longer one is sent empty, never cut: a cut URL or address is a wrong one); numbers
are sent as JSON can carry them (past 64 bits, as a float, as Notion stores every number).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from ingestlayer.pipeline.templates import as_text

MAX_TEXT_UNITS = 2000
MAX_TEXT_OBJECTS = 100
MAX_SELECT_CHARS = 100
MAX_OPTIONS = 100
MAX_URL_CHARS = 2000
MAX_EMAIL_CHARS = 200
# Integers JSON (orjson) can encode as they are; bigger ones go as floats.
MAX_INT = 2**63 - 1
# Epoch numbers above this are milliseconds (it is the year 5138 in seconds).
MS_THRESHOLD = 1e11
# The smallest number read as epoch seconds (1973-03-03): a year ("2024"), a count or a day of
# the month is not a moment in January 1970, and is left empty rather than stored as one.
EPOCH_MIN = 1e8
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(,\d{3})+(\.\d+)?$")
_INTEGER = re.compile(r"^[+-]?\d+$")
TRUE_WORDS = frozenset({"true", "yes", "y", "on", "1", "checked", "x"})


def _units(ch: str) -> int:
    return 2 if ord(ch) > 0xFFFF else 1


_ASTRAL = re.compile("[\U00010000-\U0010ffff]")  # two UTF-16 units each


def split_text(text: str) -> list[str]:
    """Chunks of at most 2,000 UTF-16 code units (Notion's measure), never splitting a character;
    at most 100 chunks (the rest is cut, with an ellipsis)."""
    if not _ASTRAL.search(text, 0, MAX_TEXT_UNITS * MAX_TEXT_OBJECTS):
        # One unit per character: slices, not a loop over every character of a long value.
        shown = MAX_TEXT_UNITS * MAX_TEXT_OBJECTS
        chunks = [text[i : i + MAX_TEXT_UNITS] for i in range(0, min(len(text), shown), MAX_TEXT_UNITS)]
        if len(text) > shown:
            chunks[-1] = chunks[-1][:-1] + "…"
        return chunks
    chunks = []
    current: list[str] = []
    used = 0
    for ch in text:
        n = _units(ch)
        if used + n > MAX_TEXT_UNITS:
            chunks.append("".join(current))
            current, used = [], 0
            if len(chunks) == MAX_TEXT_OBJECTS:
                last = chunks[-1]
                chunks[-1] = last[:-1] + "…" if _units(last[-1]) == 1 else last[:-2] + "…"
                return chunks
        current.append(ch)
        used += n
    if current:
        chunks.append("".join(current))
    return chunks


def rich_text(value: Any) -> list[dict[str, Any]]:
    return [{"type": "text", "text": {"content": chunk}} for chunk in split_text(as_text(value))]


def to_number(value: Any) -> int | float | None:
    """A number from a number or numeric text (``"12.5"``, ``"1,200"``); None otherwise."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if -MAX_INT <= value <= MAX_INT else float(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if _THOUSANDS.match(text):
        text = text.replace(",", "")
    if not _NUMBER.match(text):
        return None
    if _INTEGER.match(text) and len(text) <= 20:  # longer: a float (int() refuses 4,300+ digits)
        return to_number(int(text))
    number = float(text)
    return number if math.isfinite(number) else None


def select_name(value: Any) -> str | None:
    """A select option's name: text, commas (which Notion refuses) replaced, at most 100 chars."""
    text = " ".join(as_text(value).replace(",", " ").split())
    return text[:MAX_SELECT_CHARS] or None


def select_names(value: Any) -> list[str]:
    """Options from a list, or from text separated by commas; each once, in order."""
    items: list[Any] = value if isinstance(value, list) else as_text(value).split(",")
    seen: dict[str, None] = {}
    for item in items:
        name = select_name(item)
        if name:
            seen.setdefault(name, None)
    return list(seen)[:MAX_OPTIONS]


def to_date(value: Any) -> str | None:
    """ISO 8601 for Notion's ``date.start``: from ISO text (a date or a date-time) or epoch
    seconds (or milliseconds) from 1973 on; None when it is neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or abs(value) < EPOCH_MIN:
            return None
        seconds = value / 1000 if abs(value) > MS_THRESHOLD else value
        try:
            moment = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            return None
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    text = as_text(value).strip()
    if not text:
        return None
    try:
        if len(text) == 10:
            return date.fromisoformat(text).isoformat()
        moment = datetime.fromisoformat(text)
    except ValueError:
        number = to_number(text)
        return to_date(number) if number is not None else None
    return moment.isoformat().replace("+00:00", "Z") if moment.tzinfo else moment.isoformat()


def to_checkbox(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value != 0
    return as_text(value).strip().lower() in TRUE_WORDS


def _whole(value: Any, limit: int) -> str | None:
    """The text, or None when empty or past ``limit`` characters: a URL or an address cut to fit
    would point somewhere else, so Notion's empty value is sent instead."""
    text = as_text(value).strip()
    return text if 0 < len(text) <= limit else None


def to_url(value: Any) -> str | None:
    """The URL, or None past Notion's 2,000 characters."""
    return _whole(value, MAX_URL_CHARS)


def to_email(value: Any) -> str | None:
    """The address, or None past Notion's 200 characters."""
    return _whole(value, MAX_EMAIL_CHARS)


BUILDERS: dict[str, Callable[[Any], Any]] = {
    "title": rich_text,
    "rich_text": rich_text,
    "number": to_number,
    "select": lambda v: {"name": n} if (n := select_name(v)) else None,
    "multi_select": lambda v: [{"name": n} for n in select_names(v)],
    "date": lambda v: {"start": d} if (d := to_date(v)) else None,
    "checkbox": to_checkbox,
    "url": to_url,
    "email": to_email,
}


def property_value(kind: str, value: Any) -> dict[str, Any]:
    """``{kind: …}``: one entry of ``pages.create``'s ``properties``."""
    return {kind: BUILDERS[kind](value)}
