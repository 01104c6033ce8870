"""Signatures for outbound webhook requests.

Two schemes are produced, both pure functions of (secrets, timestamp, body) so the dispatcher can sign
a request without any I/O and tests can pin exact values:

* ``X-Ingestlayer-Signature: t=<unix seconds>,v1=<hex>`` where ``<hex>`` is
  ``HMAC-SHA256(key=secret.encode("utf-8"), msg=b"<t>." + body)``. This is byte-for-byte the scheme
  Stripe uses for ``Stripe-Signature``, so receivers can reuse Stripe's verification code (only the
  header name differs). The *whole* secret string, ``whsec_`` prefix included, is the HMAC key.
* `Standard Webhooks <https://www.standardwebhooks.com>`_ headers ``webhook-id``,
  ``webhook-timestamp`` and ``webhook-signature`` (sent in addition when a destination is configured
  with ``signing: standard``). The signature is ``"v1," + base64(HMAC-SHA256(key, b"<id>.<t>." +
  body))`` where ``key`` is the base64-*decoded* secret after an optional ``whsec_`` prefix, exactly as
  the ``standardwebhooks`` reference package computes it.

During secret rotation every active secret signs the request, in the order given, so a receiver that
knows either the old or the new secret accepts it: several ``v1=`` entries in our header, several
space-separated ``v1,<sig>`` entries in ``webhook-signature``.

Example::

    >>> body = b'{"type":"user.signed_up"}'
    >>> header = ingestlayer_signature(["whsec_test"], 1717000000, body)
    >>> header.startswith("t=1717000000,v1=")
    True
    >>> headers = standard_webhooks_headers(["whsec_test"], "msg_1", 1717000000, body)
    >>> sorted(headers)
    ['webhook-id', 'webhook-signature', 'webhook-timestamp']
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as _secrets
from collections.abc import Sequence
from typing import Literal

__all__ = [
    "SIGNATURE_HEADER",
    "STANDARD_ID_HEADER",
    "STANDARD_SECRET_PREFIX",
    "STANDARD_SIGNATURE_HEADER",
    "STANDARD_TIMESTAMP_HEADER",
    "generate_secret",
    "ingestlayer_signature",
    "standard_webhooks_headers",
    "validate_standard_secret",
]

SIGNATURE_HEADER = "X-Ingestlayer-Signature"
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
STANDARD_SECRET_PREFIX = "whsec_"

# 32 bytes = 256 bits, the HMAC-SHA256 block-size sweet spot and inside the 24..64 byte range the
# Standard Webhooks spec recommends.
_SECRET_BYTES = 32

# Standard base64 alphabet with at most two trailing pad characters. Python's default (non-strict)
# b64decode, which the standardwebhooks package uses, silently *drops* characters outside the alphabet,
# so a URL-safe or whitespace-polluted secret would quietly become a different key there. We refuse
# such secrets instead of signing with a key the receiver may not derive.
_STANDARD_B64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")

# A message id goes into a header and into the signed content; control characters or whitespace
# there would allow header injection or make the signed string ambiguous for receivers.
_MSG_ID = re.compile(r"[\x21-\x7e]+")


def _secret_list(secrets: Sequence[str]) -> list[str]:
    # A bare str is itself a Sequence[str]; iterating it would sign with one "secret" per character.
    if isinstance(secrets, str):
        raise TypeError("secrets must be a sequence of secrets, e.g. [secret], not a single string")
    secret_list = list(secrets)
    if not secret_list:
        raise ValueError("at least one signing secret is required")
    for i, secret in enumerate(secret_list):
        if not isinstance(secret, str):
            raise TypeError(f"secrets[{i}] must be a str, got {type(secret).__name__}")
        if not secret:
            # HMAC with an empty key is "valid" but authenticates nothing.
            raise ValueError(f"secrets[{i}] is empty")
    return secret_list


def _check_timestamp(timestamp: int) -> None:
    # bool is an int subclass; a float would render as "1717000000.5" and break every verifier.
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        raise TypeError(f"timestamp must be an int (unix seconds), got {type(timestamp).__name__}")
    if timestamp < 0:
        raise ValueError(f"timestamp must be non-negative, got {timestamp}")


def _check_body(body: bytes) -> None:
    # The signature covers the exact bytes on the wire; a str would need an encoding we'd have to guess.
    if not isinstance(body, bytes):
        raise TypeError(f"body must be bytes (the exact request body), got {type(body).__name__}")


def _standard_key(secret: str) -> bytes:
    """Decode a Standard Webhooks secret to its HMAC key, refusing anything ambiguous."""
    raw = secret.removeprefix(STANDARD_SECRET_PREFIX)
    if not _STANDARD_B64.fullmatch(raw):
        # Never echo the secret (it ends up in logs); say what kind of problem it is instead.
        hint = ""
        if "-" in raw or "_" in raw:
            hint = " (it looks like URL-safe base64; use the standard alphabet with + and /)"
        elif any(c.isspace() for c in raw):
            hint = " (it contains whitespace; check for a trailing newline)"
        raise ValueError(
            "Standard Webhooks secret must be base64 (A-Z a-z 0-9 + / with optional '=' padding) "
            f"after an optional {STANDARD_SECRET_PREFIX!r} prefix{hint}"
        )
    data = raw.rstrip("=")
    if not data:
        raise ValueError("Standard Webhooks secret is empty after removing the prefix and padding")
    if len(data) % 4 == 1:
        # 6 bits cannot encode a byte: one leftover character means the secret was truncated.
        raise ValueError(
            "Standard Webhooks secret is not valid base64: its length is impossible (truncated?)"
        )
    try:
        # Re-pad ourselves: the reference implementation accepts unpadded secrets, so we do too.
        return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except binascii.Error as exc:  # pragma: no cover - the regex and length check rule this out
        raise ValueError(f"Standard Webhooks secret is not valid base64: {exc}") from None


def validate_standard_secret(secret: str) -> None:
    """Raise :class:`ValueError` unless ``secret`` is usable for Standard Webhooks signing.

    The secret is ``[whsec_]<base64>``; padding may be omitted. Check this when a destination is
    configured, not when the first delivery is signed.

    Example::

        >>> validate_standard_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        >>> validate_standard_secret("whsec_not-base64!")
        Traceback (most recent call last):
        ...
        ValueError: Standard Webhooks secret must be base64 ...
    """
    _standard_key(secret)


def ingestlayer_signature(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """Return the ``X-Ingestlayer-Signature`` value: ``t=<timestamp>,v1=<hex>[,v1=<hex>...]``.

    One ``v1=`` entry per secret, in the order given (pass ``[new, old]`` while rotating).

    Example::

        >>> ingestlayer_signature(["s3cret"], 1717000000, b"{}")
        't=1717000000,v1=...'
    """
    secret_list = _secret_list(secrets)
    _check_timestamp(timestamp)
    _check_body(body)
    signed = f"{timestamp}.".encode("ascii") + body
    entries = [f"t={timestamp}"]
    entries.extend(
        "v1=" + hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest() for secret in secret_list
    )
    return ",".join(entries)


def standard_webhooks_headers(
    secrets: Sequence[str], msg_id: str, timestamp: int, body: bytes
) -> dict[str, str]:
    """Return the Standard Webhooks ``webhook-id``/``-timestamp``/``-signature`` headers.

    ``msg_id`` should be stable across retries of the same message so receivers can deduplicate.

    Example::

        >>> h = standard_webhooks_headers(["whsec_dGVzdA=="], "msg_1", 1717000000, b"{}")
        >>> h["webhook-id"], h["webhook-timestamp"], h["webhook-signature"][:3]
        ('msg_1', '1717000000', 'v1,')
    """
    secret_list = _secret_list(secrets)
    # Decode every key before signing anything, so one bad secret fails the whole call clearly.
    keys = [_standard_key(secret) for secret in secret_list]
    if not isinstance(msg_id, str) or not _MSG_ID.fullmatch(msg_id):
        raise ValueError("msg_id must be a non-empty string of printable ASCII without spaces")
    _check_timestamp(timestamp)
    _check_body(body)
    signed = f"{msg_id}.{timestamp}.".encode("ascii") + body
    signatures = " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode("ascii")
        for key in keys
    )
    return {
        STANDARD_ID_HEADER: msg_id,
        STANDARD_TIMESTAMP_HEADER: str(timestamp),
        STANDARD_SIGNATURE_HEADER: signatures,
    }


def generate_secret(kind: Literal["hmac", "standard"] = "hmac") -> str:
    """Return a new random signing secret: ``"whsec_" + base64(32 random bytes)``.

    Both kinds currently return the same format on purpose: the string is a fine HMAC key for
    ``X-Ingestlayer-Signature`` (used verbatim, like Stripe's ``whsec_`` secrets) *and* a valid
    Standard Webhooks secret (base64 after the prefix), so one secret serves a destination whichever
    ``signing`` mode it uses or switches to later. ``kind`` documents intent at the call site.

    Example::

        >>> secret = generate_secret()
        >>> secret.startswith("whsec_") and len(secret) == 50
        True
        >>> validate_standard_secret(secret)
    """
    if kind not in ("hmac", "standard"):
        raise ValueError(f"kind must be 'hmac' or 'standard', got {kind!r}")
    return STANDARD_SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(_SECRET_BYTES)).decode("ascii")
