"""Find PII in text: email, IP, phone, card, IBAN and secrets, as non-overlapping spans.

Every pattern is compiled once, at import. ``Scanner.scan`` runs each enabled detector behind a
cheap pre-check (an ``@`` or ``%40`` for emails, enough digits for cards and phones, …), so the common
short string (``"pro"``, ``"usr_8f3k2"``) costs a few string operations and no regex search.

Detectors run in priority order and a later match that overlaps an earlier one is discarded:
email → prefixed secrets (``Bearer …``, ``sk_live_…``, JWTs, …) → IBAN → card → IPv6 → IPv4 → named
secret (``AccountKey=…``, ``token=…``) → generic high-entropy secret (base64 with ``+/=`` whole,
then runs of ``[A-Za-z0-9_-]``) → phone. Checksums and validators keep false positives down: cards must
pass Luhn and carry a card-network prefix, IBANs the ISO 13616 mod-97 check and their country's
length, IPs ``ipaddress``, and phones ``phonenumbers`` validity. Phone numbers are what
``phonenumbers.PhoneNumberMatcher`` finds, found in linear time by ``phones.PhoneFinder``.

``Scanner.integer`` reads a JSON integer's digits whole, as one card or phone number, with the
same checks (and, as an integer cannot carry one, after a ``+`` too).
"""

from __future__ import annotations

import ipaddress
import math
import re
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Final, Literal

import phonenumbers

from ingestlayer.pipeline.steps.pii.phones import PhoneFinder

PiiType = Literal["email", "ip", "phone", "card", "iban", "secret"]
ALL_TYPES: Final[tuple[PiiType, ...]] = ("email", "ip", "phone", "card", "iban", "secret")


@dataclass(slots=True)
class Found:
    """One detected value: ``text[start:end] == value``."""

    start: int
    end: int
    type: str  # a PiiType, or "value" for a whole field whose content is not recognised
    value: str
    # Canonical form, what `hash` mode hashes, so one person's value hashes alike however it was
    # written: email lower-cased, IP compressed, phone E.164, card digits, IBAN upper-case.
    norm: str


# --- email -------------------------------------------------------------------------------------
# RFC 5322 dot-atom local part (with RFC 6531 Unicode letters); a domain of labels ending in an
# alphabetic (any script) or IDNA (`xn--`) top-level domain. `user@localhost` is not an address.
_ATEXT = r"[\w!#$%&'*+/=?^`{|}~-]"
_LABEL = r"[^\W_](?:[\w-]{0,61}[^\W_])?"
# The lookahead bounds the local part at RFC 5321's 64 characters before the pattern proper
# runs: without it every start in a long run of word characters scanned on to the `@`, and
# 100 KB of them before one `@` took minutes. A longer run still yields its last 64.
_EMAIL: Final = re.compile(
    rf"(?=[\w!#$%&'*+/=?^`{{|}}~.-]{{1,64}}@)"
    rf"{_ATEXT}+(?:\.{_ATEXT}+)*@(?:{_LABEL}\.)+(?:[Xx][Nn]--[A-Za-z0-9-]{{1,59}}|[^\W\d_]{{2,63}})"
)
# Percent-encoded, as in a URL's query (`?email=ada%40acme.com`): `@` as `%40`, or `%2540` encoded
# twice (a URL inside a URL), a `+` in the local part as `%2B` (`%252B`). The local part starts
# after a character outside it or after a whole escape (`email%3Dada%2540…`: `ada`), never inside
# an escape or a word.
_PCT_ATOM = r"(?:[A-Za-z0-9_~+-]|%(?:25)?2[Bb])+"
_PCT_EMAIL: Final = re.compile(
    r"(?:(?<![A-Za-z0-9._~+%-])(?<!%[0-9A-Fa-f])|(?<=%[0-9A-Fa-f]{2}))"
    rf"{_PCT_ATOM}(?:\.{_PCT_ATOM})*%(?:25)?40"
    rf"(?:{_LABEL}\.)+(?:[Xx][Nn]--[A-Za-z0-9-]{{1,59}}|[^\W\d_]{{2,63}})"
)
PCT_AT: Final = re.compile(r"%(?:25)?40")  # the encoded `@` of a `_PCT_EMAIL` find
_PCT_PLUS: Final = re.compile(r"%(?:25)?2[Bb]")

