"""Phone numbers in text: what ``phonenumbers.PhoneNumberMatcher`` finds at leniency ``VALID``,
in time linear in the text with a small constant.

The matcher finds candidates with a regex (up to 21 blocks of digits joined by punctuation), tries
each whole, then splits it at slashes, brackets, spaced hyphens, dashes, dots and spaces and tries
the pieces in order until one is a valid number. A try is ``parse`` plus validation, 10-40 µs, and
digit-heavy text has one every two or three characters: 100 KB of ``"1 - 1 - …"`` took 1.5 s.
After 65,535 failed tries the matcher also gave up on the rest of the text, so a phone number after
enough junk (140 KB of ``"1 1 1 …"``) went unredacted.

``PhoneFinder`` follows the matcher step by step (the same candidates, splits, order and checks;
the tests compare the two on generated text) but skips a try where cheaper reasoning shows that
``parse`` cannot return a valid number:

- `_readings`: the digits ``parse`` reads from a piece: its digits, or (with letters, ``#``,
  ``~``, ``;`` or ``,``) also those without a trailing extension or after a second number, letters
  read as digits in a vanity number;
- `_Plan`: each way ``parse`` can take them, nationally in the default region (with or without
  its country code and national prefixes) or after a ``+`` or the region's international prefix
  with the country code they start with. The count of digits must fit, and where national prefixes
  are only cut off (no transform rule), what is left must be a valid national number
  (`_valid_national_number`: a pattern test made from the metadata, then ``is_valid_number``);
- pieces that run to the candidate's end (after ``/``, ``" - "``, dashes) all end with the
  candidate's digits, so `_Spans` judges them by counting, or all of them at once; pieces too short
  to hold a number are never made.

Parses and validity tests are remembered per text, and there is no cap on tries.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import accumulate
from typing import Final, NamedTuple

from phonenumbers import (
    COUNTRY_CODE_TO_REGION_CODE,
    SUPPORTED_REGIONS,
    NumberParseException,
    PhoneMetadata,
    PhoneNumber,
    PhoneNumberMatcher,
    is_valid_number,
    national_significant_number,
    parse,
    region_code_for_country_code,
)

# The matcher's own patterns and checks, and parse's (phonenumbers is pinned; the tests compare
# PhoneFinder with the matcher).
from phonenumbers.phonenumbermatcher import (
    _LEAD_PATTERN,
    _MATCHING_BRACKETS,
    _PATTERN,
    _PUB_PAGES,
    _SLASH_SEPARATED_DATES,
    _TIME_STAMPS,
    _TIME_STAMPS_SUFFIX,
    _contains_only_valid_x_chars,
    _is_national_prefix_present_if_required,
)
from phonenumbers.phonenumberutil import (
    _ALPHA_PHONE_MAPPINGS,
    _EXTN_PATTERN,
    _PLUS_CHARS_PATTERN,
    _RFC3966_ISDN_SUBADDRESS,
    _RFC3966_PHONE_CONTEXT,
    _SECOND_NUMBER_START_PATTERN,
    _UNWANTED_END_CHAR_PATTERN,
    _VALID_ALPHA_PHONE_PATTERN,
    _VALID_START_CHAR_PATTERN,
    _set_italian_leading_zeros_for_phone_number,
)
from phonenumbers.re_util import fullmatch

try:  # the width of a national-prefix pattern bounds how many digits parsing strips
    from re import _parser as _re_parser  # type: ignore[attr-defined]
except ImportError:  # pragma: no cover - then no upper bound on digits, only slower
    _re_parser = None

# Far above any real count of digits: "no bound".
_UNBOUNDED: Final = 1 << 20

# --- the matcher's splits ----------------------------------------------------------------------
# PhoneNumberMatcher's inner matches, in its order (a test checks they are its patterns).
_SLASH: Final = re.compile("/+(.*)")
_BRACKET: Final = re.compile(r"(\([^(]*)")
_SPACED_HYPHEN: Final = re.compile(r"(?u)(?:\s-|-\s)\s*(.+)")
_DASH: Final = re.compile("(?u)[\u2012-\u2015\uff0d]\\s*(.+)")
_DOT: Final = re.compile(r"(?u)\.+\s*([^.]+)")
_SPACE: Final = re.compile(r"(?u)\s+(\S+)")
INNER_MATCHES: Final = (_SLASH, _BRACKET, _SPACED_HYPHEN, _DASH, _DOT, _SPACE)
# Pieces of these run to the end of the candidate. The matcher searches again one character after
# each match: as a lookahead, `finditer` does the same.
_SUFFIX_PATTERNS: Final = {
    p: re.compile(f"(?={p.pattern.removeprefix('(?u)')})") for p in (_SLASH, _SPACED_HYPHEN, _DASH)
}


@cache
def _segment_patterns(least: int) -> dict[re.Pattern[str], re.Pattern[str]]:
    """The pieces of `_BRACKET`, `_DOT` and `_SPACE` (disjoint segments) that are at least
    ``least`` characters long, one match per piece, in order. (A piece of `_DOT` is the text after
    a run of dots and whitespace, up to the next dot; whitespace-only pieces are too short.)"""
    return {
        _BRACKET: re.compile(rf"(\([^(]{{{least - 1},}})"),
        _DOT: re.compile(rf"(?u)\.+\s*+([^.]{{{least},}})"),
        _SPACE: re.compile(rf"(?u)\s(\S{{{least},}})"),
    }


# Below this length a candidate has few pieces: judging each beats counting for all first.
_MANY_PIECES: Final = 32

# --- the digits parse reads ----------------------------------------------------------------------
# What can make `parse` read a piece as more than its digits: letters (vanity numbers, `x`/`ext`
# extensions, `;ext=`, a second number after `/x`), `#`, `~`, `,` and `;` (extensions), and numerals
# that are not decimal digits. A piece without any is "plain": parse reads its digits.
_NOT_PLAIN: Final = re.compile("[^\\W\\d_]|[#\uff03~\uff5e;,]")
_PLUSES: Final = ("+", "\uff0b")
_ASCII_LETTERS: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_ASCII_LETTER: Final = re.compile("[A-Za-z]")
# An extension is at most 20 digits, at the very end (before an optional `#`).
_EXTENSION_DIGITS: Final = 20
_TRAILING_DIGITS: Final = re.compile(r"(\d+)#?$")


class _Translation(dict[int, str | None]):
    """A ``str.translate`` table filled a character at a time: ``map`` gives a character's
    replacement, or None to drop it."""

    def __init__(self, map: Callable[[str], str | None]) -> None:
        super().__init__()
        self.map = map

    def __missing__(self, code: int) -> str | None:
        value = self[code] = self.map(chr(code))
        return value


def _digit(char: str) -> str | None:
    value = unicodedata.digit(char, -1)
    return None if value == -1 else str(value)


# `normalize_digits_only` and the vanity-number `_normalize` (letters as digits), as translations.
_DIGITS_ONLY: Final = _Translation(_digit)
_ALPHA_DIGITS: Final = _Translation(lambda char: _ALPHA_PHONE_MAPPINGS.get(char.upper()))


def _trim(piece: str) -> str:
    """``piece`` without trailing characters that are not word characters or ``#`` (and
    underscores), as the matcher trims pieces."""
    last = piece[-1:]
    if last == "#" or (last.isalnum() and last != "_"):
        return piece  # the common case, without a regex search that tries every position
    end = _UNWANTED_END_CHAR_PATTERN.search(piece)
    return piece if end is None else piece[: end.start()]


def _starts_with_plus(piece: str) -> bool:
    first = _VALID_START_CHAR_PATTERN.search(piece)
    return first is not None and first.group() in _PLUSES


def _readings(piece: str) -> list[tuple[str, bool]] | None:
    """The digits ``parse`` reads ``piece`` as, with whether a plus came first: with and without
    what may be an extension (``_build_national_number_for_parsing``, ``_maybe_strip_extension``
    and ``_normalize``, without their checks). None if it cannot tell."""
    if _RFC3966_PHONE_CONTEXT in piece:
        return None  # pragma: no cover - no candidate holds one
    start = _VALID_START_CHAR_PATTERN.search(piece)
    if start is None:
        return []
    number = _trim(piece[start.start() :])
    second = _SECOND_NUMBER_START_PATTERN.search(number)
    if second is not None:
        number = number[: second.start()]
    isdn = number.find(_RFC3966_ISDN_SUBADDRESS)
    if isdn > 0:
        number = number[:isdn]
    readings = [_reading(number)]
    # An extension is the digits at the end (and what names them): without them, the digits read
    # are the same wherever the extension starts, unless letters make it a vanity number.
    trailing = _TRAILING_DIGITS.search(number)
    if trailing is not None and len(trailing.group(1)) <= _EXTENSION_DIGITS:
        rest = number[: trailing.start()]
        if len(_ASCII_LETTER.findall(rest)) < 3:
            readings.append(_reading(rest))
        elif (extension := _EXTN_PATTERN.search(number)) is not None:
            readings.append(_reading(number[: extension.start()]))
    return readings


def _reading(number: str) -> tuple[str, bool]:
    plus = _PLUS_CHARS_PATTERN.match(number)
    rest = number if plus is None else number[plus.end() :]
    alpha = fullmatch(_VALID_ALPHA_PHONE_PATTERN, rest) is not None
    return rest.translate(_ALPHA_DIGITS if alpha else _DIGITS_ONLY), plus is not None


# --- what the metadata allows ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Plan:
    """One way ``parse`` reads digits: as a number of ``country_code`` with ``lo``-``hi`` digits
    in all (a national number of a length in ``lengths``). Unless a national-prefix rule of the
    way rewrites digits (``exact`` False), the national number is what is left after cutting off
    the country code (``code``, where optional) and what ``first`` then ``second`` match."""

    country_code: int
    code: str
    lo: int
    hi: int
    lengths: frozenset[int]
    exact: bool
    first: re.Pattern[str] | None
    second: re.Pattern[str] | None


def _max_width(pattern: str) -> int:
    if _re_parser is None:
        return _UNBOUNDED  # pragma: no cover
    try:
        width = int(_re_parser.parse(pattern).getwidth()[1])
    except Exception:  # pragma: no cover - an unparsable pattern: no bound
        return _UNBOUNDED
    return min(width, _UNBOUNDED)


_RULE_GROUP: Final = re.compile(r"\\(?:\d+|g<\w+>)")


def _prefix_change(meta: PhoneMetadata) -> tuple[int, int, bool]:
    """How stripping this metadata's national prefix can change a number's digits: at most
    (fewer, more), and whether a transform rule rewrites them (more than cutting a prefix)."""
    pattern = meta.national_prefix_for_parsing
    if not pattern:
        return 0, 0, False
    width = _max_width(pattern)
    rule = meta.national_prefix_transform_rule
    if not rule:
        return width, 0, False
    groups = len(_RULE_GROUP.findall(rule))
    literal = _RULE_GROUP.sub("", rule)
    if "\\" in literal:
        return width, _UNBOUNDED, True  # pragma: no cover - an escape we do not model
    # The rewrite replaces the match (at most `width`) with the literal and the groups, each at
    # most the whole match.
    return width, len(literal) + max(0, groups - 1) * width, True


def _strip_pattern(meta: PhoneMetadata) -> re.Pattern[str] | None:
    pattern = meta.national_prefix_for_parsing
    return re.compile(pattern) if pattern else None


def _metadata(country_code: int) -> list[PhoneMetadata] | None:
    """The metadata of the regions (or the non-geographic entity) with this code."""
    metas = []
    for region in COUNTRY_CODE_TO_REGION_CODE.get(country_code, ()):
        meta = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        if meta is None:
            return None  # pragma: no cover - every code in the table has metadata
        metas.append(meta)
    return metas or None


def _possible_lengths(country_code: int) -> frozenset[int] | None:
    lengths: set[int] = set()
    metas = _metadata(country_code)
    if metas is None:
        return None  # pragma: no cover - every code in the table has metadata
    for meta in metas:
        desc = meta.general_desc
        found = [n for n in (desc.possible_length if desc is not None else ()) if n > 0]
        if not found:
            return None  # no length restriction known: no bound
        lengths.update(found)
    return frozenset(lengths)


def _main_metadata(country_code: int) -> PhoneMetadata | None:
    return PhoneMetadata.metadata_for_region_or_calling_code(
        country_code, region_code_for_country_code(country_code)
    )


def _plan(
    country_code: int, first: PhoneMetadata, second: PhoneMetadata | None, code_optional: bool
) -> _Plan:
    """National-prefix stripping with ``first``'s pattern, then ``second``'s if given; the country
    code comes first, optionally if ``code_optional``."""
    lengths = _possible_lengths(country_code)
    metas = [first] if second is None else [first, second]
    code = str(country_code)
    fewer = more = 0
    exact = lengths is not None
    for meta in metas:
        f, m, transforms = _prefix_change(meta)
        fewer, more = max(fewer, f), max(more, m)
        exact = exact and not transforms
    if lengths is None:
        return _Plan(country_code, code, 0, _UNBOUNDED, frozenset(), False, None, None)
    strips = len(metas)
    lo = (0 if code_optional else len(code)) + min(lengths) - strips * more
    hi = len(code) + max(lengths) + strips * fewer
    return _Plan(
        country_code,
        code,
        max(0, lo),
        min(_UNBOUNDED, hi),
        lengths,
        exact,
        _strip_pattern(first),
        _strip_pattern(second) if second is not None else None,
    )


@cache
def _international_plan(country_code: int) -> _Plan | None:
    """After ``+`` or an international prefix: the country code, then one national-prefix strip
    with the metadata of the code's main region."""
    meta = _main_metadata(country_code)
    if meta is None:
        return None  # pragma: no cover - every code in the table has metadata
    return _plan(country_code, meta, None, code_optional=False)


