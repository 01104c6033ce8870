"""``source.match`` patterns: exact event types or ``*`` wildcards (``invoice.*``, ``*``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

# Whole values (fullmatch): "$" with match() let a type ending in a newline through.
_TYPE_RE = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")
_PATTERN_RE = re.compile(r"\*|[A-Za-z0-9_\-*]+(\.[A-Za-z0-9_\-*]+)*")


@functools.lru_cache(maxsize=4096)  # the same few types arrive again and again
def is_valid_event_type(value: str) -> bool:
    return len(value) <= 200 and bool(_TYPE_RE.fullmatch(value))


def invalid_type_message(value: str) -> str:
    """Why an event's type is refused: the same words from the API and from ``ingestlayer send``."""
    return f"type {value[:80]!r} is not a valid event name (letters, digits, _ and -, separated by dots)"


def is_valid_pattern(value: str) -> bool:
    return len(value) <= 200 and bool(_PATTERN_RE.fullmatch(value))


# Types remembered per project at most: event types are many only in a flood.
_SEEN_MAX = 10_000

T = TypeVar("T")


def remembered(memo: dict[str, T], event_type: str, compute: Callable[[str], T]) -> T:
    """``compute(event_type)``, kept in ``memo`` (a project sees the same few types again and
    again); the memo is emptied when it reaches its bound."""
    known = memo.get(event_type)
    if known is None:
        if len(memo) >= _SEEN_MAX:
            memo.clear()
        known = memo[event_type] = compute(event_type)
    return known


def wildcard_match(parts: Sequence[str], text: str) -> bool:
    """Whether ``text`` matches a pattern split at its ``*``s (two parts or more): the first part
    starts it, the last ends it, the others come in order between. Each part is placed at its
    first place after the one before, which is never worse than a later one, so this takes one
    pass. (As a backtracking regex, ``*a*a*a*a*b`` took 3.5 s on a 190-character type, in the
    ingest request.)"""
    first, last = parts[0], parts[-1]
    if len(text) < len(first) + len(last) or not (text.startswith(first) and text.endswith(last)):
        return False
    pos, end = len(first), len(text) - len(last)
    for part in parts[1:-1]:
        found = text.find(part, pos, end)
        if found < 0:
            return False
        pos = found + len(part)
    return True


class TypeMatcher:
    """Compiled list of patterns; ``*`` matches any run of characters, dots included. Its answers
    are remembered by the project, for all its pipelines at once (``CompiledProject.matching``):
    one memo each, 10,000 types in a flood against 333 wildcard pipelines held 70 MB."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._exact = frozenset(p for p in patterns if "*" not in p)
        self._wild = tuple(tuple(p.split("*")) for p in dict.fromkeys(patterns) if "*" in p)

    def __call__(self, event_type: str) -> bool:
        if event_type in self._exact:
            return True
        return any(wildcard_match(parts, event_type) for parts in self._wild)


# A listing's type filter: an event type, or a prefix of one ending in * ("invoice.*", "inv*",
# "*"); the API and the CLI's `events` take the same.
_TYPE_PREFIX = re.compile(r"[A-Za-z0-9_\-.]{0,200}\*")
TYPE_FILTER_RULE = "type must be an event type or a prefix of one ending in * (invoice.*)"


def is_type_filter(value: str) -> bool:
    """Whether ``value`` is a listing's type filter. Not a type that no event can have
    (``a..b``, ``.a``): it listed nothing, where a typo deserves to be told."""
    return is_valid_event_type(value) or bool(_TYPE_PREFIX.fullmatch(value))