# --- secrets -----------------------------------------------------------------------------------
_BEARER: Final = re.compile(r"\b(?:[Bb]earer|BEARER)[ \t]+([A-Za-z0-9._~+/-]{6,}=*)")
_PREFIXED: Final = re.compile(
    r"(?<![A-Za-z0-9_-])(?:"
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"  # Stripe secret / restricted keys
    r"|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic style
    r"|whsec_[A-Za-z0-9+/=]{16,}"  # webhook signing secrets
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|AIza[0-9A-Za-z_-]{30,}"  # Google API keys
    r"|il_(?:ingest|admin)_[A-Za-z0-9_-]{16,}"  # our own API keys
    r"|eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"  # JWT
    r")"
)
_GENERIC: Final = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{32,}(?![A-Za-z0-9_-])")
# A token of 32 random base62 characters splits into "words" (Title, lower, UPPER, digit runs)
# 1.9 characters long on average, above 3.2 in 0.1% of cases; identifiers made of words, 4 to 7.
_PIECE: Final = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
GENERIC_MAX_PIECE: Final = 3.2
GENERIC_MIN_ENTROPY: Final = 3.5  # bits per character; random base62 at 32 characters: 4.5
# Base64 (standard and URL-safe alphabets): `+`, `/` (also percent-encoded, as in a query string)
# and `=` padding, which `_GENERIC` stops at. A run of these is one token, judged whole; path and
# URL segments (words) at either end are not part of it, so `/usr/local/bin/python3` is a path.
_B64_TOKEN: Final = r"(?:[A-Za-z0-9_+/-]|%2[BbFf])+(?:=|%3[Dd]){0,2}"
_B64: Final = re.compile(rf"(?<![A-Za-z0-9_+/%-]){_B64_TOKEN}(?![A-Za-z0-9_+/=-])")
# The cheap pre-check: no run of 32 such characters, no base64 token (nor a 32-character core).
_B64_RUN: Final = re.compile(r"[A-Za-z0-9_+/%=-]{32,}")
_B64_SEP: Final = re.compile(r"/|%2[Ff]")
_B64_PAD: Final = re.compile(r"(?:=|%3[Dd])+$")
# A path or URL segment: a word (`usr`, `python3`, `redact_pii`, `Users`), a number (`2024`), a
# short code (`API`, `Q1`). Random base64 has few such segments between its rare `/`s.
_WORD_SEGMENT: Final = re.compile(r"[A-Z]?[a-z0-9_-]*|[A-Z0-9]{1,3}")
# Segments that are all such words, in one pass (atomic: a segment is a word one way or not at all).
_SEGMENT_WORD: Final = r"(?>(?:[A-Z]?[a-z0-9_-]*|[A-Z0-9]{1,3})(?=/|%2[Ff]|\Z))"
_PATH: Final = re.compile(rf"{_SEGMENT_WORD}(?:(?:/|%2[Ff]){_SEGMENT_WORD})*")
# A value named as a credential: `AccountKey=…`, `api_key: …`, `X-Api-Key: …`, `token=…`,
# `"password": "…"`, `sig=…`. The regex finds `name=value` (any name: cheaper than looking for
# the names at every position); `_credential_name` then judges the name.
_NAMED: Final = re.compile(
    r"(?<![A-Za-z0-9_-])([A-Za-z][A-Za-z0-9_-]{0,63}+)[\"']?[ \t]*+[=:][ \t]*+[\"']?"
    rf"({_B64_TOKEN})(?![A-Za-z0-9_+/=-])"
)
_CREDENTIAL_ENDINGS: Final = ("key", "secret", "token", "password", "passwd", "pwd", "sig", "signature")
_NAME_PART: Final = re.compile(r"[_-]+|(?<=[a-z0-9])(?=[A-Z])")
# Names (their last words, lower-cased and joined) whose value is a credential.
CREDENTIAL_NAMES: Final = frozenset(
    {
        *("key", "accountkey", "sharedaccesskey", "apikey", "accesskey", "secretkey", "privatekey"),
        *("clientkey", "signingkey", "encryptionkey", "secret", "clientsecret", "token"),
        *("accesstoken", "refreshtoken", "authtoken", "idtoken", "sessiontoken", "apitoken"),
        *("password", "passwd", "pwd", "sig", "signature"),
    }
)
KEYED_MIN_LENGTH: Final = 16  # a named credential's value, padding aside

# --- IBAN (ISO 13616): country → total length ----------------------------------------------------
IBAN_LENGTHS: Final[dict[str, int]] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31, "SD": 18,
    "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip
