"""``redact.pii`` (MUT): mask, hash, remove or replace PII in named fields or anywhere in the payload.

Detects emails, IPs (v4 and v6), phone numbers (``phonenumbers``, valid numbers only), card
numbers (Luhn), IBANs (mod-97) and secrets (API keys, tokens, JWTs, ``Bearer …``) in strings,
and, in the fields named, phone and card numbers sent as JSON integers (``{"phone":
14155550123}``), redacted as the same number in a string is (so they become strings:
``"*******0123"``). With ``destinations`` it changes only what those destinations receive.
The full reference is docs/steps/redact-pii.md.

Example::

    steps:
      - redact.pii:
          detect: [email, ip]
          fields: [email, user.email, body]
          whole_fields: [ip]
          mode: mask
          destinations: [chat]
      - redact.pii:
          mode: hash
          hash_key: ref:pii-hash-key
          destinations: [warehouse]

The first step masks emails in ``email``, ``user.email`` and ``body`` (free text keeps its other
words) and masks ``ip`` whole, for the ``chat`` destination only; the second hashes every email,
IP, phone, card, IBAN and secret anywhere in the payload, with a stored key, for ``warehouse``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Final

import orjson
import phonenumbers
from pydantic import BaseModel, Field, field_validator, model_validator

from ingestlayer.destinations.shared import check_reference
from ingestlayer.pipeline.event import Drop, OnError, PipelineEvent, StepConfig, StepContext
from ingestlayer.pipeline.paths import MISSING, delete_path, get_path, set_path
from ingestlayer.pipeline.steps.pii.detectors import ALL_TYPES, Found, PiiType, Scanner
from ingestlayer.pipeline.steps.pii.render import Mode, Renderer

_PATH_RE: Final = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")


class _Removed:
    """Sentinel: the value was PII through and through and `mode: remove` deletes it."""


REMOVED: Final = _Removed()


def _listify(v: Any) -> Any:
    return [v] if isinstance(v, str) else v


class RedactPiiConfig(StepConfig):
    on_error: OnError = Field(
        default="drop",
        description="When the step fails (only possible in `hash` mode, when `hash_key` cannot be "
        "resolved): `drop` (the default here: fail closed, never pass PII on unredacted), `skip` the "
        "step, or `retry` the event later. The failure is recorded in the event's trace.",
    )
    detect: list[PiiType] = Field(
        default_factory=lambda: list(ALL_TYPES),
        min_length=1,
        description="What to look for: any of `email`, `ip` (IPv4 and IPv6), `phone`, `card` "
        "(Luhn-valid card numbers), `iban` (mod-97 valid), `secret` (API keys, tokens, JWTs, "
        "`Bearer …`). Default: all of them.",
    )
    fields: list[str] | None = Field(
        default=None,
        description="Dotted payload paths to scan (`email`, `user.email`, `body`). In a string only "
        "the detected values are replaced, so free text keeps its other words and a field that is "
        "one email becomes one masked email; an object or list is scanned throughout. An integer "
        "whose digits, taken whole, are one phone or card number (read as written or, since a "
        "number cannot carry a `+`, after one) is redacted as that number in a string would be, so "
        "it becomes a string (`remove`: is removed); other numbers, floats, booleans and null are "
        "left alone. Omit to scan every string anywhere in the payload (integers there are left "
        "alone: most are ids, amounts and timestamps, and many of those read as phone numbers; "
        "name the fields that hold numbers as PII); `[]` scans nothing (use with `whole_fields`).",
    )
    whole_fields: list[str] = Field(
        default_factory=list,
        description="Dotted payload paths redacted entirely whatever they hold (e.g. `ip`, "
        "`user.address`). A value that is one recognisable item (any detector type, even one not "
        "in `detect`; an integer that is a phone or card number) is rendered as that type "
        "(`203.0.113.***`, `ip_…`); anything else as a generic value (`***`, `value_…`, "
        "`[REDACTED]`).",
    )
    mode: Mode = Field(
        default="mask",
        description="`mask` keeps a hint (`a***@acme.com`, `203.0.113.***`, `**** **** **** 4242`); "
        "`hash` writes `<type>_<16 hex>` of a keyed HMAC-SHA256, so equal values still join; "
        "`remove` deletes a field that is all PII (and a list item) and cuts PII out of free text; "
        "`replace` writes `replacement`.",
    )
    replacement: str | None = Field(
        default=None,
        description="For `mode: replace`: the fixed text (default `[REDACTED]`), or `type` for one "
        "marker per type: `[EMAIL]`, `[IP]`, `[PHONE]`, `[CARD]`, `[IBAN]`, `[SECRET]`.",
    )
    hash_key: str | None = Field(
        default=None,
        description="For `mode: hash`: the HMAC key, `ref:NAME` (a stored secret) or `env:VAR`. "
        "Without it the project id is the key: hashes are stable and join, but anyone who knows the "
        "project id can confirm a guessed value. Set a key in production.",
    )
    default_region: str = Field(
        default="US",
        description="Region (ISO 3166 alpha-2) for phone numbers written without a `+country` "
        "prefix; numbers with one are found whatever this is.",
    )
    destinations: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Names of the pipeline's destinations whose copy of the event is redacted; the "
        "others receive it unchanged. Omit to redact what every destination receives.",
    )

    @field_validator("detect", "fields", "whole_fields", "destinations", mode="before")
    @classmethod
    def _one_is_a_list(cls, v: Any) -> Any:
        return _listify(v)

    @field_validator("detect")
    @classmethod
    def _dedupe(cls, v: list[PiiType]) -> list[PiiType]:
        return list(dict.fromkeys(v))

    @field_validator("fields", "whole_fields")
    @classmethod
    def _paths(cls, v: list[str] | None) -> list[str] | None:
        for p in v or ():
            if not _PATH_RE.fullmatch(p):
                raise ValueError(f"{p!r} is not a dotted field path such as `user.email`")
        return v

    @field_validator("default_region")
    @classmethod
    def _region(cls, v: str) -> str:
        region = v.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{v!r} is not a region phonenumbers knows (ISO 3166 alpha-2, e.g. US, GB)")
        return region

    @field_validator("hash_key")
    @classmethod
    def _reference(cls, v: str | None) -> str | None:
        return v if v is None else check_reference("hash_key", v, "key")

    @model_validator(mode="after")
    def _mode_options(self) -> RedactPiiConfig:
        if self.replacement is not None and self.mode != "replace":
            raise ValueError("`replacement` applies only to `mode: replace`")
        if self.hash_key is not None and self.mode != "hash":
            raise ValueError("`hash_key` applies only to `mode: hash`")
        return self


class RedactPii:
    name: ClassVar[str] = "redact.pii"
    kind: ClassVar[str] = "MUT"
    config_model: ClassVar[type[BaseModel]] = RedactPiiConfig
    # `- redact.pii: body` scans one field.
    shorthand_field: ClassVar[str] = "fields"

    def __init__(self, config: RedactPiiConfig) -> None:
        self.config = config
        self.scanner = Scanner(config.detect, config.default_region)
        # whole_fields name their value's type with every detector, whatever `detect` says.
        every = set(config.detect) == set(ALL_TYPES)
        self.classifier = self.scanner if every else Scanner(ALL_TYPES, config.default_region)
        self.renderer = Renderer(config.mode, config.replacement)
        self.remove = config.mode == "remove"
        self.whole_paths = frozenset(tuple(p.split(".")) for p in config.whole_fields)
        # A field inside another listed field (or a whole field) is already covered by it.
        listed = {tuple(p.split(".")) for p in config.fields or ()}
        self.field_paths = [
            p
            for p in dict.fromkeys(config.fields or ())
            if tuple(p.split(".")) not in self.whole_paths
            and not any(tuple(p.split("."))[:i] in listed for i in range(1, p.count(".") + 1))
        ]

    async def __call__(self, event: PipelineEvent, ctx: StepContext) -> PipelineEvent | Drop:
        key = await self._hash_key(ctx) if self.config.mode == "hash" else b""
        payload, counts = self.redact(event.payload, key)
        if counts:
            ctx.notes.append(_note(counts))
        if payload is event.payload:
            return event
        return PipelineEvent(
            id=event.id,
            type=event.type,
            occurred_at=event.occurred_at,
            received_at=event.received_at,
            source=event.source,
            payload=payload,
        )

    def redact(self, payload: dict[str, Any], key: bytes = b"") -> tuple[dict[str, Any], dict[str, int]]:
        """The redacted payload (``payload`` itself when nothing changed) and counts per type.

        Copy-on-write: ``payload`` and everything in it are left as they were.
        """
        run = _Run(self, key)
        out = payload
        if self.config.whole_fields:
            out = dict(out)
            for path in self.config.whole_fields:
                run.whole(out, path)
        if self.config.fields is None:
            scanned = run.walk(out, () if self.whole_paths else None)
            assert isinstance(scanned, dict)
            out = scanned
        else:
            if out is payload:
                out = dict(out)
            for path in self.field_paths:
                value = get_path(out, path, MISSING)
                if value is MISSING:
                    continue
                result = run.walk(value, tuple(path.split(".")) if self.whole_paths else None)
                if result is REMOVED:
                    delete_path(out, path)
                elif result is not value:
                    set_path(out, path, result)
        if not run.counts:
            return payload, run.counts
        return out, run.counts

    async def _hash_key(self, ctx: StepContext) -> bytes:
        ref = self.config.hash_key
        if ref is None:
            return ctx.project_id.encode()
        if ctx.services is None:
            raise RuntimeError(f"hash_key {ref} cannot be resolved here (no step services)")
        key = await ctx.services.resolve_secret(ctx.project_id, ref)
        if not key:
            raise ValueError(f"hash_key {ref} is empty")
        return key.encode()

    def summary(self) -> str:
        c = self.config
        what = "all PII" if set(c.detect) == set(ALL_TYPES) else ", ".join(c.detect)
        where = "anywhere" if c.fields is None else "in " + (", ".join(c.fields) or "no fields")
        if c.whole_fields:
            where += "; whole " + ", ".join(c.whole_fields)
        text = f"{c.mode} {what} {where}"
        if c.destinations:
            text += " → " + ", ".join(c.destinations)
        return text


class _Run:
    """One payload's redaction: the key in use and the counts."""

    __slots__ = ("counts", "integers", "key", "renderer", "scanner", "step")

    def __init__(self, step: RedactPii, key: bytes) -> None:
        self.step = step
        self.scanner = step.scanner
        self.renderer = step.renderer
        self.key = key
        self.counts: dict[str, int] = {}
        # Integers are read only under fields the user named as holding PII. Across a whole
        # payload they are mostly ids, amounts and timestamps, and many of those read as valid
        # phone numbers (about half of today's Unix times in some regions, most US ones from
        # 2033): scanning them all would turn such values into masked strings.
        self.integers = step.config.fields is not None

    def text(self, s: str) -> str | _Removed:
        found = self.scanner.scan(s)
        if not found:
            return s
        counts = self.counts
        for f in found:
            counts[f.type] = counts.get(f.type, 0) + 1
        if self.step.remove and _covers(s, found):
            return REMOVED
        parts: list[str] = []
        pos = 0
        for f in found:
            parts.append(s[pos : f.start])
            parts.append(self.renderer.render(f, self.key))
            pos = f.end
        parts.append(s[pos:])
        return "".join(parts)

    def walk(self, value: Any, path: tuple[str, ...] | None) -> Any:
        """``value`` redacted (``value`` itself if unchanged, ``REMOVED`` if to be deleted).

        ``path`` is tracked only while it can still reach a ``whole_fields`` path (which is handled
        separately and skipped here).
        """
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            new: dict[str, Any] | None = None
            for k, v in value.items():
                child = None
                if path is not None:
                    child = (*path, k)
                    if child in self.step.whole_paths:
                        continue
                r = self.walk(v, child)
                if r is v:
                    continue
                if new is None:
                    new = dict(value)
                if r is REMOVED:
                    del new[k]
                else:
                    new[k] = r
            return value if new is None else new
        if isinstance(value, list):
            changed = False
            out: list[Any] = []
            for v in value:
                r = self.walk(v, None)
                if r is not v:
                    changed = True
                if r is not REMOVED:
                    out.append(r)  # `remove` drops a list item that is all PII
            return out if changed else value
        if self.integers and isinstance(value, int) and value is not True and value is not False:
            return self.integer(value)
        return value

    def integer(self, n: int) -> int | str | _Removed:
        """An integer that is one phone or card number rendered as that number in a string would
        be (so it becomes a string, or is removed); any other integer as it is."""
        found = self.scanner.integer(n)
        if found is None:
            return n
        self.counts[found.type] = self.counts.get(found.type, 0) + 1
        if self.step.remove:
            return REMOVED
        return self.renderer.render(found, self.key)

    def whole(self, payload: dict[str, Any], path: str) -> None:
        value = get_path(payload, path, MISSING)
        if value is MISSING or value is None or value == "":
            return  # nothing there to redact
        found: Found | None = None
        if isinstance(value, str):
            found = self.step.classifier.whole(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            found = self.step.classifier.integer(value)  # a card or phone number, as in the scan
        if found is None:
            text = value if isinstance(value, str) else _canonical_json(value)
            found = Found(0, len(text), "value", text, text)
        self.counts[found.type] = self.counts.get(found.type, 0) + 1
        if self.step.remove:
            delete_path(payload, path)
            return
        set_path(payload, path, self.renderer.render(found, self.key))


def _canonical_json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _covers(s: str, found: list[Found]) -> bool:
    """Whether the found values are all of ``s`` but whitespace."""
    pos = 0
    for f in found:
        if s[pos : f.start].strip():
            return False
        pos = f.end
    return not s[pos:].strip()


# Stable order for the trace note.
_NOTE_ORDER: Final = {t: i for i, t in enumerate((*ALL_TYPES, "value"))}


def _note(counts: dict[str, int]) -> str:
    parts = [f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: _NOTE_ORDER.get(kv[0], 99))]
    return "redacted " + ", ".join(parts)


__all__ = ["PiiType", "RedactPii", "RedactPiiConfig"]
