"""``source.match`` patterns: exact event types or ``*`` wildcards (``invoice.*``, ``*``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence

_TYPE_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_PATTERN_RE = re.compile(r"^(\*|[A-Za-z0-9_\-*]+(\.[A-Za-z0-9_\-*]+)*)$")


@functools.lru_cache(maxsize=4096)  # the same few types arrive again and again
def is_valid_event_type(value: str) -> bool:
    return len(value) <= 200 and bool(_TYPE_RE.match(value))


def is_valid_pattern(value: str) -> bool:
    return len(value) <= 200 and bool(_PATTERN_RE.match(value))


# Types remembered per matcher or project at most: event types are many only in a flood.
_SEEN_MAX = 10_000


def remembered(memo: dict[str, bool], event_type: str, compute: Callable[[str], bool]) -> bool:
    """``compute(event_type)``, kept in ``memo`` (a project sees the same few types again and
    again); the memo is emptied when it reaches its bound."""
    known = memo.get(event_type)
    if known is None:
        if len(memo) >= _SEEN_MAX:
            memo.clear()
        known = memo[event_type] = compute(event_type)
    return known


class TypeMatcher:
    """Compiled list of patterns; ``*`` matches any run of characters, dots included."""

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        exact = {p for p in patterns if "*" not in p}
        wild = [p for p in patterns if "*" in p]
        self._exact = frozenset(exact)
        self._seen: dict[str, bool] = {}  # wildcard results by type: a project has few types
        self._regex = (
            # The group keeps the anchor on every alternative, not only the last one.
            re.compile("(?:" + "|".join(".*".join(map(re.escape, p.split("*"))) for p in wild) + r")\Z")
            if wild
            else None
        )

    def __call__(self, event_type: str) -> bool:
        if event_type in self._exact:
            return True
        if self._regex is None:
            return False
        return remembered(self._seen, event_type, self._wild_match)

    def _wild_match(self, event_type: str) -> bool:
        assert self._regex is not None
        return self._regex.match(event_type) is not None