_IBAN_START: Final = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}[0-9]{2}")

# --- cards -------------------------------------------------------------------------------------
# 13-19 digits, optionally grouped by single spaces or dashes; not part of a longer number, a
# decimal (`0.4111…`) or a `+` phone number. After a comma or a dot that ends no number it
# starts a card: in a list without spaces (`4111…,4242…`, a CSV field) or after `no.`.
_CARD: Final = re.compile(r"(?<![0-9+])(?<![0-9]\.)[0-9](?:[ -]?[0-9]){12,18}(?![0-9])")
_CARD_SEP: Final = re.compile(r"[ -]")
CARD_MIN_DIGITS: Final = 13
CARD_MAX_DIGITS: Final = 19
_DIGIT_GROUP: Final = re.compile(r"[0-9]+")

# --- IP ----------------------------------------------------------------------------------------
# Not preceded by a word character or a dot (`v1.2.3.4`, `1.1.2.3.4`), not followed by more
# dotted digits (`1.2.3.4.5`).
_IPV4: Final = re.compile(r"(?<![\w.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?!\.?[0-9])(?!\w)")
_IPV6: Final = re.compile(
    r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2,8}"
    r"(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?(?![0-9A-Za-z_:])"
)

# --- phones ------------------------------------------------------------------------------------
# The shortest valid number in international format has 6 digits (`+98 9601`, Iran voicemail);
# a test checks this against every example number phonenumbers ships.
INTERNATIONAL_MIN_DIGITS: Final = 6
# Runs of digits and phone punctuation: the pre-check before phonenumbers' (slower) matcher.
_PHONE_RUN: Final = re.compile(r"\d(?:[\s().\-/\u2010-\u2015\u2212\u30fc\uff0d]*\d)*")
_DATE_RUN: Final = re.compile(
    r"(?:[0-9]{4}[-/.][0-9]{1,2}[-/.][0-9]{1,2}|[0-9]{1,2}[-/.][0-9]{1,2}[-/.][0-9]{2,4})(?:[ T][0-9]{1,2})?"
)
# A bare ISO 8601 date or timestamp (`created_at`), the most common digit-heavy string in events.
_ISO_TIMESTAMP: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:?[0-9]{2})?)?"
)
_DROP_DIGITS: Final = str.maketrans("", "", "0123456789")
_ANY_DIGIT: Final = re.compile(r"\d")

# --- integers ----------------------------------------------------------------------------------
# phonenumbers parses at most 250 characters: an integer with more digits is no phone number (nor
# card), and is never written out (`str` of one with over 4300 digits raises).
_INTEGER_LIMIT: Final = 10**250


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_prefix_valid(digits: str) -> bool:
    """Issuer prefixes of the card networks (Visa, Mastercard, Amex, Discover, JCB, Diners,
    UnionPay, Maestro): rules out most order numbers and millisecond timestamps."""
    first = digits[0]
    if first in "46":
        return True
    if first == "5":
        return True  # 51-55 Mastercard, 50 and 56-59 Maestro
    if first == "3":
        return digits[1] in "0456789"  # Diners 30, 36, 38, 39; Amex 34, 37; JCB 35
    if first == "2":
        return 2221 <= int(digits[:4]) <= 2720
    return False


def iban_valid(iban: str) -> bool:
    """``iban``: upper-case, no spaces. Country length and the mod-97 check."""
    if IBAN_LENGTHS.get(iban[:2]) != len(iban) or not iban.isalnum() or not iban.isascii():
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ipv4_valid(dotted: str) -> bool:
    """Four decimal octets 0-255 without leading zeros: what ``ipaddress`` accepts, 10x faster."""
    return all(not ((len(p) > 1 and p[0] == "0") or int(p) > 255) for p in dotted.split("."))


def _entropy(s: str) -> float:
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def looks_random(token: str) -> bool:
    """The generic-secret test: mixed case, short "words" (random text does not spell), high
    entropy. ``Marketing_Site_Campaign_2024`` and ``ThisIsCamelCase`` spell words; keys do not."""
    if not (any(c.islower() for c in token) and any(c.isupper() for c in token)):
        return False
    pieces = _PIECE.findall(token)
    if sum(map(len, pieces)) / len(pieces) > GENERIC_MAX_PIECE:
        return False
    return _entropy(token) >= GENERIC_MIN_ENTROPY


