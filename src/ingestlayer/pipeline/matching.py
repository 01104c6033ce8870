"""``source.match`` patterns: exact event types or ``*`` wildcards (``invoice.*``, ``*``)."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

_TYPE_RE = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")
_PATTERN_RE = re.compile(r"^(\*|[A-Za-z0-9_\-*]+(\.[A-Za-z0-9_\-*]+)*)$")


@functools.lru_cache(maxsize=4096)  # the same few types arrive again and again
def is_valid_event_type(value: str) -> bool:
    return len(value) <= 200 and bool(_TYPE_RE.match(value))


def is_valid_pattern(value: str) -> bool:
    return len(value) <= 200 and bool(_PATTERN_RE.match(value))


_SEEN_MAX = 10_000


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
        known = self._seen.get(event_type)
        if known is None:
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()  # bounded: event types are many only in a flood
            known = self._seen[event_type] = self._regex.match(event_type) is not None
        return known
