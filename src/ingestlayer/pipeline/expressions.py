"""The pipeline expression language used by ``filter.match`` steps and per-destination ``when`` conditions.

A small, safe language: the text is parsed once by a hand-written recursive-descent parser and compiled
into a tree of small closures; nothing is ever passed to ``eval``/``exec``.  Examples::

    urgency = critical
    feature in {export, api, webhook}
    (plan = "free" or plan = trial) and not payload.customer.tier = enterprise
    event.type startswith "feature." and event.occurred_at >= "2024-01-01"
    email matches /@example\\.com$/i

Grammar (EBNF).  Keywords and operator words are case-insensitive; whitespace between tokens is ignored::

    expression = or_expr ;
    or_expr    = and_expr , { "or" , and_expr } ;
    and_expr   = unary , { "and" , unary } ;
    unary      = "not" , unary | primary ;
    primary    = "(" , or_expr , ")" | comparison ;
    comparison = path , ( "exists"
                        | ( "=" | "==" | "!=" | "<" | "<=" | ">" | ">=" ) , scalar
                        | [ "not" ] , "in" , set
                        | ( "contains" | "startswith" | "endswith" ) , scalar
                        | "matches" , regex ) ;
    path       = segment , { "." , segment } ;
    segment    = seg_char , { seg_char } ;                     (* seg_char: A-Z a-z 0-9 _ - *)
    set        = "{" , [ scalar , { "," , scalar } , [ "," ] ] , "}" ;
    scalar     = string | number | "true" | "false" | "null" | bare_word ;
    string     = '"' , { char | escape } , '"' | "'" , { char | escape } , "'" ;
    escape     = "\\" , ( "\\" | '"' | "'" | "/" | "n" | "r" | "t" | "u" , 4 * hex_digit ) ;
    number     = [ "-" ] , digits , [ "." , digits ] , [ ( "e" | "E" ) , [ "+" | "-" ] , digits ] ;
    bare_word  = ( letter | "_" ) , { letter | digit | "_" | "." | ":" | "-" } ;   (* not and/or/not *)
    regex      = "/" , { regex_char | "\\/" } , "/" , { "i" | "m" | "s" } ;

Semantics:

* ``event.<path>`` reads the envelope; ``payload.<path>`` and every other path (``plan``, ``customer.tier``)
  read the payload.  Segments walk nested mappings; where a segment is missing, a key holding the dots
  itself (``{"context.ip": …}``) is tried; a missing key or walking into a non-mapping gives null.
  ``datetime``/``date`` values are seen as ISO-8601 strings (UTC offset written as ``Z``).
* ``=``/``==``: numbers compare numerically (``1 == 1.0``), a bool never equals a number, and strings are
  never coerced (``"5" != 5``).  ``!=`` is the exact negation of ``=``, so a missing field ``= null``.
* ``<``, ``<=``, ``>``, ``>=``: number with number or string with string (lexicographic, which orders
  ISO-8601 timestamps); any other pairing, null included, is false.
* ``in {…}``: a string matches a member equal to it or to its last dotted segment (``csv.export`` is in
  ``{export}``); numbers match numerically; a list matches if any element does.  ``not in`` is its negation.
* ``contains``: substring of a string, or an element of a list.  ``startswith``/``endswith``: strings only.
* ``matches /re/flags``: ``re.search`` on strings, flags ``i``, ``m``, ``s``; compiled at compile time.
  Patterns that backtrack exponentially (``(a+)+``) are refused, and a pattern with unbounded repeats
  reads only the start of a long string (2,048 characters with one ``*``/``+``, fewer with more), so
  no event can stall the worker: see :mod:`ingestlayer.pipeline.regex_safety`.
* ``exists``: the field is present and not null.
* Precedence: ``not`` > ``and`` > ``or``.  Evaluation never raises: anything unexpected is simply false.
"""

from __future__ import annotations

import logging
import operator
import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, TypeAlias

from ingestlayer.pipeline import regex_safety
from ingestlayer.pipeline.linear_regex import LinearSearch, compile_linear
from ingestlayer.pipeline.paths import get_parts

log = logging.getLogger("ingestlayer.pipeline")