@cache
def _national_plan(region: str) -> _Plan | None:
    """A number read in the default region: optionally its country code (then a strip with the
    region's national prefix and one with the code's main region's), else a strip with the
    region's national prefix."""
    meta = PhoneMetadata.metadata_for_region(region)
    if meta is None or meta.country_code is None:
        return None  # pragma: no cover - regions are checked against SUPPORTED_REGIONS
    main = _main_metadata(meta.country_code)
    return _plan(meta.country_code, meta, main or meta, code_optional=True)


@cache
def _fewest_digits_anywhere(region: str) -> int:
    """The fewest digits any valid number read with this default region has: national, or after
    ``+`` with any country code."""
    plans = [_international_plan(cc) for cc in COUNTRY_CODE_TO_REGION_CODE]
    plans.append(_national_plan(region))
    # `parse` refuses fewer than two digits whatever the metadata says.
    return max(2, min(p.lo if p is not None else 0 for p in plans))


def _cut(pattern: re.Pattern[str] | None, digits: str) -> str:
    """``digits`` less what ``pattern`` (a national prefix) matches at their start."""
    if pattern is None or not digits:
        return digits
    m = pattern.match(digits)
    return digits if m is None else digits[m.end() :]


def _national_numbers(plan: _Plan, digits: str, national: bool) -> Iterator[str]:
    """The national numbers ``parse`` may make of ``digits`` on an exact plan (with duplicates):
    each way of cutting off the country code and national prefixes it may choose."""
    if national:
        yield digits
        yield _cut(plan.first, digits)
        if not digits.startswith(plan.code):
            return
    rest = digits[len(plan.code) :]
    cut = _cut(plan.first, rest)
    if national:
        # In the default region, the country code comes off with one prefix, then another.
        yield rest
        yield cut
        yield _cut(plan.second, rest)
        yield _cut(plan.second, cut)
    else:
        yield rest
        yield cut


