"""Keep a user's ``matches /re/`` from stalling the worker where it runs on Python's engine:
refuse patterns that backtrack exponentially, and bound how much of a string the others read.
Most patterns with unbounded repeats run on RE2 instead and read the whole string
(:mod:`ingestlayer.pipeline.linear_regex`); what is left here is what RE2 cannot run with
Python's meaning (lookarounds, backreferences, ``\\b`` on text that is not ASCII).

Python's ``re`` is a backtracking engine with no timeout, and it holds the GIL while it runs:
``(a+)+$`` takes minutes on 30 characters, and the router's event loop (every project's events)
waits that long. So, when a pipeline is applied:

* a repeated group whose iterations could split the same text more than one way is refused:
  a repeat inside a repeat (``(a+)+``, ``(\\w+\\s?)*``) unless something each iteration must match
  cannot be eaten by the inner repeats (``(\\.\\w+)+`` is fine: the ``.`` marks every iteration),
  and a repeated alternation whose branches can start alike (``(a|aa)+``);
* what is left costs up to about ``n ** (k + 1)`` steps for a string of ``n`` characters and
  ``k`` repeats (``*``, ``+``, ``{n,}``, ``{m,n}``; a short bound costs as much once there are
  several: ``.{1,16}`` four times over tries 16**4 ways at every position), so
  :func:`search_window` caps ``n`` by ``k``: the whole string without repeats (the search is
  then linear), else the first 2,048 characters with one, 512 with two, 128 with three, down to
  16. The worst cases measured on a 100 KB field stay near 0.1 s.

The check reads the pattern with ``re._parser``, the parser ``re`` itself uses; should a later
Python change it, the check stands aside (nothing refused) and the tightest window applies.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import Any, Final

from ingestlayer.stored_config import reading_stored

_sre_parser: Any
_c: Any
try:  # private, but the same parser `re.compile` runs; see the module docstring
    _sre_parser = importlib.import_module("re._parser")
    _c = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - a future Python
    _sre_parser = None

CharTest = Callable[[str], bool]

# By the number of repeats (index), how many characters a search reads; past the end,
# the last entry. None: the whole string.
SEARCH_WINDOWS: Final[tuple[int | None, ...]] = (None, 2048, 512, 128, 64, 32, 24, 16)
# Characters tried when asking whether two character classes overlap, with every literal and
# range end the pattern names (and their other case) added per pattern.
_SAMPLES: Final = "".join(map(chr, range(0x250))) + "\u00a0\u2028\u3000\u0663\u0967\u4e00\u05d0\u0627я😀"


class UnsafePattern(ValueError):
    """The pattern could backtrack exponentially; the message says which part and why."""


def unsafe_window() -> int | None:
    """For a configuration stored before (see :mod:`ingestlayer.stored_config`; an earlier
    version let unsafe patterns through), the window an unsafe pattern gets: a few characters,
    where exponential backtracking still ends in milliseconds. Otherwise None: refuse it."""
    return SEARCH_WINDOWS[-1] if reading_stored() else None


def check(pattern: str, flags: int) -> int:
    """Raise :class:`UnsafePattern` for a pattern that can backtrack exponentially; otherwise
    return its number of repeats (for :func:`search_window`)."""
    if _sre_parser is None:  # pragma: no cover
        return len(SEARCH_WINDOWS)
    try:
        parsed = _sre_parser.parse(pattern, flags)
    except re.error:
        raise
    except Exception:  # pragma: no cover - the parser changed under us
        return len(SEARCH_WINDOWS)
    ignore_case = bool(parsed.state.flags & re.IGNORECASE)
    samples = _samples(parsed.data)
    repeats = _Walker(ignore_case, samples).walk(list(parsed.data))
    ways = _ways(list(parsed.data))
    if ways > MAX_WAYS:
        raise UnsafePattern(
            f"alternatives and optional parts one after another, such as (a|a)(a|a)… or a?a?…, "
            f"give a search {'more than ' if ways > _WAYS_CAP else ''}{ways:,} ways to try at every "
            f"position (at most {MAX_WAYS:,}); use fewer of them"
        )
    # Each doubling of the ways to try costs as much as one more repeat: a shorter window.
    return repeats + ways.bit_length() - 1


# How many ways a pattern may give the search to try at each position through its alternatives
# and optional parts (`?`), whatever their length: `(a|a)` 20 times over is 2**20, and
# Python's engine, which holds the event loop, tried them all (1.4 s on 40 characters; the time
# doubles with each more). Unbounded repeats are bounded by the window instead.
MAX_WAYS: Final = 1024
_WAYS_CAP: Final = 1 << 40  # counting stops here: big enough to be refused, small to compute


def _ways(items: list[Any]) -> int:
    """An upper bound on the ways ``items``, matched one after another, can be tried at a
    position through alternatives and optional parts; other repeats count their body once (the
    window bounds what they cost)."""
    total = 1
    for op, av in items:
        if op is _c.BRANCH:
            here = sum(_ways(list(branch)) for branch in av[1])
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            low, high, body = av
            inner = _ways(list(body))
            if op is _c.POSSESSIVE_REPEAT:
                here = 1  # never tried again
            elif high > 1:  # `*`, `+`, `{2,5}`: counted as repeats, their cost is the window's
                here = inner
            else:  # `?`: without its body, or one of its body's ways
                here = inner + (1 if low == 0 else 0) if high == 1 else 1
        elif op is _c.GROUPREF_EXISTS:
            here = sum(_ways(list(branch)) for branch in av[1:] if branch is not None)
        else:
            children = _children(op, av)  # a group, an atomic group, a lookaround: one body
            here = _ways(list(children[0])) if children else 1
        total = min(total * max(here, 1), _WAYS_CAP + 1)
    return total


def search_window(repeats: int) -> int | None:
    """How many characters of a string a pattern with this many repeats may read."""
    return SEARCH_WINDOWS[min(repeats, len(SEARCH_WINDOWS) - 1)]


def _samples(items: Any) -> str:
    extra: set[str] = set()
    for op, av in _leaves(items):
        if op in (_c.LITERAL, _c.NOT_LITERAL):
            extra.add(chr(av))
        elif op is _c.IN:
            for sub_op, sub_av in av:
                if sub_op is _c.LITERAL:
                    extra.add(chr(sub_av))
                elif sub_op is _c.RANGE:
                    extra.update((chr(sub_av[0]), chr(sub_av[1])))
    more = {variant for ch in extra for variant in (ch, ch.lower(), ch.upper()) if len(variant) == 1}
    return _SAMPLES + "".join(sorted(more))


def _leaves(items: Any) -> Iterator[tuple[Any, Any]]:
    """Every (op, argument) in a parsed pattern, nested ones included."""
    for op, av in items:
        yield op, av
        for child in _children(op, av):
            yield from _leaves(child)


def _sequence(items: Any) -> Iterator[tuple[Any, Any]]:
    """The items matched one after another, groups opened: ``(\\.\\w+)`` is ``\\.`` then ``\\w+``."""
    for op, av in items:
        if op is _c.SUBPATTERN:
            yield from _sequence(av[3])
        else:
            yield op, av


def _children(op: Any, av: Any) -> list[Any]:
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        return [av[2]]
    if op is _c.SUBPATTERN:
        return [av[3]]
    if op is _c.ATOMIC_GROUP:
        return [av]
    if op is _c.BRANCH:
        return list(av[1])
    if op in (_c.ASSERT, _c.ASSERT_NOT):
        return [av[1]]
    if op is _c.GROUPREF_EXISTS:
        return [branch for branch in av[1:] if branch is not None]
    return []


class _Walker:
    def __init__(self, ignore_case: bool, samples: str) -> None:
        self.ignore_case = ignore_case
        self.samples = samples

    def walk(self, items: list[Any]) -> int:
        """Check every repeat in ``items``; return how many there are."""
        count = 0
        for op, av in items:
            if op in (_c.MAX_REPEAT, _c.MIN_REPEAT):
                _, high, body = av
                # `*`, `+`, `{n,}`, and `{1,1000}` costs as much; a short bound too, once there
                # are several: `.{1,16}` four times over tries 16**4 ways at every position.
                if high > 1:
                    count += 1
                if high > 1:
                    self.check_repeat(list(body))
            for child in _children(op, av):
                count += self.walk(list(child))
        return count

    def check_repeat(self, body: list[Any]) -> None:
        """Refuse a repeated ``body`` whose iterations could divide a text in several ways."""
        for op, av in _leaves(body):
            if op is _c.BRANCH and self.branches_overlap(av[1]):
                raise UnsafePattern(
                    "a repeated group whose alternatives can start alike, such as (a|aa)+, "
                    "backtracks exponentially; make the alternatives start differently"
                )
        inner = [av for op, av in _leaves(body) if op in (_c.MAX_REPEAT, _c.MIN_REPEAT) and av[1] > 1]
        if not inner:
            return
        eaten = [test for repeat in inner for test in self.char_tests(list(repeat[2]))]
        for op, av in _sequence(body):  # a required single character every iteration must match
            own = self.char_test(op, av)
            if own is not None and not any(self.overlap(own, other) for other in eaten):
                return
        raise UnsafePattern(
            "a repeat inside a repeat, such as (a+)+ or (\\w+\\s?)*, backtracks exponentially; "
            "give each repetition a required separator the inner repeat cannot match, "
            "such as (\\.\\w+)+, or drop the outer repeat"
        )

    def branches_overlap(self, branches: list[Any]) -> bool:
        if len(branches) < 2:
            return False
        firsts: list[CharTest | None] = [self.first_char(list(b)) for b in branches]
        if any(first is None for first in firsts):
            return True
        # Per character, not per pair of branches: a thousand alternatives stay cheap.
        return any(sum(1 for first in firsts if first and first(ch)) > 1 for ch in self.samples)

    def first_char(self, items: list[Any]) -> CharTest | None:
        """What the first character of a match must satisfy; None when unknown or empty."""
        if not items:
            return None
        op, av = items[0]
        if op is _c.SUBPATTERN:
            return self.first_char(list(av[3]) + items[1:])
        if op in (_c.MAX_REPEAT, _c.MIN_REPEAT) and av[0] >= 1:
            return self.first_char(list(av[2]))
        return self.char_test(op, av)

    def char_tests(self, items: list[Any]) -> list[CharTest]:
        """One test per single-character item anywhere in ``items`` (anything else: any char)."""
        tests: list[CharTest] = []
        for op, av in _leaves(items):
            test = self.char_test(op, av)
            if test is not None:
                tests.append(test)
            elif op in (_c.GROUPREF, _c.GROUPREF_EXISTS):
                tests.append(lambda ch: True)  # a back-reference can hold anything
        return tests

    def char_test(self, op: Any, av: Any) -> CharTest | None:
        fold = self.ignore_case
        if op is _c.LITERAL:
            target = chr(av)
            return (lambda ch: ch.lower() == target.lower()) if fold else (lambda ch: ch == target)
        if op is _c.NOT_LITERAL:
            target = chr(av)
            return (lambda ch: ch.lower() != target.lower()) if fold else (lambda ch: ch != target)
        if op is _c.ANY:
            return lambda ch: True
        if op is _c.IN:
            return self.class_test(av)
        return None

    def class_test(self, items: list[Any]) -> CharTest:
        negate = bool(items) and items[0][0] is _c.NEGATE
        tests: list[CharTest] = []
        for op, av in items[1:] if negate else items:
            if op is _c.LITERAL:
                tests.append(_range_test(av, av))
            elif op is _c.RANGE:
                tests.append(_range_test(av[0], av[1]))
            elif op is _c.CATEGORY:
                tests.append(_category_test(av))
            else:  # pragma: no cover - nothing else sits in a class today
                tests.append(lambda ch: True)
        fold = self.ignore_case

        def test(ch: str) -> bool:
            variants = (ch, ch.lower(), ch.upper()) if fold else (ch,)
            hit = any(t(v) for v in variants if len(v) == 1 for t in tests)
            return hit != negate

        return test

    def overlap(self, a: CharTest, b: CharTest) -> bool:
        return any(a(ch) and b(ch) for ch in self.samples)


_CATEGORY_PATTERNS: Final = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
}


def _range_test(low: int, high: int) -> CharTest:
    return lambda ch: low <= ord(ch) <= high


def _category_test(category: Any) -> CharTest:
    source = _CATEGORY_PATTERNS.get(str(category))
    if source is None:
        return lambda ch: True
    compiled = re.compile(source)
    return lambda ch: compiled.fullmatch(ch) is not None
