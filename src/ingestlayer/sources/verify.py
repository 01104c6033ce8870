"""Inbound signature schemes, as pure functions over (secret, headers, raw body).

Each raises :class:`IngressAuthError` with a reason a sender's operator can act on. The raw body
is verified before anything parses it.

- ``stripe``: ``Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`` (several v1
  during rotation), the whole secret string (``whsec_…``) as the key, as Stripe's libraries do.
- ``github``: ``X-Hub-Signature-256: sha256=<hex HMAC-SHA256(secret, body)>``.
- ``standard-webhooks``: ``webhook-id``/``webhook-timestamp``/``webhook-signature`` (``v1,<base64>``),
  the key is base64 of the secret without its ``whsec_`` prefix. Senders on Svix, where the
  standard began, send the same three as ``svix-id``/``svix-timestamp``/``svix-signature``:
  :func:`standard_headers` reads those where no ``webhook-id`` is sent.
- ``hmac-sha256``: a configurable header, hex or base64, optional prefix, and optionally a
  timestamp header whose value is signed as ``"<timestamp>.<body>"``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_TOLERANCE = 300


class IngressAuthError(Exception):
    """The request is not authentic (answered 401)."""


class SourceSecretError(ValueError):
    """The source's own secret cannot be used as its scheme needs (the operator's to fix)."""


# Unix seconds have 10 digits until 2286; 15 leaves room for a sender that sends milliseconds
# by mistake (told how far off it is) while keeping the arithmetic away from float overflow.
_MAX_TIMESTAMP_DIGITS = 15


@dataclass(frozen=True)
class HmacOptions:
    header: str = "X-Signature"
    encoding: str = "hex"  # hex | base64
    prefix: str = ""  # e.g. "sha256="
    timestamp_header: str | None = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    lname = name.lower()
    for k, v in headers.items():
        if k.lower() == lname:
            return v
    return None


def _require(headers: Mapping[str, str], name: str) -> str:
    value = _header(headers, name)
    if not value:
        raise IngressAuthError(f"missing {name} header")
    return value


def _mac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _fresh(timestamp: str, tolerance: int, now: float | None) -> int:
    # ASCII digits only: int() also takes "1_700", " 17 " and other scripts' digits, and a
    # number of 400 digits overflows the float clock (a 500 instead of this 401).
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
        raise IngressAuthError("the signature timestamp is not a Unix time in seconds")
    ts = int(timestamp)
    age = (time.time() if now is None else now) - ts
    if abs(age) > tolerance:
        raise IngressAuthError(f"the signature timestamp is {int(abs(age))} s off (tolerance {tolerance} s)")
    return ts


def _any_match(expected: bytes, candidates: list[bytes]) -> bool:
    return any(hmac.compare_digest(expected, c) for c in candidates)


def verify_stripe(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    header = _require(headers, "Stripe-Signature")
    timestamp = None
    candidates: list[bytes] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            try:
                candidates.append(bytes.fromhex(value))
            except ValueError:
                continue
    if timestamp is None or not candidates:
        raise IngressAuthError("malformed Stripe-Signature header: expected t=… and v1=…")
    _fresh(timestamp, tolerance, now)
    expected = _mac(secret.encode(), timestamp.encode() + b"." + body)
    if not _any_match(expected, candidates):
        raise IngressAuthError("no Stripe-Signature v1 signature matches the body")


def verify_github(secret: str, headers: Mapping[str, str], body: bytes) -> None:
    header = _require(headers, "X-Hub-Signature-256")
    if not header.startswith("sha256="):
        raise IngressAuthError("malformed X-Hub-Signature-256 header: expected sha256=<hex>")
    try:
        given = bytes.fromhex(header[7:])
    except ValueError:
        raise IngressAuthError("malformed X-Hub-Signature-256 header: not hex") from None
    if not hmac.compare_digest(_mac(secret.encode(), body), given):
        raise IngressAuthError("X-Hub-Signature-256 does not match the body")


STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")


def standard_headers(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` (lower-case names) with Svix's ``svix-*`` names read as the standard's
    ``webhook-*`` ones, when the request has no ``webhook-id``: the same signature scheme under
    its older names, still sent by many Svix-powered senders. A request that sends
    ``webhook-id`` is read by the standard's names alone, never a mix of the two."""
    if "webhook-id" in headers or "svix-id" not in headers:
        return headers
    aliased = dict(headers)
    for name in STANDARD_HEADERS:
        old = "svix-" + name.removeprefix("webhook-")
        if old in headers:
            aliased[name] = headers[old]
    return aliased


def standard_key(secret: str) -> bytes:
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    # An empty key would verify signatures anyone can compute.
    if not key:
        raise SourceSecretError(
            "a standard-webhooks secret must be non-empty base64, optionally prefixed whsec_"
        )
    return key


def verify_standard(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    msg_id = _require(headers, "webhook-id")
    timestamp = _require(headers, "webhook-timestamp")
    signatures = _require(headers, "webhook-signature")
    _fresh(timestamp, tolerance, now)
    expected = _mac(standard_key(secret), f"{msg_id}.{timestamp}.".encode() + body)
    candidates = []
    for sig in signatures.split():
        version, _, value = sig.partition(",")
        if version != "v1":
            continue
        try:
            candidates.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):
            continue
    if not _any_match(expected, candidates):
        raise IngressAuthError("no webhook-signature v1 signature matches the body")


def verify_hmac(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    options: HmacOptions,
    *,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    given = _require(headers, options.header).strip()
    if options.prefix:
        if not given.startswith(options.prefix):
            raise IngressAuthError(
                f"malformed {options.header} header: expected the prefix {options.prefix!r}"
            )
        given = given[len(options.prefix) :]
    message = body
    if options.timestamp_header:
        timestamp = _require(headers, options.timestamp_header)
        _fresh(timestamp, tolerance, now)
        message = timestamp.encode() + b"." + body
    try:
        raw = bytes.fromhex(given) if options.encoding == "hex" else base64.b64decode(given, validate=True)
    except (ValueError, binascii.Error):
        raise IngressAuthError(f"malformed {options.header} header: not {options.encoding}") from None
    if not hmac.compare_digest(_mac(secret.encode(), message), raw):
        raise IngressAuthError(f"{options.header} does not match the body")