def _token_core(text: str, start: int, end: int, trim: bool = True) -> tuple[int, int] | None:
    """The span of ``text[start:end]`` (a base64-alphabet run) that can be a secret, or ``None``
    for a path: segments between `/` that are all words (``/usr/local/bin/python3``,
    ``2024/05/01``, ``uploads/2024/05/photo-of-ada``).

    Where the run sits as a path does (it starts with `/`, or follows a host's `.` or a `:`), the
    words at either end are the path's, not the token's: ``x.com/reset/<token>/edit``. A run of
    them is left off if one has 3 characters or more: `com`, `reset` are words, while a random
    token's 1- or 2-character segment between two `/` is chance. Not with ``trim=False``: a
    value after its name (``AccountKey=/Kj6q/…``) is the credential whole."""
    token = text[start:end]
    if "/" not in token and "%2F" not in token and "%2f" not in token:
        return start, end
    pad = _B64_PAD.search(token)
    body_end = pad.start() if pad else len(token)
    if _PATH.fullmatch(token, 0, body_end):
        return None
    if not trim or not (token[0] == "/" or (start and text[start - 1] in ".:")):
        return start, end
    # Segments as (start, end) within the token; padding stays with the last one.
    seps = _B64_SEP.finditer(token, 0, body_end)
    bounds = [0, *(x for m in seps for x in (m.start(), m.end())), body_end]
    segments = [(bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2)]
    words = [_WORD_SEGMENT.fullmatch(token, a, b) is not None for a, b in segments]
    first = words.index(False)
    if not any(b - a >= 3 for a, b in segments[:first]):
        first = 0
    last = len(segments) - 1
    if not pad:
        while words[last]:
            last -= 1
        if not any(b - a >= 3 for a, b in segments[last + 1 :]):
            last = len(segments) - 1
    core_end = segments[last][1] if last < len(segments) - 1 else len(token)
    return start + segments[first][0], start + core_end


def _credential_name(name: str) -> bool:
    """``AccountKey``, ``api_key``, ``X-Api-Key``, ``storage_account_key``, ``TOKEN``: the name, or
    its last words, is one of ``CREDENTIAL_NAMES`` (``monkey`` is not ``key``)."""
    if not name.lower().endswith(_CREDENTIAL_ENDINGS):
        return False  # most names: `utm_source`, `https`
    words = [w.lower() for w in _NAME_PART.split(name) if w]
    return any("".join(words[i:]) in CREDENTIAL_NAMES for i in range(len(words)))


def _keyed_secret(value: str) -> bool:
    """A credential's value after its name (``token=…``): long enough, and letters and digits or
    both cases (a word or a number is a setting: ``key=created_at``, ``token=1``)."""
    pad = _B64_PAD.search(value)
    if (pad.start() if pad else len(value)) < KEYED_MIN_LENGTH:
        return False
    classes = (
        any(c.islower() for c in value),
        any(c.isupper() for c in value),
        any(c.isdigit() for c in value),
    )
    return sum(classes) >= 2


def _letters_around_gap(value: str) -> bool:
    """``X::Y`` with hex letters only: one group each side of the `::` and no digit. Valid IPv6
    (``000a::000b``), but in text a scope (``a::b``, ``Cd::Ab``) or wordplay (``dead::beef``).
    Addresses in use have a digit (``2001:db8::1``, ``fe80::``, ``::1``), or three groups or more
    (``fe80::abcd:ef``); the forms that start or end with `::` (``::a``, ``abcd::``) stay too."""
    if any(c.isdigit() for c in value) or value.startswith("::") or value.endswith("::"):
        return False
    head, gap, tail = value.partition("::")
    return bool(gap) and ":" not in head and ":" not in tail


class _Finds(list[Found]):
    """The finds so far, which never overlap one another, with their spans kept in order: whether
    a new one overlaps any is two bisections. Compared with every find, 20,000 emails in one
    text (an event well under the size limit) took 10 s of the event loop."""

    def __init__(self) -> None:
        super().__init__()
        self._starts: list[int] = []
        self._ends: list[int] = []

    def overlaps(self, start: int, end: int) -> bool:
        i = bisect_right(self._starts, start)
        return (i > 0 and self._ends[i - 1] > start) or (i < len(self._starts) and self._starts[i] < end)

    def append(self, f: Found) -> None:
        i = bisect_right(self._starts, f.start)  # at the end, for finds made in order: no move
        self._starts.insert(i, f.start)
        self._ends.insert(i, f.end)
        super().append(f)


