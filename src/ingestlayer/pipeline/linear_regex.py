"""``matches /re/`` in linear time: a Python pattern rewritten for RE2.

Python's ``re`` backtracks, so :mod:`ingestlayer.pipeline.regex_safety` has to bound how much of
a long string a pattern with unbounded repeats reads, and a match past that point was missed:
``message matches /error.*timeout/`` read only the first 2,048 characters of a stack trace.
RE2 (``google-re2``) runs in time linear in the text whatever the pattern, so it can read the
whole string.

The pattern keeps Python's meaning: it is parsed by ``re``'s own parser (``re._parser``, as
regex_safety does) and written out in RE2's syntax node by node, with Python's Unicode classes
spelled out as the code point ranges Python itself matches (``\\w``, ``\\d``, ``\\s``), anchors
made explicit, and every literal as a code point. Where RE2 cannot say the same thing
(backreferences, lookarounds, possessive repeats, a ``$`` followed by more pattern, a negated
category inside a negated class, repeat counts over 16, the ASCII flag) :func:`compile_linear`
answers None and the caller keeps Python's engine. RE2's ``\\b`` knows only ASCII letters, so a
pattern with ``\\b`` or ``\\B`` is run by RE2 only on ASCII text (:meth:`LinearSearch.answers_for`).
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import re2

_parser: Any
_c: Any
try:  # private, but the parser `re.compile` itself runs
    _parser = importlib.import_module("re._parser")
    _c = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - a future Python: Python's engine keeps every pattern
    _parser = None

# A counted repeat is copied out in RE2's program: ``.{1,1000}x`` makes 9,000 instructions,
# and on a 256 KB field RE2's DFA runs out of memory and falls back to an engine that took
# seconds. Bounds over this (as regex_safety counts a bound over 16 as unbounded) stay with
# Python's engine and its window; so do programs over _MAX_PROGRAM (Python's Unicode classes
# take about 1,300 instructions each).
_MAX_COUNT: Final = 16
_MAX_PROGRAM: Final = 20_000
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # a refused pattern is answered with None, not printed on stderr
_OPTIONS.never_capture = True  # only whether there is a match is asked
# RE2's default memory budget per pattern (8 MB) is kept: under it, its DFA ran out on a long
# field for patterns that fit in _MAX_PROGRAM and fell back to an engine seconds slower.


class _Untranslatable(Exception):
    """RE2 cannot express this part of the pattern with Python's meaning."""


@dataclass(frozen=True)
class LinearSearch:
    """``found(text)``: whether the pattern matches somewhere in ``text``, in linear time, for
    a text it :meth:`answers_for`."""

    found: Callable[[str], bool]
    ascii_only: bool  # the pattern has ``\\b`` or ``\\B``
    re2_pattern: str

    def answers_for(self, text: str) -> bool:
        """Whether :attr:`found` answers as Python would for ``text``. RE2's word boundaries
        know only ASCII letters, and Python's ``\\B`` never matches in an empty string."""
        return not self.ascii_only or (text.isascii() and text != "")


def compile_linear(pattern: str, flags: int) -> LinearSearch | None:
    """RE2's search for a Python pattern (already known to compile with ``re``) with flags
    among ``re.I``, ``re.M`` and ``re.S``; None where RE2 cannot match exactly what Python does."""
    if _parser is None:
        return None
    try:
        parsed = _parser.parse(pattern, flags)
        if parsed.state.flags & (re.A | re.L):  # (?a) or (?L): other classes than Unicode's
            return None
        writer = _Writer()
        body = writer.sequence(list(parsed), parsed.state.flags, final=True)
    except (_Untranslatable, re.error, RecursionError):
        return None
    # Case folding and `.` are RE2's flags too; anchors are written out explicitly instead.
    prefix = "".join(f for flag, f in ((re.I, "i"), (re.S, "s")) if parsed.state.flags & flag)
    translated = (f"(?{prefix})" if prefix else "") + body
    try:
        compiled = re2.compile(translated.encode(), _OPTIONS)
    except re2.error:  # e.g. a program over RE2's memory budget
        return None
    if compiled.programsize > _MAX_PROGRAM:
        return None
    search = compiled.search

    def found(text: str) -> bool:
        # Bytes in, so the wrapper skips mapping byte offsets back to characters. A lone
        # surrogate cannot be UTF-8: passed through as bytes no class of ours matches.
        return search(text.encode("utf-8", "surrogatepass")) is not None

    return LinearSearch(found, writer.boundaries, translated)


def _point(code: int) -> str:
    return f"\\x{{{code:x}}}"


def _ranges(codes: Iterable[int]) -> str:
    """Sorted code points as the inside of a class: ``\\x{30}-\\x{39}\\x{5f}``."""
    out: list[str] = []
    start = prev = -2
    for code in codes:
        if code != prev + 1:
            if start >= 0:
                out.append(_point(start) if start == prev else f"{_point(start)}-{_point(prev)}")
            start = code
        prev = code
    if start >= 0:
        out.append(_point(start) if start == prev else f"{_point(start)}-{_point(prev)}")
    return "".join(out)


@functools.cache
def _category(name: str) -> str:
    """The code points Python's ``\\w``, ``\\d`` or ``\\s`` matches in a str pattern, by its own
    Unicode tables (RE2's ``\\p{..}`` follow a newer Unicode and differ for recent scripts)."""
    test: Callable[[str], bool] = {
        "word": lambda ch: ch.isalnum() or ch == "_",
        "digit": str.isdecimal,
        "space": str.isspace,
    }[name]
    return _ranges(code for code in range(0x110000) if test(chr(code)))