# The number types `_number_type_helper` tests; a valid number matches one of their patterns.
_TYPE_DESCS: Final = (
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
    "fixed_line",
    "mobile",
)
_BACKREFERENCE: Final = re.compile(r"\\[1-9]|\(\?P=")


@cache
def _type_pattern(country_code: int, length: int) -> re.Pattern[str] | bool:
    """A pattern every valid national number of this length with this country code matches (the
    union of its regions' patterns for number types of that length); False if there is none,
    True if it cannot tell."""
    metas = _metadata(country_code)
    if metas is None:
        return True  # pragma: no cover - every code in the table has metadata
    patterns = []
    for meta in metas:
        for name in _TYPE_DESCS:
            desc = getattr(meta, name)
            pattern = desc.national_number_pattern if desc is not None else None
            if not pattern or (desc.possible_length and length not in desc.possible_length):
                continue  # `_is_number_matching_desc` is false
            if _BACKREFERENCE.search(pattern):
                return True  # pragma: no cover - a union would renumber its groups
            patterns.append(f"(?:{pattern})")
    return re.compile("|".join(patterns)) if patterns else False


def _valid_national_number(country_code: int, national: str) -> bool:
    """``is_valid_number`` of the number ``parse`` makes with this code and national number."""
    pattern = _type_pattern(country_code, len(national))
    if pattern is False or (pattern is not True and pattern.fullmatch(national) is None):
        return False
    number = PhoneNumber(country_code=country_code, national_number=int(national))
    _set_italian_leading_zeros_for_phone_number(national, number)  # as `parse` does
    return is_valid_number(number)


