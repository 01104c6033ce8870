"""What a detected value becomes: a mask that keeps a hint, a keyed hash, or a replacement.

``remove`` is not rendered here: whether a value disappears with its field or becomes ``""``
depends on where it sits, which the step decides.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from typing import Final, Literal

from ingestlayer.pipeline.steps.pii.detectors import PCT_AT, Found

Mode = Literal["mask", "hash", "remove", "replace"]
DEFAULT_REPLACEMENT: Final = "[REDACTED]"
# `replacement: type` → one marker per type.
TYPE_MARKERS: Final[dict[str, str]] = {
    "email": "[EMAIL]",
    "ip": "[IP]",
    "phone": "[PHONE]",
    "card": "[CARD]",
    "iban": "[IBAN]",
    "secret": "[SECRET]",
}
HASH_HEX_CHARS: Final = 16  # 64 bits: ample to join on, not enough to invert a guess cheaply


def mask(found: Found) -> str:
    """The value with a hint kept, e.g. ``a***@acme.com`` or ``**** **** **** 4242``."""
    kind, value = found.type, found.value
    if kind == "email":
        local, at, domain = value.rpartition("@")
        if not at and (m := PCT_AT.search(value)) is not None:  # `ada%40acme.com`: encoded it stays
            local, at, domain = value[: m.start()], m.group(), value[m.end() :]
        return f"{local[:1]}***{at}{domain}"
    if kind == "ip":
        if ":" not in found.norm:
            return found.norm.rsplit(".", 1)[0] + ".***"
        groups = [g.lstrip("0") or "0" for g in ipaddress.IPv6Address(found.norm).exploded.split(":")[:4]]
        return ":".join(groups) + ":****:****:****:****"  # the /64 network stays readable
    if kind == "phone":
        return _mask_phone(value)
    if kind == "card":
        return "**** **** **** " + found.norm[-4:]
    if kind == "iban":
        return found.norm[:2] + "*" * (len(found.norm) - 6) + found.norm[-4:]
    if kind == "secret":
        scheme, sep, _ = value.partition(" ")
        if sep and scheme.lower() == "bearer":
            return f"{scheme} {found.norm[:4]}***"
        return value[:4] + "***"
    return "***"


def _mask_phone(raw: str) -> str:
    """Keep the formatting and the last 4 digits (3 for numbers under 10 digits, 2 under 8)."""
    total = sum(c.isdigit() for c in raw)
    keep = 4 if total >= 10 else 3 if total >= 8 else 2
    out: list[str] = []
    seen = 0
    for c in raw:
        if c.isdigit():
            seen += 1
            out.append(c if seen > total - keep else "*")
        else:
            out.append(c)
    return "".join(out)


def keyed_hash(found: Found, key: bytes) -> str:
    """``<type>_<16 hex>``: HMAC-SHA256 of the canonical value under the project's key."""
    digest = hmac.new(key, found.norm.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"{found.type}_{digest[:HASH_HEX_CHARS]}"


class Renderer:
    """Turns found values into their redacted text for one mode."""

    def __init__(self, mode: Mode, replacement: str | None = None) -> None:
        self.mode = mode
        self.per_type = replacement == "type"
        self.replacement = (
            replacement if replacement is not None and not self.per_type else DEFAULT_REPLACEMENT
        )

    def render(self, found: Found, key: bytes = b"") -> str:
        if self.mode == "mask":
            return mask(found)
        if self.mode == "hash":
            return keyed_hash(found, key)
        if self.mode == "remove":
            return ""
        if self.per_type:
            return TYPE_MARKERS.get(found.type, DEFAULT_REPLACEMENT)
        return self.replacement