class _Writer:
    def __init__(self) -> None:
        self.boundaries = False  # \b or \B used: RE2's hold for ASCII text only

    def sequence(self, items: list[tuple[Any, Any]], flags: int, *, final: bool) -> str:
        """``final``: nothing can follow this sequence in the pattern (see ``$`` below)."""
        out = []
        for index, (op, av) in enumerate(items):
            last = final and index == len(items) - 1
            out.append(self.item(op, av, flags, final=last))
        return "".join(out)

    def item(self, op: Any, av: Any, flags: int, *, final: bool) -> str:
        c = _c
        if op is c.LITERAL:
            return _point(av)
        if op is c.NOT_LITERAL:
            return f"[^{_point(av)}]"
        if op is c.ANY:
            return "."
        if op is c.IN:
            return self.char_class(av)
        if op is c.BRANCH:
            return "(?:" + "|".join(self.sequence(list(p), flags, final=final) for p in av[1]) + ")"
        if op is c.SUBPATTERN:
            _group, add, remove, p = av
            if (add | remove) & ~(re.I | re.M | re.S | re.X | re.U):
                raise _Untranslatable("ASCII or LOCALE flags")
            inner = (flags | add) & ~remove
            on = "".join(f for flag, f in ((re.I, "i"), (re.S, "s")) if add & flag)
            off = "".join(f for flag, f in ((re.I, "i"), (re.S, "s")) if remove & flag)
            mode = f"{on}-{off}" if off else on
            return f"(?{mode}:" + self.sequence(list(p), inner, final=final) + ")"
        if op in (c.MAX_REPEAT, c.MIN_REPEAT):
            low, high, p = av
            if low > _MAX_COUNT or (high is not c.MAXREPEAT and high > _MAX_COUNT):
                raise _Untranslatable(f"a repeat count over {_MAX_COUNT}")
            # Whatever follows a repeated `$` is the repeat's next iteration too.
            inner = self.sequence(list(p), flags, final=final and high in (0, 1))
            count = f"{{{low},}}" if high is c.MAXREPEAT else f"{{{low},{high}}}"
            return f"(?:{inner}){count}" + ("?" if op is c.MIN_REPEAT else "")
        if op is c.AT:
            return self.anchor(av, flags, final=final)
        # GROUPREF, GROUPREF_EXISTS, ASSERT, ASSERT_NOT, ATOMIC_GROUP, POSSESSIVE_REPEAT: RE2
        # has no backreferences or lookarounds, and possessive repeats change what can match.
        raise _Untranslatable(str(op))

    def anchor(self, at: Any, flags: int, *, final: bool) -> str:
        c = _c
        multiline = bool(flags & re.M)
        if at is c.AT_BEGINNING:
            return "(?m:^)" if multiline else r"\A"
        if at is c.AT_BEGINNING_STRING:
            return r"\A"
        if at is c.AT_END_STRING:
            return r"\z"
        if at is c.AT_END:
            if multiline:
                return "(?m:$)"
            # Python's `$` also matches before a newline that ends the string. RE2 has no
            # lookahead, so that newline is consumed: the same answer only when nothing after
            # the `$` could want it.
            if not final:
                raise _Untranslatable("$ before more pattern")
            return r"(?:\n?\z)"
        if at in (c.AT_BOUNDARY, c.AT_NON_BOUNDARY):
            self.boundaries = True
            return r"\b" if at is c.AT_BOUNDARY else r"\B"
        raise _Untranslatable(str(at))

    def char_class(self, items: list[tuple[Any, Any]]) -> str:
        c = _c
        negate = bool(items) and items[0][0] is c.NEGATE
        members = items[1:] if negate else items
        inside: list[str] = []
        negated_categories: list[str] = []
        for op, av in members:
            if op is c.LITERAL:
                inside.append(_point(av))
            elif op is c.RANGE:
                inside.append(f"{_point(av[0])}-{_point(av[1])}")
            elif op is c.CATEGORY:
                name, positive = _CATEGORIES[av]
                if positive:
                    inside.append(_category(name))
                else:
                    negated_categories.append(_category(name))
            else:
                raise _Untranslatable(str(op))
        if negated_categories:
            if negate:  # [^\D...]: an intersection, which RE2's classes cannot hold
                raise _Untranslatable("a negated category in a negated class")
            # `[\s\S]`, `[\Wx]`: a union, as an alternation of classes.
            pieces = [f"[^{category}]" for category in negated_categories]
            if inside:
                pieces.append("[" + "".join(inside) + "]")
            return pieces[0] if len(pieces) == 1 else "(?:" + "|".join(pieces) + ")"
        if not inside:  # Python refuses an empty class; kept for completeness
            raise _Untranslatable("an empty class")
        return ("[^" if negate else "[") + "".join(inside) + "]"


_CATEGORIES: Final[dict[Any, tuple[str, bool]]] = (
    {
        _c.CATEGORY_WORD: ("word", True),
        _c.CATEGORY_NOT_WORD: ("word", False),
        _c.CATEGORY_DIGIT: ("digit", True),
        _c.CATEGORY_NOT_DIGIT: ("digit", False),
        _c.CATEGORY_SPACE: ("space", True),
        _c.CATEGORY_NOT_SPACE: ("space", False),
    }
    if _parser is not None
    else {}
)
