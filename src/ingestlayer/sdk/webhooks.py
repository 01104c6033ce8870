"""Verify webhooks sent by ingestlayer, in your receiver.

Call :func:`verify` with your endpoint's signing secret, the request headers and the *raw* request
body (the exact bytes received, before any JSON parsing: re-serialised JSON will not verify). It
returns the parsed JSON payload, or raises :class:`WebhookVerificationError` saying why the request
must be rejected (answer it with a 400).

Two signature schemes are understood:

* ``X-Ingestlayer-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]``, the Stripe scheme:
  ``HMAC-SHA256(key=secret.encode("utf-8"), msg=b"<t>." + body)``; entries with other schemes
  (``v0=``...) are ignored so the header can evolve.
* `Standard Webhooks <https://www.standardwebhooks.com>`_ (``webhook-id``, ``webhook-timestamp``,
  ``webhook-signature``), used only when ``X-Ingestlayer-Signature`` is absent. The key is the
  base64-decoded secret after an optional ``whsec_`` prefix.

While a secret is being rotated, pass both the new and the old secret; either one matching suffices.

This module depends on the standard library only (``orjson`` is used when installed) so it can be
vendored into a receiver as a single file.

Example (FastAPI)::

    from fastapi import FastAPI, HTTPException, Request
    from ingestlayer.sdk.webhooks import WebhookVerificationError, verify

    app = FastAPI()

    @app.post("/webhooks/ingestlayer")
    async def receive(request: Request) -> dict[str, bool]:
        try:
            event = verify(SECRET, request.headers, await request.body())
        except WebhookVerificationError as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from None
        handle(event)
        return {"ok": True}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_TOLERANCE", "SIGNATURE_HEADER", "WebhookVerificationError", "verify"]

SIGNATURE_HEADER = "X-Ingestlayer-Signature"
DEFAULT_TOLERANCE = 300

_SIG = SIGNATURE_HEADER.lower()
_STD_ID = "webhook-id"
_STD_TS = "webhook-timestamp"
_STD_SIG = "webhook-signature"
_STANDARD_PREFIX = "whsec_"

# Unix seconds as plain ASCII digits. str.isdigit() would also accept e.g. "²", and an unbounded
# length would let a hostile header trip int()'s digit limit; 15 digits is ~31 million years.
_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# Same rule as the sender (ingestlayer.delivery.signing): the standard alphabet only, because the
# lenient decoder would silently drop stray characters and derive a different key.
_STANDARD_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def _json_loader() -> Callable[[bytes], Any]:
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is a dependency of the full package
        return json.loads

    def loads(body: bytes) -> Any:
        # orjson reads integers beyond 64 bits as floats: hand bodies that may hold one to the
        # standard library, which keeps them exact.
        if _LONG_DIGITS.search(body):
            return json.loads(body)
        return orjson.loads(body)

    return loads


_LONG_DIGITS = re.compile(rb"\d{19,}")
_loads = _json_loader()


class WebhookVerificationError(Exception):
    """The request did not come from ingestlayer (or was altered, or replayed): reject it.

    The message says why: a missing header, a malformed header, a timestamp outside the tolerance,
    no signature matching any of your secrets, or a body that is not JSON.
    """


def _secret_list(secret: str | Sequence[str]) -> list[str]:
    # A str is itself a Sequence[str]: treat it as one secret, never as a list of characters.
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets:
        raise ValueError("at least one webhook secret is required")
    for i, item in enumerate(secrets):
        if not isinstance(item, str):
            raise TypeError(f"secret[{i}] must be a str, got {type(item).__name__}")
        if not item:
            # An empty key would accept anything signed with an empty key: refuse the misconfiguration.
            raise ValueError(f"secret[{i}] is empty; check your configuration")
    return secrets


def _find_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Pick the headers we care about, case-insensitively (HTTP header names are)."""
    wanted = {_SIG, _STD_ID, _STD_TS, _STD_SIG}
    found: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key not in wanted:
            continue
        # A plain dict may hold "X-Foo" and "x-foo" at once; if they disagree we cannot know which
        # one the proxy chain meant, and guessing would let an attacker pick.
        if key in found and found[key] != value:
            raise WebhookVerificationError(f"malformed header: conflicting values for {key}")
        found[key] = value
    return found


