"""``webhook.out``: POST the processed event as JSON to an HTTP(S) endpoint.

Example::

    destinations:
      - webhook.out:
          url: https://api.acme.com/hooks   # or ref:NAME / env:VAR: a URL that is a credential
          auth: hmac            # none | bearer | hmac
          secret: ref:acme-hooks
          signing: standard     # also send Standard Webhooks headers
          format: ingestlayer   # ingestlayer | data
          timeout: 10
"""

from __future__ import annotations

import string
import time
from typing import Any, ClassVar, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)
from yarl import URL

from ingestlayer.delivery.egress import EgressDenied
from ingestlayer.delivery.retry import parse_retry_after
from ingestlayer.delivery.signing import (
    SIGNATURE_HEADER,
    ingestlayer_signature,
    standard_webhooks_headers,
)
from ingestlayer.destinations.base import (
    EXCERPT_BYTES,
    MAX_TIMEOUT_SECONDS,
    Outcome,
    SendContext,
    SendRequest,
    excerpt,
)
from ingestlayer.destinations.shared import (
    check_reference,
    credential_forms,
    held_url_parts,
    is_reference,
    scrub_forms,
    url_credentials,
)
from ingestlayer.field_rule import FieldRule
from ingestlayer.timefmt import parse_iso
from ingestlayer.urlcheck import http_url_problem

RESERVED_HEADERS = {
    "content-type",
    "content-length",
    "host",
    "user-agent",
    "x-ingestlayer-event",
    "x-ingestlayer-delivery",
    "x-ingestlayer-attempt",
    SIGNATURE_HEADER.lower(),
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
}


# RFC 9110 §5.6.2: a header name is a token, one or more of these.
_TCHAR = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)