def _country_code(digits: str) -> int:
    """``_extract_country_code``: the known code the digits start with, or 0."""
    if not digits or digits[0] == "0":
        return 0
    for size in range(1, min(len(digits), 3) + 1):
        code = int(digits[:size])
        if code in COUNTRY_CODE_TO_REGION_CODE:
            return code
    return 0


# --- the search ----------------------------------------------------------------------------------


class PhoneMatch(NamedTuple):
    start: int
    end: int
    raw: str  # text[start:end]
    number: PhoneNumber


@lru_cache(maxsize=4096)
def _bad_neighbour(char: str) -> bool:
    """The matcher refuses a number next to a Latin letter, ``%`` or a currency symbol."""
    return PhoneNumberMatcher._is_invalid_punctuation_symbol(char) or PhoneNumberMatcher._is_latin_letter(
        char
    )


class PhoneFinder:
    """Phone numbers in text, as ``PhoneNumberMatcher(text, region, Leniency.VALID)`` finds them,
    without its cap on tries. Build once per region; thread-safe."""

    def __init__(self, region: str) -> None:
        self.region = region
        known = region in SUPPORTED_REGIONS
        # Without a region's metadata, no piece is skipped (only slower).
        self.national = _national_plan(region) if known else None
        # The fewest characters a piece that holds a valid number has (digits, or letters read as
        # digits).
        self.least = _fewest_digits_anywhere(region) if known else 2
        meta = PhoneMetadata.metadata_for_region(region) if known else None
        prefix = meta.international_prefix if meta is not None else None
        self.idd = re.compile(prefix) if prefix else None
        self.idd_ahead = re.compile(f"(?=(?:{prefix}))") if prefix else None
        self.segments = _segment_patterns(self.least)

    def find(self, text: str) -> list[PhoneMatch]:
        return _Search(self, text).run()

    def whole(self, text: str) -> PhoneNumber | None:
        """The valid number ``text`` is taken whole, for a ``text`` of ASCII digits after an
        optional ``+`` (an integer's digits): what ``find`` finds in it when it finds one number
        spanning all of it, without looking for candidates. The matcher's pattern takes such a
        text whole as its one candidate, which has nothing to split at, so this is ``find``'s one
        try (a test checks the two agree)."""
        found = _Search(self, text).try_piece(text, 0)
        return None if found is None else found.number

    def integer(self, digits: str) -> PhoneNumber | None:
        """The valid number an integer's ``digits`` are, taken whole: ``whole(digits)``, failing
        that ``whole("+" + digits)`` (an integer cannot carry the plus). The second is skipped when
        the digits start with no country code whose numbers they fit: then ``parse`` reads them
        after the plus as without it, which the first found invalid."""
        found = self.whole(digits)
        if found is None and (self.national is None or _Search(self, digits).international_fits(digits)):
            found = self.whole("+" + digits)
        return found