def _check_timestamp(timestamp: int, tolerance: int, now: float) -> None:
    # Both directions: an old timestamp is a replay, a future one lets a captured request be replayed
    # later (and usually means the sender's or receiver's clock is wrong).
    age = now - timestamp
    if age > tolerance:
        raise WebhookVerificationError(
            f"timestamp outside tolerance: {age:.0f}s old (tolerance {tolerance}s); replayed or clock skew?"
        )
    if -age > tolerance:
        raise WebhookVerificationError(
            f"timestamp outside tolerance: {-age:.0f}s in the future (tolerance {tolerance}s); clock skew?"
        )


def _verify_ingestlayer(secrets: list[str], header: str, body: bytes, tolerance: int, now: float) -> None:
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            raise WebhookVerificationError(f"malformed header: {SIGNATURE_HEADER} entry without '='")
        if key == "t":
            if timestamp is not None:
                raise WebhookVerificationError(f"malformed header: {SIGNATURE_HEADER} has several t= entries")
            if not _TIMESTAMP.fullmatch(value):
                raise WebhookVerificationError(f"malformed header: {SIGNATURE_HEADER} t= is not unix seconds")
            timestamp = int(value)
        elif key == "v1":
            if not _HEX_SHA256.fullmatch(value):
                raise WebhookVerificationError(
                    f"malformed header: {SIGNATURE_HEADER} v1= is not a hex SHA-256"
                )
            signatures.append(value.lower())
        # Other schemes (v0=, future v2=) are skipped so senders can add them without breaking us.
    if timestamp is None:
        raise WebhookVerificationError(f"malformed header: {SIGNATURE_HEADER} has no t= timestamp")
    if not signatures:
        raise WebhookVerificationError(f"malformed header: {SIGNATURE_HEADER} has no v1= signature")
    _check_timestamp(timestamp, tolerance, now)

    signed = f"{timestamp}.".encode("ascii") + body
    for secret in secrets:
        expected = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
        # compare_digest: the time taken must not reveal how many leading characters matched.
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return
    raise WebhookVerificationError("no matching signature: wrong secret, or the body was modified")


def _standard_key(secret: str) -> bytes:
    raw = secret.removeprefix(_STANDARD_PREFIX)
    data = raw.rstrip("=")
    if not _STANDARD_B64.fullmatch(raw) or not data or len(data) % 4 == 1:
        # A configuration error on the receiver's side, not a bad request: hence ValueError.
        raise ValueError(
            "Standard Webhooks secret must be non-empty base64 (A-Z a-z 0-9 + /, optional '=' padding) "
            f"after an optional {_STANDARD_PREFIX!r} prefix"
        )
    return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)


def _verify_standard(
    secrets: list[str], found: dict[str, str], body: bytes, tolerance: int, now: float
) -> None:
    missing = [name for name in (_STD_ID, _STD_TS, _STD_SIG) if not found.get(name)]
    if missing:
        raise WebhookVerificationError(f"missing header: {', '.join(missing)}")
    msg_id, raw_ts, raw_sigs = found[_STD_ID], found[_STD_TS].strip(), found[_STD_SIG]
    if not _TIMESTAMP.fullmatch(raw_ts):
        raise WebhookVerificationError(f"malformed header: {_STD_TS} is not unix seconds")
    timestamp = int(raw_ts)

    signatures: list[bytes] = []
    for entry in raw_sigs.split():
        version, sep, value = entry.partition(",")
        if not sep:
            raise WebhookVerificationError(
                f"malformed header: {_STD_SIG} entry is not '<version>,<signature>'"
            )
        if version != "v1":
            # e.g. v1a (asymmetric ed25519) signatures: not ours to check here.
            continue
        try:
            signatures.append(base64.b64decode(value, validate=True))
        except (binascii.Error, ValueError):  # ValueError: text that is not ASCII
            raise WebhookVerificationError(
                f"malformed header: {_STD_SIG} v1 signature is not base64"
            ) from None
    if not signatures:
        raise WebhookVerificationError(f"malformed header: {_STD_SIG} has no v1 signature")
    _check_timestamp(timestamp, tolerance, now)

    # Sign the canonical integer form, as the reference implementation does.
    signed = f"{msg_id}.{timestamp}.".encode() + body
    # A secret that is not base64 cannot have signed in this scheme (the sender refuses it for
    # `signing: standard`): it is no match, not an error of the receiver. Raising ValueError here
    # let one unsigned request with these headers crash a receiver keyed with such a secret.
    keys = [key for key in map(_standard_key_or_none, secrets) if key is not None]
    for key in keys:
        expected = hmac.new(key, signed, hashlib.sha256).digest()
        if any(hmac.compare_digest(expected, candidate) for candidate in signatures):
            return
    if not keys:
        raise WebhookVerificationError(
            "no matching signature: a Standard Webhooks signature, but no secret given is one "
            f"(base64, optionally {_STANDARD_PREFIX!r}-prefixed)"
        )
    raise WebhookVerificationError("no matching signature: wrong secret, or the body was modified")