def header_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be sent as a header name, or None.

    Checked when a destination is configured: the HTTP client refuses such a name at every
    attempt, so a delivery would fail until the configuration is changed."""
    if not name or not _TCHAR.issuperset(name):
        return f"{name!r} is not a valid header name: use letters, digits and !#$%&'*+-.^_`|~ only"
    return None


def header_value_problem(value: str, *, tab: bool = True) -> str | None:
    """Why ``value`` cannot be sent as a header value ("contains …"), or None. It never quotes
    ``value``, which is often a credential.

    A value goes out as latin-1 bytes (RFC 9110 §5.5: visible characters, spaces and tabs).
    CR or LF would end the header early (header injection), other control characters are
    refused by the HTTP client or by strict receivers, and characters beyond latin-1 cannot be
    encoded: each would fail every attempt. ``tab=False`` refuses tabs too, for tokens."""
    for c in value:
        if c == "\t" and tab:
            continue
        if c in "\r\n":
            return "contains a line break (CR or LF)"
        if ord(c) < 0x20 or ord(c) == 0x7F:
            return f"contains the control character U+{ord(c):04X}"
        if ord(c) > 0xFF:
            return f"contains U+{ord(c):04X}, beyond the latin-1 characters HTTP headers carry"
    return None


def header_problem(name: str, value: str | None) -> str | None:
    """Why a header cannot be sent (its name, or its value unless None), or None."""
    problem = header_name_problem(name)
    if problem is None and value is not None and (found := header_value_problem(value)):
        problem = f"the value of {name} {found}"
    return problem


class WebhookOutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        description="The endpoint; https, or http where private destinations are allowed. A URL that "
        "carries a credential (a token in its path or query, a password) can be kept as a secret: "
        "`ref:NAME` or `env:VAR`, resolved at send."
    )
    auth: Literal["none", "bearer", "hmac"] = Field(
        default="none", description="How requests are authenticated."
    )
    secret: str | list[str] | None = Field(
        default=None,
        description="`ref:NAME` (stored encrypted) or `env:VAR`; a list signs with each (secret rotation).",
    )
    signing: Literal["ingestlayer", "standard"] = Field(
        default="ingestlayer", description="`standard` also sends Standard Webhooks headers."
    )
    format: Literal["ingestlayer", "data"] = Field(default="ingestlayer", description="The body's shape.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers.")
    secret_headers: dict[str, str] = Field(
        default_factory=dict,
        description="Extra headers whose values are credentials: `ref:NAME` or `env:VAR`, resolved at send.",
    )
    timeout: float = Field(
        default=10.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds to wait for a 2xx."
    )
    rotation_ends_at: str | list[str] | None = Field(
        default=None,
        description="ISO 8601: while rotating, when the old `secret`s stop signing: one time for the last "
        "of them, or a list of times, one for each secret after the first, in the same order.",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if is_reference(v):  # the URL itself is checked when it is resolved, at send
            return check_reference("url", v, "URL")
        problem = http_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("headers", "secret_headers")
    @classmethod
    def _not_reserved(cls, v: dict[str, str]) -> dict[str, str]:
        clash = sorted(k for k in v if k.lower() in RESERVED_HEADERS)
        if clash:
            raise ValueError(f"headers set by ingestlayer cannot be overridden: {', '.join(clash)}")
        return v

    @field_validator("headers", "secret_headers")
    @classmethod
    def _sendable(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        # Refused here, with the field to fix, instead of failing every delivery at send time.
        for name, value in v.items():
            # A secret header's value is a reference (checked below), resolved at send.
            problem = header_problem(name, value if info.field_name == "headers" else None)
            if problem:
                raise ValueError(problem)
        return v

    @field_validator("secret_headers")
    @classmethod
    def _secret_headers(cls, v: dict[str, str]) -> dict[str, str]:
        for name, ref in v.items():
            check_reference(name, ref, "header's value")
        return v

    @model_validator(mode="after")
    def _no_header_twice(self) -> WebhookOutConfig:
        both = sorted({k.lower() for k in self.headers} & {k.lower() for k in self.secret_headers})
        # Named at secret_headers, the field to fix, as the field's own checks are.
        if both:
            raise FieldRule("secret_headers", f"set in both headers and secret_headers: {', '.join(both)}")
        if self.auth == "bearer" and "authorization" in {k.lower() for k in self.secret_headers}:
            raise FieldRule(
                "secret_headers", "auth: bearer sets Authorization; remove it from secret_headers"
            )
        return self

    @field_validator("secret")
    @classmethod
    def _secret_refs(cls, v: str | list[str] | None) -> str | list[str] | None:
        # A field validator, so the error names `…secret`, the field to fix.
        for ref in [v] if isinstance(v, str) else list(v or []):
            check_reference("secret", ref, "secret")
        return v

    @field_validator("rotation_ends_at")
    @classmethod
    def _rotation_ends_at(cls, v: str | list[str] | None) -> str | list[str] | None:
        for t in [v] if isinstance(v, str) else list(v or []):
            try:
                parse_iso(t)
            except ValueError:
                raise ValueError("must be an ISO 8601 time, such as 2026-12-01T09:00:00Z") from None
        return v

    @field_validator("signing")
    @classmethod
    def _not_with_bearer(cls, v: str, info: ValidationInfo) -> str:
        if v == "standard" and info.data.get("auth") == "bearer" and (info.context or {}).get("new"):
            # One secret cannot do both: sent in every request, it proves nothing when it signs.
            # (Configurations stored before this check still load and send as they did.)
            raise ValueError(
                "auth: bearer sends the secret in clear in every request, so it cannot also sign "
                "(signing: standard): use auth: none or auth: hmac with signing: standard, and a "
                "bearer token, if the receiver wants one too, in secret_headers"
            )
        return v

    @model_validator(mode="after")
    def _secret(self) -> WebhookOutConfig:
        refs = self.secret_refs()
        if self.auth in ("bearer", "hmac") and not refs:
            raise FieldRule("secret", f"auth: {self.auth} needs a secret")
        if self.signing == "standard" and not refs:
            raise FieldRule("secret", "signing: standard needs a secret")
        ends = self.rotation_ends_at
        if ends is not None and len(refs) < 2:
            raise ValueError("rotation_ends_at needs two secrets: the new one first, the old one last")
        if isinstance(ends, list) and len(ends) != len(refs) - 1:
            raise ValueError(
                "rotation_ends_at as a list needs one time for each secret after the first (the old ones)"
            )
        return self

    @model_serializer(mode="wrap")
    def _stored(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # Left out when unset, so configurations stored before it existed compare as unchanged.
        data: dict[str, Any] = handler(self)
        if data.get("rotation_ends_at") is None:
            data.pop("rotation_ends_at", None)
        if not data.get("secret_headers"):
            data.pop("secret_headers", None)
        return data

    def secret_refs(self) -> list[str]:
        return [self.secret] if isinstance(self.secret, str) else list(self.secret or [])

    def signing_refs(self, now: float) -> list[str]:
        """The secrets that sign now: all of them but the old ones whose time is up."""
        refs = self.secret_refs()
        old = rotating_out(refs, self.rotation_ends_at)
        return refs[: len(refs) - len(old)] + [ref for ref, end in old if now < parse_iso(end)]


def rotating_out(refs: list[str], ends: str | list[str] | None) -> list[tuple[str, str]]:
    """The old secrets of a rotation, each with the ISO time it stops signing, as webhook.out
    stores them: ``rotation_ends_at`` one time (the last of several secrets) or a list of
    times, one for each secret after the first, in the same order."""
    if ends is None or len(refs) < 2:
        return []
    if isinstance(ends, str):
        return [(refs[-1], ends)]
    return list(zip(refs[1:], ends, strict=False))


def render_body(event: dict[str, Any], fmt: str) -> bytes:
    if fmt == "data":
        return orjson.dumps({"type": event["type"], "data": event["payload"]})
    return orjson.dumps(
        {
            "id": event["id"],
            "type": event["type"],
            "occurred_at": event["occurred_at"],
            "payload": event["payload"],
        }
    )


class WebhookOut:
    kind: ClassVar[str] = "webhook.out"
    config_model: ClassVar[type[BaseModel]] = WebhookOutConfig

    def __init__(self, config: WebhookOutConfig) -> None:
        self.config = config
        # Where the URL is a secret reference, it is resolved at every send (a secret can change);
        # the last one resolved is kept parsed. Otherwise it is parsed once, not per request.
        held = is_reference(config.url)
        self._url = None if held else URL(config.url)
        self._resolved: tuple[str, URL, list[str]] | None = None
        # What the dashboard masks in this configuration, besides the secrets resolved at send:
        # every inline header value (credentials belong in secret_headers, but X-Auth, X-Key or
        # X-Access written inline are credentials too, whatever the name says), and the URL's
        # password and query values. A receiver may echo the request (its URL, its headers, the Basic
        # authorization made from the URL's user:password), and what it answers is stored.
        # Their forms are made once here; only the secrets resolved at send are new each time.
        self._configured_forms = credential_forms(
            [
                *config.headers.values(),
                *([] if held else url_credentials(config.url)),
            ]
        )

    def target(self) -> str:
        return self.config.url

    async def build_headers(
        self, request: SendRequest, body: bytes, ctx: SendContext
    ) -> tuple[dict[str, str], list[str]]:
        """The request's headers, and the secrets they were made with (to keep out of the attempt
        log, with what the configuration holds of credentials: ``_configured_forms``)."""
        cfg = self.config
        headers = {
            **cfg.headers,
            "Content-Type": "application/json",
            "User-Agent": ctx.user_agent,
            "X-Ingestlayer-Event": request.event_type,
            "X-Ingestlayer-Delivery": request.delivery_id,
            "X-Ingestlayer-Attempt": str(request.attempt),
        }
        clock = time.time()
        secrets = [await ctx.resolve_secret(request.project_id, ref) for ref in cfg.signing_refs(clock)]
        credentials = list(secrets)
        for name, ref in cfg.secret_headers.items():
            headers[name] = value = await ctx.resolve_secret(request.project_id, ref)
            credentials.append(value)
        now = int(clock)
        if cfg.auth == "bearer":
            headers["Authorization"] = f"Bearer {secrets[0]}"
        elif cfg.auth == "hmac":
            headers[SIGNATURE_HEADER] = ingestlayer_signature(secrets, now, body)
        if cfg.signing == "standard":
            headers.update(standard_webhooks_headers(secrets, request.delivery_id, now, body))
        return headers, credentials

    async def _target(self, request: SendRequest, ctx: SendContext) -> tuple[str, URL, list[str]] | Outcome:
        """The URL to call, parsed, and the forms (:func:`credential_forms`) of the credentials it
        holds (the whole URL, where it is kept as a secret), or the ending of a delivery that
        cannot be sent to it."""
        if self._url is not None:
            return self.config.url, self._url, []
        ref = self.config.url
        try:
            url = (await ctx.resolve_secret(request.project_id, ref)).strip()
        except LookupError as exc:  # retried: setting the secret in time still delivers
            return Outcome(ok=False, error=str(exc))
        if self._resolved is not None and self._resolved[0] == url:
            return self._resolved
        # Named by its reference, never quoted: the URL is the credential.
        problem = http_url_problem(url)
        if problem is not None:
            return Outcome(ok=False, error=f"url ({ref}): the URL it holds {problem}", permanent=True)
        try:
            parsed = URL(url)
        except ValueError:
            return Outcome(ok=False, error=f"url ({ref}): the URL it holds cannot be read", permanent=True)
        self._resolved = (url, parsed, credential_forms([*held_url_parts(url), *url_credentials(url)]))
        return self._resolved

    async def send(self, request: SendRequest, ctx: SendContext) -> Outcome:
        cfg = self.config
        target = await self._target(request, ctx)
        if isinstance(target, Outcome):
            return target
        url, parsed_url, url_forms = target
        try:
            ctx.egress.check_url(url)
        except EgressDenied as exc:
            return Outcome(ok=False, error=scrub_forms(str(exc), url_forms), permanent=True)
        # The router stored the delivery in the "ingestlayer" format already: send it as stored.
        body = (
            request.body_json.encode()
            if cfg.format == "ingestlayer"
            else render_body(request.event, cfg.format)
        )
        try:
            headers, credentials = await self.build_headers(request, body, ctx)
        except LookupError as exc:  # a secret reference that cannot be resolved
            return Outcome(ok=False, error=str(exc))
        except ValueError as exc:
            # A stored secret that signing: standard cannot use (not base64). Retried like a
            # missing secret, so that setting a good one in time still delivers.
            return Outcome(ok=False, error=f"the signing secret cannot be used: {exc}")
        if ctx.http is None:
            raise RuntimeError("webhook.out sends through the dispatcher's HTTP client")
        # A receiver that echoes the request (as httpbin does) must not put a credential into
        # the attempt log, which the API and the dashboard show. The answer is read past the
        # excerpt's end by the longest form of one, so that one straddling the end is scrubbed
        # whole before the excerpt is cut, never shown in part.
        forms = credential_forms(credentials, [*self._configured_forms, *url_forms])
        try:
            resp = await ctx.http.post(
                parsed_url,
                body,
                headers,
                timeout=cfg.timeout,
                max_excerpt=EXCERPT_BYTES + (len(forms[0].encode()) if forms else 0),
            )
        except TimeoutError:
            return Outcome(ok=False, error=f"timed out after {cfg.timeout:g}s")
        except EgressDenied as exc:
            return Outcome(ok=False, error=scrub_forms(str(exc), forms), permanent=True)
        except OSError as exc:  # refused, reset, unreachable, name not found, TLS
            return Outcome(ok=False, error=scrub_forms(f"connection error: {exc}", forms))
        except ValueError as exc:  # a malformed response, or a header value HTTP cannot carry
            return Outcome(ok=False, error=scrub_forms(f"{type(exc).__name__}: {exc}", forms))
        ok = 200 <= resp.status < 300
        retry_after = None
        if resp.status in (429, 503):
            retry_after = parse_retry_after(resp.headers.get("retry-after"))
        answer = excerpt(
            scrub_forms(resp.excerpt.decode("utf-8", "replace"), forms) if forms else resp.excerpt
        )
        return Outcome(
            ok=ok,
            status_code=resp.status,
            error=None if ok else f"HTTP {resp.status}",
            response_excerpt=answer,
            retry_after=retry_after,
        )