__all__ = ["EvalContext", "Expression", "ExpressionError", "compile_expression"]

Scalar: TypeAlias = str | int | float | bool | None
Test: TypeAlias = Callable[[Any], bool]
Predicate: TypeAlias = Callable[["EvalContext"], bool]
Getter: TypeAlias = Callable[["EvalContext"], Any]

OPERATOR_HINT = (
    "an operator (=, !=, <, <=, >, >=, in, not in, contains, startswith, endswith, matches, exists)"
)
MAX_NESTING = 100

_SEGMENT_RE = re.compile(r"[A-Za-z0-9_-]+")
_BARE_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")
# Python's limit on reading an integer from text (sys.get_int_max_str_digits()).
MAX_INTEGER_DIGITS = 4300
_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_TOKEN_RE = re.compile(r"[A-Za-z0-9_.:-]+")
_FLAGS_RE = re.compile(r"[A-Za-z]*")
_BARE_CHARS = frozenset(string.ascii_letters + string.digits + "_.:-")
_SYMBOL_OPERATORS = ("==", "!=", "<=", ">=", "=", "<", ">")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "/": "/", "n": "\n", "r": "\r", "t": "\t"}
_KEYWORD_VALUES: dict[str, Scalar] = {"true": True, "false": False, "null": None}
_RESERVED = frozenset({"and", "or", "not"})
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL}
_ORDERINGS: dict[str, Callable[[Any, Any], Any]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _describe(text: str, position: int) -> str:
    """A short rendering of what sits at ``position``, for error messages."""
    if position >= len(text):
        return "end of expression"
    match = _TOKEN_RE.match(text, position)
    token = match.group() if match else text[position]
    return repr(token if len(token) <= 24 else token[:24] + "...")


def _beyond_ascii(text: str, pos: int) -> bool:
    return pos < len(text) and not text[pos].isascii() and text[pos].isalpha()


def _quote_hint(expected: str, text: str, start: int) -> str:
    """Bare words are ASCII (the grammar): said, rather than only "expected a value"."""
    word = re.split(r"[\s,}]", text[start:], maxsplit=1)[0][:40]
    return f'{expected} (a word beyond ASCII must be quoted: "{word}")'


class ExpressionError(ValueError):
    """Raised at compile time for malformed expressions.

    ``position`` is the 0-based character offset of the problem in ``expression``, ``expected`` says what
    the parser wanted there, and ``found`` describes what it saw instead.
    """

    def __init__(self, expression: str, position: int, expected: str, found: str | None = None) -> None:
        self.expression = expression
        self.position = position
        self.expected = expected
        self.found = found if found is not None else _describe(expression, position)
        super().__init__(f"at position {position}: expected {expected}, found {self.found}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.expression, self.position, self.expected, self.found))


@dataclass(slots=True)
class EvalContext:
    """What a predicate is evaluated against: the (possibly enriched) payload and the event envelope.

    Not frozen: one is made for every event a pipeline filters or routes by ``when``, and a
    frozen dataclass's constructor (``object.__setattr__`` per field) cost as much as evaluating
    a simple expression. Predicates only read it."""

    payload: Mapping[str, Any]
    event: Mapping[str, Any]


class Expression:
    """A compiled expression: call it with an :class:`EvalContext` to get a bool.  Never raises."""

    __slots__ = ("_fields", "_predicate", "source")
    source: str

    def __init__(self, source: str, predicate: Predicate, fields: frozenset[str]) -> None:
        self.source = source
        self._predicate = predicate
        self._fields = fields

    def __call__(self, ctx: EvalContext) -> bool:
        try:
            return self._predicate(ctx) is True
        except Exception:  # defensive: leaves already swallow errors
            return False

    def fields(self) -> frozenset[str]:
        """Field paths referenced, canonicalised as ``payload.<path>`` or ``event.<path>``."""
        return self._fields

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"


def compile_expression(text: str) -> Expression:
    """Parse and compile ``text`` once; raises :class:`ExpressionError` naming the position on bad input."""
    parser = _Parser(text)
    predicate = parser.parse()
    return Expression(text, predicate, frozenset(parser.fields))


def _normalize(value: Any) -> Any:
    """Present dates and datetimes as ISO-8601 strings, with a zero UTC offset written as ``Z``."""
    if isinstance(value, date):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    return value


def _make_getter(segments: list[str]) -> tuple[Getter, str]:
    """Compile a path into a lookup function, returning it with the canonical field name."""
    root = "payload"
    if len(segments) > 1 and segments[0] in ("event", "payload"):
        root, segments = segments[0], segments[1:]
    keys = tuple(segments)
    use_event = root == "event"

    def get(ctx: EvalContext) -> Any:
        root: Any = ctx.event if use_event else ctx.payload
        current = root
        for key in keys:
            if (type(current) is dict or isinstance(current, Mapping)) and key in current:
                current = current[key]
            elif len(keys) > 1:
                # The slow path, after a segment was missing: keys that hold dots themselves
                # (``{"context.ip": …}`` answers ``context.ip``), as steps' paths find them.
                return _normalize(get_parts(root, keys))
            else:
                return None
        return _normalize(current)

    return get, f"{root}.{'.'.join(keys)}"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _leaf(get: Getter, test: Test) -> Predicate:
    def evaluate(ctx: EvalContext) -> bool:
        try:
            return test(get(ctx)) is True
        except Exception:
            return False

    return evaluate


def _negate(inner: Predicate) -> Predicate:
    return lambda ctx: not inner(ctx)


def _combine(parts: list[Predicate], conjunction: bool) -> Predicate:
    """``and`` (conjunction) or ``or`` of the parts, short-circuiting left to right."""
    if len(parts) == 1:
        return parts[0]
    items, reducer = tuple(parts), all if conjunction else any
    return lambda ctx: reducer(part(ctx) for part in items)


def _equals(literal: Scalar) -> Test:
    if literal is None:
        return lambda value: value is None
    if isinstance(literal, bool):
        return lambda value: value is literal
    if isinstance(literal, str):
        return lambda value: isinstance(value, str) and value == literal
    return lambda value: _is_number(value) and value == literal


def _ordering(symbol: str, literal: str | int | float) -> Test:
    compare = _ORDERINGS[symbol]
    if isinstance(literal, str):
        return lambda value: isinstance(value, str) and bool(compare(value, literal))
    return lambda value: _is_number(value) and bool(compare(value, literal))


def _membership(members: list[Scalar]) -> Test:
    strings = frozenset(m for m in members if isinstance(m, str))
    numbers = frozenset(m for m in members if _is_number(m))
    bools = frozenset(m for m in members if isinstance(m, bool))
    has_null = any(m is None for m in members)

    def scalar_in(value: Any) -> bool:
        if isinstance(value, str):
            if value in strings:
                return True
            # "csv.export" is in {export}; "v1." has no last segment to match (not even {''}).
            dot = value.rfind(".")
            return 0 <= dot < len(value) - 1 and value[dot + 1 :] in strings
        if value is None:
            return has_null
        if isinstance(value, bool):
            return value in bools
        if isinstance(value, int | float):
            return value in numbers
        return False

    def test(value: Any) -> bool:
        if isinstance(value, list | tuple):
            return any(scalar_in(item) for item in value)
        return scalar_in(value)

    return test


def _contains(literal: Scalar) -> Test:
    equals = _equals(literal)

    def test(value: Any) -> bool:
        if isinstance(value, str):
            return isinstance(literal, str) and literal in value
        if isinstance(value, list | tuple):
            return any(equals(item) for item in value)
        return False

    return test


def _low_surrogate(text: str, pos: int) -> int | None:
    """The code of a ``\\uDC00``-``\\uDFFF`` escape at ``pos``, if one is there."""
    digits = text[pos + 2 : pos + 6]
    if text[pos : pos + 2] != "\\u" or len(digits) != 4 or not all(c in string.hexdigits for c in digits):
        return None
    code = int(digits, 16)
    return code if 0xDC00 <= code < 0xE000 else None


class _Parser:
    """Recursive-descent parser over the raw text (lexing is context-sensitive, so there is no token list)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0
        self.fields: set[str] = set()

    def error(self, expected: str, position: int | None = None, found: str | None = None) -> ExpressionError:
        return ExpressionError(self.text, self.pos if position is None else position, expected, found)

    def skip_ws(self) -> int:
        text, pos = self.text, self.pos
        while pos < len(text) and text[pos].isspace():
            pos += 1
        self.pos = pos
        return pos

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def keyword(self) -> str:
        """The lower-cased word at the cursor (after whitespace), not consumed; ``""`` if there is none."""
        self.skip_ws()
        match = _SEGMENT_RE.match(self.text, self.pos)
        return match.group().lower() if match else ""

    def enter(self, position: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise self.error(f"at most {MAX_NESTING} nested parentheses or 'not's", position)

    def parse(self) -> Predicate:
        if not self.text.strip():
            self.skip_ws()
            raise self.error("a condition such as 'plan = free'")
        predicate = self.parse_or()
        if self.skip_ws() < len(self.text):
            raise self.error("'and', 'or' or end of expression")
        return predicate

    def parse_or(self) -> Predicate:
        parts = [self.parse_and()]
        while self.keyword() == "or":
            self.pos += 2
            parts.append(self.parse_and())
        return _combine(parts, conjunction=False)

    def parse_and(self) -> Predicate:
        parts = [self.parse_unary()]
        while self.keyword() == "and":
            self.pos += 3
            parts.append(self.parse_unary())
        return _combine(parts, conjunction=True)

    def parse_unary(self) -> Predicate:
        if self.keyword() != "not":
            return self.parse_primary()
        self.enter(self.pos)
        self.pos += 3
        inner = self.parse_unary()
        self.depth -= 1
        return _negate(inner)

    def parse_primary(self) -> Predicate:
        self.skip_ws()
        if self.peek() != "(":
            return self.parse_comparison()
        opening = self.pos
        self.enter(opening)
        self.pos += 1
        predicate = self.parse_or()
        self.depth -= 1
        if self.skip_ws() >= len(self.text):
            raise self.error("a closing ')' for this '('", opening, "end of expression")
        if self.peek() != ")":
            raise self.error("'and', 'or' or ')'")
        self.pos += 1
        return predicate

    def parse_path(self) -> list[str]:
        segments: list[str] = []
        while True:
            match = _SEGMENT_RE.match(self.text, self.pos)
            if match is None:
                raise self.error("a field name after '.'" if segments else "a field name, 'not' or '('")
            segments.append(match.group())
            self.pos = match.end()
            if self.peek() != ".":
                return segments
            self.pos += 1

    def parse_comparison(self) -> Predicate:
        self.skip_ws()
        get, name = _make_getter(self.parse_path())
        self.fields.add(name)
        op_pos = self.skip_ws()
        for symbol in _SYMBOL_OPERATORS:
            if self.text.startswith(symbol, op_pos):
                self.pos += len(symbol)
                return self.parse_symbol_comparison(get, symbol)
        word = self.keyword()
        self.pos += len(word)
        if word == "exists":
            return _leaf(get, lambda value: value is not None)
        if word == "in":
            return _leaf(get, self.parse_set("in"))
        if word == "not":
            if self.keyword() != "in":
                raise self.error("'in' after 'not'")
            self.pos += 2
            return _negate(_leaf(get, self.parse_set("not in")))
        if word == "contains":
            literal, _ = self.parse_scalar("a value after 'contains'")
            return _leaf(get, _contains(literal))
        if word in ("startswith", "endswith"):
            literal, at = self.parse_scalar(f"a string after '{word}'")
            if not isinstance(literal, str):
                raise self.error(f"a string after '{word}' (quote numbers and keywords)", at)
            method = str.startswith if word == "startswith" else str.endswith
            return _leaf(get, lambda value: isinstance(value, str) and method(value, literal))
        if word == "matches":
            found = self.parse_regex()
            return _leaf(get, lambda value: isinstance(value, str) and found(value))
        raise self.error(OPERATOR_HINT, op_pos)

    def parse_symbol_comparison(self, get: Getter, symbol: str) -> Predicate:
        literal, at = self.parse_scalar(f"a value after '{symbol}'")
        if symbol in ("=", "=="):
            return _leaf(get, _equals(literal))
        if symbol == "!=":
            return _negate(_leaf(get, _equals(literal)))
        if literal is None or isinstance(literal, bool):
            raise self.error(f"a number or a string after '{symbol}'", at)
        return _leaf(get, _ordering(symbol, literal))

    def parse_scalar(self, expected: str) -> tuple[Scalar, int]:
        """Parse a string, number, keyword or bare word; returns it with its start position."""
        start = self.skip_ws()
        text = self.text
        if self.peek() in ('"', "'"):
            return self.parse_string(), start
        match = _NUMBER_RE.match(text, start)
        if match is not None:
            end = match.end()
            if end < len(text) and text[end] in _BARE_CHARS:
                raise self.error("a number (quote values that start with a digit)", start)
            self.pos = end
            token = match.group()
            is_float = "." in token or "e" in token or "E" in token
            if not is_float and len(token.lstrip("-")) > MAX_INTEGER_DIGITS:
                # Python reads no longer integer (and no event holds one beyond 64 bits): said
                # here with its position, not as int()'s ValueError, a 500 from the API.
                found = f"an integer of {len(token.lstrip('-'))} digits"
                raise self.error(f"a number of at most {MAX_INTEGER_DIGITS} digits", start, found)
            return (float(token) if is_float else int(token)), start
        match = _BARE_WORD_RE.match(text, start)
        if match is None or match.group().lower() in _RESERVED:
            if _beyond_ascii(text, start):
                raise self.error(_quote_hint(expected, text, start), start)
            raise self.error(expected, start)
        if _beyond_ascii(text, match.end()):  # "Zürich": the bare word stops at "ü"
            raise self.error(_quote_hint(expected, text, start), start)
        self.pos = match.end()
        word = match.group()
        return _KEYWORD_VALUES.get(word.lower(), word), start

    def parse_string(self) -> str:
        text, opening = self.text, self.pos
        quote = text[opening]
        chunks: list[str] = []
        pos = opening + 1
        while pos < len(text):
            char = text[pos]
            if char == quote:
                self.pos = pos + 1
                return "".join(chunks)
            if char != "\\":
                chunks.append(char)
                pos += 1
                continue
            escape = text[pos + 1 : pos + 2]
            if escape == "":
                break
            if escape in _ESCAPES:
                chunks.append(_ESCAPES[escape])
                pos += 2
                continue
            digits = text[pos + 2 : pos + 6]
            if escape == "u" and len(digits) == 4 and all(c in string.hexdigits for c in digits):
                code = int(digits, 16)
                low = _low_surrogate(text, pos + 6) if 0xD800 <= code < 0xDC00 else None
                if low is not None:  # a JSON-style surrogate pair: one character
                    chunks.append(chr(0x10000 + ((code - 0xD800) << 10) + low - 0xDC00))
                    pos += 12
                    continue
                chunks.append(chr(code))
                pos += 6
                continue
            raise self.error("an escape sequence (\\\\, \\\", \\', \\/, \\n, \\r, \\t or \\uXXXX)", pos)
        raise self.error(f"a closing {quote!r} to end the string", opening, "end of expression")

    def parse_set(self, op: str) -> Test:
        opening = self.skip_ws()
        if self.peek() != "{":
            raise self.error(f"a set such as {{a, b}} after '{op}'")
        self.pos += 1
        members: list[Scalar] = []
        expect_value = True  # after '{' or ','; otherwise a ',' or '}' must follow
        while True:
            self.skip_ws()
            if self.peek() in ("", "}"):
                break
            if expect_value:
                members.append(self.parse_scalar("a value or '}' in the set")[0])
            elif self.peek() != ",":
                raise self.error("',' or '}' in the set")
            else:
                self.pos += 1
            expect_value = not expect_value
        if self.peek() == "":
            raise self.error("a closing '}' for this set", opening, "end of expression")
        self.pos += 1
        return _membership(members)

    def parse_regex(self) -> Callable[[str], bool]:
        """Whether the pattern matches somewhere in a string, by the fastest engine that answers
        exactly and cannot stall the worker (see :func:`_regex_search`)."""
        text = self.text
        opening = self.skip_ws()
        if self.peek() != "/":
            raise self.error("a regular expression such as /pattern/ after 'matches'")
        chars: list[str] = []
        offsets: list[int] = []  # source position of each pattern character, to place compile errors
        pos = opening + 1
        while pos < len(text) and text[pos] != "/":
            if text[pos] == "\\" and text[pos + 1 : pos + 2] == "/":
                chars.append("/")
                offsets.append(pos)
                pos += 2
            elif text[pos] == "\\" and pos + 1 < len(text):
                chars.extend(text[pos : pos + 2])
                offsets.extend((pos, pos + 1))
                pos += 2
            else:
                chars.append(text[pos])
                offsets.append(pos)
                pos += 1
        if pos >= len(text):
            raise self.error("a closing '/' to end the regular expression", opening, "end of expression")
        closing = pos
        flags_match = _FLAGS_RE.match(text, closing + 1)
        assert flags_match is not None  # the pattern matches the empty string
        flags = 0
        for index, flag in enumerate(flags_match.group()):
            if flag not in _REGEX_FLAGS:
                raise self.error("regular expression flags (i, m, s)", closing + 1 + index)
            flags |= _REGEX_FLAGS[flag]
        self.pos = flags_match.end()
        pattern = "".join(chars)
        try:
            compiled = re.compile(pattern, flags)
        except re.error as exc:
            where = offsets[exc.pos] if exc.pos is not None and exc.pos < len(offsets) else closing
            raise self.error(f"a valid regular expression ({exc.msg})", where) from exc
        except Exception as exc:  # e.g. OverflowError for absurd repeat counts
            raise self.error(f"a valid regular expression ({exc})", opening) from exc
        linear = compile_linear(pattern, flags)
        try:
            return _regex_search(pattern, flags, compiled, linear)
        except regex_safety.UnsafePattern as exc:
            shown = text[opening : closing + 1]
            shown = shown if len(shown) <= 40 else shown[:37] + "..."
            stored_window = regex_safety.unsafe_window()
            if stored_window is None:
                expected = f"a regular expression that cannot stall the worker ({exc})"
                raise self.error(expected, opening, shown) from exc
            # A stored pipeline: keep routing, on a short leash.
            log.warning(
                "the pattern %s (%s) reads only the first %d characters of a value; apply its "
                "pipeline again with a safer pattern",
                shown,
                exc,
                stored_window,
            )
            return _windowed(compiled, stored_window, linear)


def _regex_search(
    pattern: str, flags: int, compiled: re.Pattern[str], linear: LinearSearch | None
) -> Callable[[str], bool]:
    """How ``matches`` searches, by what the pattern needs:

    - RE2 on the whole string where it answers exactly as Python would
      (:mod:`ingestlayer.pipeline.linear_regex`): linear in the text even for ``(a+)+$``, for
      ``.{1,16}`` four times over, which Python tries 16**4 ways at every position, or for
      ``(a|a)`` twenty times over, which it tries 2**20 ways;
    - otherwise (lookarounds, backreferences; ``\\b`` on text that is not ASCII) Python's ``re``
      on the start of the string only, the window regex_safety allows.

    Raises :class:`regex_safety.UnsafePattern` for a pattern only Python's engine can run and
    that can backtrack exponentially. ``linear`` is the pattern's RE2 search, if it has one."""
    if linear is not None and not linear.ascii_only:
        # Even without a repeat Python's engine is not linear: (a|a)(a|a)… tries 2**k ways.
        return linear.found
    window = regex_safety.search_window(regex_safety.check(pattern, flags))
    if window is None:  # nothing repeated, but RE2 could not take it
        return lambda value: compiled.search(value) is not None
    return _windowed(compiled, window, linear)


def _windowed(compiled: re.Pattern[str], window: int, linear: LinearSearch | None) -> Callable[[str], bool]:
    """RE2 where it answers (ASCII strings, for a pattern with ``\\b``), else Python's ``re`` on
    the first ``window`` characters: a backtracking search of a long field would hold the event
    loop (and the GIL) for seconds. ``$`` matches at the end of the window."""
    if linear is None:
        return lambda value: compiled.search(value, 0, window) is not None
    return lambda value: (
        linear.found(value) if linear.answers_for(value) else compiled.search(value, 0, window) is not None
    )