class _Search:
    """One text's search: the matcher's loop, with the parses it can rule out skipped."""

    __slots__ = ("finder", "fits", "least", "national", "parsed", "text", "valid")

    def __init__(self, finder: PhoneFinder, text: str) -> None:
        self.finder = finder
        self.national = finder.national
        self.least = finder.least
        self.text = text
        self.parsed: dict[str, PhoneNumber | None] = {}
        self.valid: dict[tuple[int, str], bool] = {}
        self.fits: dict[tuple[str, bool], bool] = {}

    def run(self) -> list[PhoneMatch]:
        """``PhoneNumberMatcher._find``, over the whole text."""
        text = self.text
        out: list[PhoneMatch] = []
        m = _PATTERN.search(text)
        while m is not None:
            start = m.start()
            candidate = m.group()
            second = _SECOND_NUMBER_START_PATTERN.search(candidate)
            if second is not None:
                candidate = candidate[: second.start()]
            found = self.extract(candidate, start)
            if found is not None:
                out.append(found)
                index = found.end
            else:
                index = start + len(candidate)
            m = _PATTERN.search(text, index)
        return out

    def extract(self, candidate: str, offset: int) -> PhoneMatch | None:
        """``PhoneNumberMatcher._extract_match``."""
        if sum(map(str.isalnum, candidate)) < self.least:
            return None  # too few digits (or letters read as digits) for any piece of it
        if "/" in candidate and _SLASH_SEPARATED_DATES.search(candidate):
            return None  # 3/10/2011
        if (
            " " in candidate
            and _TIME_STAMPS.search(candidate)
            and _TIME_STAMPS_SUFFIX.match(self.text, offset + len(candidate))
        ):
            return None  # 2012-01-02 08:00
        found = self.try_piece(candidate, offset)
        if found is not None or candidate.isdigit():
            return found  # a run of digits has nothing to split at
        return self.inner(candidate, offset)

    def inner(self, candidate: str, offset: int) -> PhoneMatch | None:
        """``PhoneNumberMatcher._extract_inner_match``: for each split pattern that occurs, the
        text before its first occurrence, then each piece after one, in order."""
        spans: _Spans | None = None
        for pattern in INNER_MATCHES:
            first = pattern.search(candidate)
            if first is None:
                continue
            found = self.try_piece(_trim(candidate[: first.start()]), offset)
            if found is not None:
                return found
            ahead = _SUFFIX_PATTERNS.get(pattern)
            if ahead is None:
                # Disjoint pieces: only those long enough to hold a number.
                for m in self.finder.segments[pattern].finditer(candidate):
                    found = self.try_piece(_trim(m.group(1)), offset + m.start(1))
                    if found is not None:
                        return found
                continue
            if len(candidate) < _MANY_PIECES:
                found = self.few_rests(candidate, offset, ahead)
            else:
                if spans is None:
                    spans = _Spans(candidate, self)
                if spans.hopeless():
                    continue  # no piece of it can be valid
                found = self.rests(candidate, offset, ahead, spans)
            if found is not None:
                return found
        return None

    def few_rests(self, candidate: str, offset: int, ahead: re.Pattern[str]) -> PhoneMatch | None:
        """The pieces of a split pattern that run to the end of a short candidate, in order."""
        last = -1
        for m in ahead.finditer(candidate):
            start = m.start(1)
            if start != last:  # else the same piece again (a run of slashes, " - ")
                last = start
                found = self.try_piece(_trim(m.group(1)), offset + start)
                if found is not None:
                    return found
        return None

    def rests(self, candidate: str, offset: int, ahead: re.Pattern[str], spans: _Spans) -> PhoneMatch | None:
        """The pieces of a split pattern that run to the end of a long candidate, in order, each
        starting later than the last: most are ruled out by counting their digits."""
        least = self.least
        digits, total, idd_at = spans.digits, spans.digits[-1], spans.idd_at
        national = self.national
        lo, hi = (national.lo, national.hi) if national is not None else (0, -1)
        last = -1
        for m in ahead.finditer(candidate):
            start = m.start(1)
            if start == last:
                continue  # the same piece again (a run of slashes, " - ")
            last = start
            if m.end(1) < len(candidate):  # pragma: no cover - candidates hold no line break
                pass
            elif spans.quick:
                # Digits and punctuation, no plus: the piece's digits are the candidate's from
                # digits[start] on, read nationally or after the international prefix.
                count = total - digits[start]
                if count < least:
                    break  # this piece and every later one hold too few digits
                national_fits = lo <= count <= hi and count >= spans.fewest_national(False, len(candidate))
                if not national_fits and digits[start] not in idd_at:
                    continue
            elif spans.alnum[-1] - spans.alnum[start] < least:
                break
            elif not spans.rest_may_be_valid(start):
                continue
            found = self.try_piece(_trim(m.group(1)), offset + start)
            if found is not None:
                return found
        return None

    def try_piece(self, piece: str, offset: int) -> PhoneMatch | None:
        """``PhoneNumberMatcher._parse_and_verify``, after the cheap test of the digits."""
        if len(piece) < self.least or not self.may_be_valid(piece):
            return None
        if fullmatch(_MATCHING_BRACKETS, piece) is None or _PUB_PAGES.search(piece):
            return None
        text = self.text
        if offset > 0 and not _LEAD_PATTERN.match(piece) and _bad_neighbour(text[offset - 1]):
            return None  # abc8005001234
        end = offset + len(piece)
        if end < len(text) and _bad_neighbour(text[end]):
            return None  # 8005001234def
        if piece in self.parsed:
            number = self.parsed[piece]
        else:
            number = self.parsed[piece] = self.parse_valid(piece)
        return None if number is None else PhoneMatch(offset, end, piece, number)

    def parse_valid(self, piece: str) -> PhoneNumber | None:
        """``parse``, then ``_verify`` at ``Leniency.VALID`` (with validity looked up)."""
        try:
            number = parse(piece, self.finder.region, keep_raw_input=True)
        except NumberParseException:
            return None
        valid = (
            number.country_code is not None
            and self.is_valid(number.country_code, national_significant_number(number))
            and _contains_only_valid_x_chars(number, piece)
            and _is_national_prefix_present_if_required(number)
        )
        return number if valid else None

    def may_be_valid(self, piece: str) -> bool:
        """False only if ``parse`` plus ``VALID`` verification cannot accept ``piece``."""
        if self.national is None:
            return True
        if _NOT_PLAIN.search(piece) is None:
            # Digits and punctuation: parse reads the digits, after a plus if one comes first.
            plus = (_PLUSES[0] in piece or _PLUSES[1] in piece) and _starts_with_plus(piece)
            return self.digits_fit(piece.translate(_DIGITS_ONLY), plus)
        readings = _readings(piece)
        return readings is None or any(self.digits_fit(digits, plus) for digits, plus in readings)

    def digits_fit(self, digits: str, plus: bool) -> bool:
        """Whether ``digits`` (after a plus if ``plus``) may be a valid number: read nationally, or
        after the plus or the region's international prefix. (A plus followed by an unknown code
        is read again without it.)"""
        if len(digits) < self.least:
            return False
        key = (digits, plus)
        fits = self.fits.get(key)
        if fits is None:
            fits = self.fits[key] = self.digits_may_fit(digits, plus)
        return fits

    def digits_may_fit(self, digits: str, plus: bool) -> bool:
        assert self.national is not None
        if self.plan_fits(self.national, digits, national=True):
            return True
        if plus and self.international_fits(digits):
            return True
        idd = self.finder.idd
        if idd is not None:
            m = idd.match(digits)
            # parse does not take a prefix followed by 0 for one: read nationally, done above.
            if m is not None and self.international_fits(digits[m.end() :]):
                return True
        return False

    def international_fits(self, digits: str) -> bool:
        code = _country_code(digits)
        if not code:
            return False  # parse reads the digits nationally, checked apart
        plan = _international_plan(code)
        return plan is None or self.plan_fits(plan, digits, national=False)

    def plan_fits(self, plan: _Plan, digits: str, national: bool) -> bool:
        if not plan.lo <= len(digits) <= plan.hi:
            return False
        if not plan.exact:
            return True
        lengths = plan.lengths
        return any(
            len(number) in lengths and self.is_valid(plan.country_code, number)
            for number in _national_numbers(plan, digits, national)
        )

    def is_valid(self, country_code: int, national: str) -> bool:
        key = (country_code, national)
        valid = self.valid.get(key)
        if valid is None:
            valid = self.valid[key] = _valid_national_number(country_code, national)
        return valid