def _standard_key_or_none(secret: str) -> bytes | None:
    try:
        return _standard_key(secret)
    except ValueError:
        return None


def verify(
    secret: str | Sequence[str],
    headers: Mapping[str, str],
    raw_body: bytes | str,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> Any:
    """Check that a webhook request came from ingestlayer and return its parsed JSON body.

    ``secret`` is your endpoint's signing secret, or several (new and old) during rotation.
    ``headers`` is any mapping of request headers; names are matched case-insensitively.
    ``raw_body`` is the exact body received (a ``str`` is encoded as UTF-8). Timestamps more than
    ``tolerance`` seconds before or after ``now`` (default: the current time) are rejected.

    Raises :class:`WebhookVerificationError` when the request must be rejected (a Standard
    Webhooks signature when no secret given is base64 among them), and :class:`ValueError` for a
    misconfiguration on your side (no secret, a negative tolerance).

    Example::

        >>> from ingestlayer.delivery.signing import ingestlayer_signature
        >>> body = b'{"type":"user.signed_up"}'
        >>> headers = {"X-Ingestlayer-Signature": ingestlayer_signature(["whsec_s3cret"], 1717000000, body)}
        >>> verify("whsec_s3cret", headers, body, now=1717000010)
        {'type': 'user.signed_up'}
        >>> verify("whsec_other", headers, body, now=1717000010)
        Traceback (most recent call last):
        ...
        ingestlayer.sdk.webhooks.WebhookVerificationError: no matching signature: ...
    """
    secrets = _secret_list(secret)
    if isinstance(tolerance, bool) or not isinstance(tolerance, int) or tolerance < 0:
        raise ValueError(f"tolerance must be a non-negative int (seconds), got {tolerance!r}")
    if isinstance(raw_body, str):
        body = raw_body.encode("utf-8")
    elif isinstance(raw_body, bytes | bytearray | memoryview):
        body = bytes(raw_body)
    else:
        # bytes(5) would quietly be five NUL bytes; a parsed dict would need re-serialising, which
        # cannot reproduce the signed bytes. Both are caller bugs worth a clear message.
        raise TypeError(
            f"raw_body must be the raw request body (bytes or str), got {type(raw_body).__name__}"
        )
    current = time.time() if now is None else now

    found = _find_headers(headers)
    # Our own header wins whenever present: falling back to another scheme after it failed would let
    # an attacker choose the weaker check.
    if _SIG in found:
        _verify_ingestlayer(secrets, found[_SIG], body, tolerance, current)
    elif found.keys() & {_STD_ID, _STD_TS, _STD_SIG}:
        _verify_standard(secrets, found, body, tolerance, current)
    else:
        raise WebhookVerificationError(
            f"missing header: expected {SIGNATURE_HEADER} (or Standard Webhooks webhook-id, "
            "webhook-timestamp and webhook-signature)"
        )

    try:
        return _loads(body)
    except ValueError as exc:  # json.JSONDecodeError and orjson.JSONDecodeError are both ValueErrors
        raise WebhookVerificationError(f"signature is valid but the body is not JSON: {exc}") from None