def _part_of_identifier(text: str, start: int, end: int) -> bool:
    """``ORD-2024-000123``, ``#2015550123``, ``INV/4155552671-B``: digits glued to a reference
    are a reference, however valid a phone number they would make."""
    before = text[start - 1] if start else ""
    if before == "#":
        return True
    if before in "-/_" and start >= 2 and text[start - 2].isalnum():
        return True
    after = text[end] if end < len(text) else ""
    return after in "-/_" and end + 1 < len(text) and text[end + 1].isalnum()


def _national_min_digits(region: str) -> int:
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    lengths = meta.general_desc.possible_length if meta and meta.general_desc else None
    return min(lengths) if lengths else INTERNATIONAL_MIN_DIGITS


class Scanner:
    """The enabled detectors, ready to scan strings. Build once per step; thread-safe."""

    def __init__(self, detect: Iterable[str] = ALL_TYPES, default_region: str = "US") -> None:
        types = set(detect)
        unknown = types - set(ALL_TYPES)
        if unknown:
            raise ValueError(f"unknown detector(s): {', '.join(sorted(unknown))}")
        self.types = frozenset(types)
        self.email = "email" in types
        self.ip = "ip" in types
        self.phone = "phone" in types
        self.card = "card" in types
        self.iban = "iban" in types
        self.secret = "secret" in types
        self.region = default_region
        self.phone_min_digits = min(INTERNATIONAL_MIN_DIGITS, _national_min_digits(default_region))
        self.phones = PhoneFinder(default_region) if self.phone else None
        # The least integer with digits enough for an enabled detector: for one below it (amounts,
        # counts, years, any negative number) `integer` costs one comparison.
        least = [n for n, on in ((self.phone_min_digits, self.phone), (CARD_MIN_DIGITS, self.card)) if on]
        self.integer_min = 10 ** (min(least) - 1) if least else _INTEGER_LIMIT

    def scan(self, text: str) -> list[Found]:
        """Every detected value in ``text``, in order, non-overlapping."""
        n = len(text)
        if n < 3:
            return []
        digits = n - len(text.translate(_DROP_DIGITS))  # ASCII digits
        if not digits and n < 13 and "@" not in text and ":" not in text and text.isascii():
            return []  # the common short word: nothing any detector could find
        if digits >= 8 and _ISO_TIMESTAMP.fullmatch(text):
            return []
        found = _Finds()
        if self.email and ("@" in text or "%40" in text or "%2540" in text):
            self._emails(text, found)
        if self.secret and n >= 13:
            self._secrets(text, found)
        if self.iban and digits >= 2 and n >= 15:
            self._ibans(text, found)
        if self.card and digits >= 13:
            self._cards(text, found)
        if self.ip:
            if text.count(":") >= 2:
                self._ipv6(text, found)  # first: `::ffff:192.0.2.1` is one address
            if digits >= 4 and "." in text:
                self._ipv4(text, found)
        if self.secret and n >= KEYED_MIN_LENGTH + 4:
            self._generic_secrets(text, found)
        if self.phone:
            if not text.isascii():
                digits = len(_ANY_DIGIT.findall(text))
            for f in found:  # digits already explained by an IP, a card, …
                digits -= len(f.value) - len(f.value.translate(_DROP_DIGITS))
            if digits >= self.phone_min_digits:
                self._phones(text, found)
        if len(found) > 1:
            found.sort(key=lambda f: f.start)
        return found

    def whole(self, text: str) -> Found | None:
        """The single value ``text`` consists of (surrounding whitespace aside), if any."""
        found = self.scan(text)
        if len(found) != 1:
            return None
        f = found[0]
        return f if not text[: f.start].strip() and not text[f.end :].strip() else None

    def integer(self, n: int) -> Found | None:
        """The card or phone number the integer ``n`` (a JSON number) is, its decimal digits taken
        whole; ``Found.value`` is the digits. ``n`` must not be a ``bool``.

        The digits are read as ``scan`` reads a string of them, with the same checks: a card
        (13-19 digits, network prefix, Luhn), else a phone number valid in the default region
        (which, as phonenumbers parses, may start with the region's own country code:
        ``14155550123`` in the US). A string can carry the ``+`` of an international number and
        is read as written, but an integer cannot, so failing that its digits are read after a
        ``+``: ``447911123456`` is found as ``+44 7911 123456`` with the default region US too.
        Part of a number is never a find, and negative numbers are never one.
        """
        if not self.integer_min <= n < _INTEGER_LIMIT:
            return None
        digits = str(n)
        size = len(digits)
        card = self.card and CARD_MIN_DIGITS <= size <= CARD_MAX_DIGITS
        if card and card_prefix_valid(digits) and luhn_valid(digits):
            return Found(0, size, "card", digits, digits)
        if self.phones is None or size < self.phone_min_digits:
            return None
        number = self.phones.integer(digits)
        if number is None:
            return None
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        return Found(0, size, "phone", digits, e164)

    # -- detectors: each appends what it finds that does not overlap an earlier find ------------

    def _emails(self, text: str, found: _Finds) -> None:
        if "@" in text:
            for m in _EMAIL.finditer(text):
                if not found.overlaps(m.start(), m.end()):
                    v = m.group()
                    found.append(Found(m.start(), m.end(), "email", v, v.lower()))
        if "%40" in text or "%2540" in text:
            for m in _PCT_EMAIL.finditer(text):
                if not found.overlaps(m.start(), m.end()):
                    # Canonical as written plain, so it hashes as `ada@acme.com` does.
                    v = m.group()
                    norm = _PCT_PLUS.sub("+", PCT_AT.sub("@", v)).lower()
                    found.append(Found(m.start(), m.end(), "email", v, norm))

    def _secrets(self, text: str, found: _Finds) -> None:
        if "earer" in text or "EARER" in text:
            pos = 0
            while (m := _BEARER.search(text, pos)) is not None:
                token = m.group(1)
                if token.isalpha():
                    # "bearer instruments": a token has digits or punctuation. The word may be the
                    # keyword itself ("bearer Bearer abc123…"): look again from it.
                    pos = m.start(1)
                    continue
                pos = m.end()
                if not found.overlaps(m.start(), m.end()):
                    found.append(Found(m.start(), m.end(), "secret", m.group(), token))
        if not (
            "_" in text
            or "sk-" in text
            or "xox" in text
            or "AKIA" in text
            or "ASIA" in text
            or "AIza" in text
            or "eyJ" in text
        ):
            return  # every prefixed token holds one of these; substring tests beat the regex
        for m in _PREFIXED.finditer(text):
            if not found.overlaps(m.start(), m.end()):
                found.append(Found(m.start(), m.end(), "secret", m.group(), m.group()))

    def _generic_secrets(self, text: str, found: _Finds) -> None:
        if "=" in text or ":" in text:
            for m in _NAMED.finditer(text):
                if not _credential_name(m.group(1)):
                    continue
                span = _token_core(text, m.start(2), m.end(2), trim=False)
                if span is not None and _keyed_secret(text[span[0] : span[1]]):
                    self._secret(text, span[0], span[1], found)
        if len(text) < 32:
            return
        if ("/" in text or "+" in text or "=" in text or "%" in text) and _B64_RUN.search(text):
            for m in _B64.finditer(text):
                token = m.group()
                if "/" in token or "+" in token or "=" in token or "%" in token:
                    span = _token_core(text, m.start(), m.end())
                    if span is not None and span[1] - span[0] >= 32 and looks_random(text[span[0] : span[1]]):
                        self._secret(text, span[0], span[1], found)
        for m in _GENERIC.finditer(text):
            if looks_random(m.group()) and not found.overlaps(m.start(), m.end()):
                found.append(Found(m.start(), m.end(), "secret", m.group(), m.group()))

    @staticmethod
    def _secret(text: str, start: int, end: int, found: _Finds) -> None:
        if not found.overlaps(start, end):
            value = text[start:end]
            found.append(Found(start, end, "secret", value, value))

    def _ibans(self, text: str, found: _Finds) -> None:
        n = len(text)
        for m in _IBAN_START.finditer(text):
            country = m.group()[:2].upper()
            length = IBAN_LENGTHS.get(country)
            if length is None:
                continue
            # Walk on over alphanumerics, allowing single spaces between groups, until the
            # country's length is reached: trailing words are never swallowed.
            chars = [m.group().upper()]
            count, i = 4, m.end()
            while count < length and i < n:
                c = text[i]
                if c == " " and i + 1 < n and text[i + 1].isalnum():
                    i += 1
                    c = text[i]
                if not (c.isascii() and c.isalnum()):
                    break
                chars.append(c.upper())
                count += 1
                i += 1
            if count != length or (i < n and text[i].isascii() and text[i].isdigit()):
                continue
            iban = "".join(chars)
            if iban_valid(iban) and not found.overlaps(m.start(), i):
                found.append(Found(m.start(), i, "iban", text[m.start() : i], iban))

    def _cards(self, text: str, found: _Finds) -> None:
        for m in _CARD.finditer(text):
            digits = _CARD_SEP.sub("", m.group())
            if card_prefix_valid(digits) and luhn_valid(digits):
                if not found.overlaps(m.start(), m.end()):
                    found.append(Found(m.start(), m.end(), "card", m.group(), digits))
                continue
            self._card_windows(text, m.start(), m.group(), found)

    def _card_windows(self, text: str, offset: int, run: str, found: _Finds) -> None:
        """A grouped run that is not one card may hold one next to other digits
        (``4242 4242 4242 4242 12``): try runs of whole groups, longest first."""
        groups = [(g.start(), g.end()) for g in _DIGIT_GROUP.finditer(run)]
        if len(groups) < 2:
            return
        # counts[k]: the digits in groups[:k]. A window's network prefix is that of its first
        # group (and the next three), so a start with none is passed over whatever the end.
        counts = [0, *accumulate(end - start for start, end in groups)]
        i = 0
        while i < len(groups):
            if counts[-1] - counts[i] < 13:
                return  # too few digits left for a card
            head = _CARD_SEP.sub("", run[groups[i][0] : groups[min(i + 3, len(groups) - 1)][1]])
            best: tuple[int, int] | None = None
            if card_prefix_valid(head):
                for j in range(len(groups) - 1, i - 1, -1):
                    if not 13 <= counts[j + 1] - counts[i] <= 19:
                        continue
                    start, end = groups[i][0], groups[j][1]
                    digits = _CARD_SEP.sub("", run[start:end])
                    if luhn_valid(digits):
                        best = (j, end)
                        break
            if best is None:
                i += 1
                continue
            start, end = offset + groups[i][0], offset + best[1]
            if not found.overlaps(start, end):
                value = text[start:end]
                found.append(Found(start, end, "card", value, _CARD_SEP.sub("", value)))
            i = best[0] + 1

    def _ipv4(self, text: str, found: _Finds) -> None:
        for m in _IPV4.finditer(text):
            value = m.group()
            if not ipv4_valid(value) or found.overlaps(m.start(), m.end()):
                continue  # 999.1.1.1, leading zeros
            found.append(Found(m.start(), m.end(), "ip", value, value))

    def _ipv6(self, text: str, found: _Finds) -> None:
        for m in _IPV6.finditer(text):
            value = m.group()
            if value.strip(":") == "":
                continue  # a bare `::` is punctuation far more often than an address
            if _letters_around_gap(value):
                continue  # `a::b`, `dead::beef`: a scope (`std::vector`) or wordplay
            try:
                addr = ipaddress.IPv6Address(value)
            except ValueError:
                continue  # times (12:30:45), MAC addresses, C++ scopes
            if not found.overlaps(m.start(), m.end()):
                found.append(Found(m.start(), m.end(), "ip", value, str(addr)))

    def _phones(self, text: str, found: _Finds) -> None:
        assert self.phones is not None
        # What the other detectors found, in order: their spans never overlap one another.
        spans = sorted((f.start, f.end) for f in found)
        starts = [start for start, _ in spans]
        # Only look for numbers when some run of digits long enough for a phone number is not
        # already explained by a date, an IP, a card, …
        for m in _PHONE_RUN.finditer(text):
            run = m.group()
            count = (
                len(run) - len(run.translate(_DROP_DIGITS)) if run.isascii() else len(_ANY_DIGIT.findall(run))
            )
            if count < self.phone_min_digits or _DATE_RUN.fullmatch(run):
                continue
            i = bisect_right(starts, m.start()) - 1
            if i >= 0 and m.end() <= spans[i][1]:
                continue  # inside one found value
            break
        else:
            return
        for pm in self.phones.find(text):
            i = bisect_left(starts, pm.end) - 1  # the last found value starting before this ends
            if (i >= 0 and spans[i][1] > pm.start) or _part_of_identifier(text, pm.start, pm.end):
                continue
            e164 = phonenumbers.format_number(pm.number, phonenumbers.PhoneNumberFormat.E164)
            found.append(Found(pm.start, pm.end, "phone", pm.raw, e164))