class _Spans:
    """One candidate's pieces that run to its end, ``candidate[start:]``, judged by counting: the
    digits parse reads from one are those of the candidate from its first digit (or plus) to the
    end, or to where an extension starts, as digits or (with three letters) as a vanity number;
    a national number is their last digits, the same for all pieces. Prefix sums count them."""

    __slots__ = (
        "alnum",
        "alpha",
        "alpha_idd_at",
        "alpha_text",
        "candidate",
        "digits",
        "digits_text",
        "end",
        "extension",
        "extension_at",
        "idd_at",
        "letters",
        "plain",
        "plus",
        "quick",
        "search",
        "tails",
        "trailing",
        "unsure",
    )

    def __init__(self, candidate: str, search: _Search) -> None:
        self.candidate = candidate
        self.search = search
        self.plain = _NOT_PLAIN.search(candidate) is None
        self.plus = _PLUSES[0] in candidate or _PLUSES[1] in candidate
        # No plus: every piece is read nationally or after the international prefix.
        self.quick = self.plain and search.national is not None and not self.plus
        # digits[i]: how many characters of candidate[:i] `normalize_digits_only` keeps.
        self.digits = list(accumulate(map(str.isdigit, candidate), initial=0))
        self.digits_text = candidate.translate(_DIGITS_ONLY)
        self.alnum = self.digits
        self.alpha = self.letters = self.digits
        self.alpha_text: str | None = None
        ahead = search.finder.idd_ahead
        # Where in digits_text the region's international prefix starts.
        self.idd_at = {m.start() for m in ahead.finditer(self.digits_text)} if ahead is not None else set()
        self.alpha_idd_at: set[int] = set()
        # The fewest digits of a valid national number ending at a place, by reading.
        self.tails: dict[tuple[bool, int], int] = {}
        self.end = len(candidate)
        self.trailing: int | None = None
        self.extension: int | None = None
        self.extension_at = _UNBOUNDED
        # Pieces from here on hold nothing counting does not follow (a second number or an ISDN
        # subaddress that cuts the number short, an RFC 3966 context); earlier ones are parsed.
        self.unsure = -1
        if self.plain:
            return
        self.alnum = list(accumulate(map(str.isalnum, candidate), initial=0))
        self.alpha = list(
            accumulate(map(bool, map(_ALPHA_DIGITS.__getitem__, map(ord, candidate))), initial=0)
        )
        self.alpha_text = candidate.translate(_ALPHA_DIGITS)
        if ahead is not None:
            self.alpha_idd_at = {m.start() for m in ahead.finditer(self.alpha_text)}
        self.letters = list(accumulate(map(_ASCII_LETTERS.__contains__, candidate), initial=0))
        self.end = len(_trim(candidate))
        trailing = _TRAILING_DIGITS.search(candidate, 0, self.end)
        if trailing is not None and len(trailing.group(1)) <= _EXTENSION_DIGITS:
            self.trailing = trailing.start()
        cuts = [m.start() for m in _SECOND_NUMBER_START_PATTERN.finditer(candidate)]
        cuts.append(candidate.rfind(_RFC3966_ISDN_SUBADDRESS))
        if _RFC3966_PHONE_CONTEXT in candidate:
            cuts.append(len(candidate))  # pragma: no cover - no candidate holds one
        self.unsure = max(cuts)

    def fewest_national(self, alpha: bool, end: int) -> int:
        """The fewest digits a piece read up to ``end`` (as a vanity number if ``alpha``) has if it
        is a valid national number; more than any piece has if none is."""
        key = (alpha, end)
        least = self.tails.get(key)
        if least is None:
            plan = self.search.national
            assert plan is not None
            least = plan.lo
            if plan.exact:
                # The national number is the end of the digits read.
                text = self.alpha_text if alpha and self.alpha_text is not None else self.digits_text
                stop = (self.alpha if alpha else self.digits)[end]
                is_valid = self.search.is_valid
                fits = [
                    n
                    for n in plan.lengths
                    if n <= stop and is_valid(plan.country_code, text[stop - n : stop])
                ]
                least = max(least, min(fits, default=_UNBOUNDED))
            self.tails[key] = least
        return least

    def hopeless(self) -> bool:
        """Whether no piece running to the end can be a valid number: none can be read as
        international, and no way of reading one nationally ends in a valid national number."""
        if self.search.national is None or self.unsure >= 0 or self.idd_at or self.alpha_idd_at:
            return False
        if self.plus:
            return False
        ends = [(self.end, False)]
        if self.trailing is not None:
            ends.append((self.trailing, False))
        if self.alpha_text is not None and self.letters[-1] >= 3:
            ends.append((self.end, True))
            at = 0
            while (extension := self.extension_start(at)) is not None:
                ends.append((extension, True))
                at = extension + 1
        return all(self.fewest_national(alpha, end) >= _UNBOUNDED for end, alpha in ends)

    def extension_start(self, lead: int) -> int | None:
        """Where an extension may start in ``candidate[lead:end]`` (the first match of parse's
        pattern, which runs to the end)."""
        found = self.extension
        if lead < self.extension_at or (found is not None and found < lead):
            m = _EXTN_PATTERN.search(self.candidate, lead, self.end)
            self.extension = found = m.start() if m is not None else None
            self.extension_at = lead  # the answer holds for any later lead before it
        return found

    def rest_may_be_valid(self, start: int) -> bool:
        """``may_be_valid(candidate[start:])``, by counting: False only if that is False."""
        plan = self.search.national
        if plan is None:
            return True
        lead = _VALID_START_CHAR_PATTERN.search(self.candidate, start)
        if lead is None:
            return False  # no digits
        at = lead.start()
        if at <= self.unsure or lead.group() in _PLUSES:
            return True
        # Read after the international prefix (which the digits start with)?
        if self.digits[at] in self.idd_at or self.alpha[at] in self.alpha_idd_at:
            return True
        # Read nationally: up to the end, or without an extension (the digits at the end, so up to
        # `trailing` if they are read as digits; with three letters, up to where it starts).
        letters = self.letters
        if self.national_fits(at, self.end, not self.plain and letters[self.end] - letters[at] >= 3):
            return True
        trailing = self.trailing
        if trailing is None or trailing <= at:
            return False
        if self.national_fits(at, trailing, False):
            return True
        if letters[trailing] - letters[at] < 3:
            return False
        extension = self.extension_start(at)
        return extension is not None and extension > at and self.national_fits(at, extension, True)

    def national_fits(self, at: int, end: int, alpha: bool) -> bool:
        plan = self.search.national
        assert plan is not None
        counts = self.alpha if alpha else self.digits
        count = counts[end] - counts[at]
        return plan.lo <= count <= plan.hi and count >= self.fewest_national(alpha, end)
