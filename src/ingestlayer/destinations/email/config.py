"""``email`` configuration.

Example::

    destinations:
      - name: ops-email
        email:
          host: smtp.example.com
          port: 587                    # 465 with tls: implicit
          tls: starttls                # starttls | implicit | none
          username: alerts@example.com
          password: ref:smtp-password  # ingestlayer secrets set smtp-password
          from: "Acme Alerts <alerts@example.com>"
          to: [ops@example.com]
          cc: [oncall@example.com]
          subject: "[$event.type] $event.account"
          template: |
            $event.type for $event.account ($event.plan)
            Feature: $event.feature
          timeout: 30
"""

from __future__ import annotations

import re
from email.utils import formataddr, getaddresses, parseaddr
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingestlayer.destinations.base import MAX_TIMEOUT_SECONDS
from ingestlayer.destinations.shared import check_reference, is_reference

DEFAULT_PORT = {"starttls": 587, "none": 587, "implicit": 465}
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.:\-]+)$")
_DOMAIN = re.compile(r"^[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*$|^\[[0-9A-Fa-f:.]+\]$")


def check_address(value: str) -> str:
    """An RFC 5322 mailbox: ``user@example.com`` or ``Name <user@example.com>``."""
    if any(c in value for c in "\r\n"):
        raise ValueError("an email address cannot contain line breaks")
    found = getaddresses([value])
    if len(found) != 1:
        raise ValueError(f"{value!r} holds {len(found)} addresses; give one per list entry")
    addr = found[0][1]
    local, at, domain = addr.rpartition("@")
    ascii_domain = _ascii_domain(domain)
    if (
        not at
        or not local
        or not ascii_domain
        or any(c.isspace() for c in addr)
        or not _DOMAIN.fullmatch(ascii_domain)
    ):
        raise ValueError(f"{value!r} is not an email address (user@example.com or Name <user@example.com>)")
    if ascii_domain != domain:
        # An internationalised domain (bücher.de) travels as its IDNA form (xn--bcher-kva.de):
        # what every SMTP server accepts, without asking for the SMTPUTF8 extension.
        head, _, tail = value.strip().rpartition(f"@{domain}")
        return f"{head}@{ascii_domain}{tail}"
    return value.strip()


def _ascii_domain(domain: str) -> str | None:
    """The domain as DNS and SMTP carry it (IDNA for a non-ASCII one), or None if it has none."""
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def address_of(value: str) -> str:
    """The bare address of a mailbox (what goes into the SMTP envelope)."""
    return parseaddr(value)[1]


class EmailConfig(BaseModel):
    model_config = ConfigDict(
        extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True
    )

    host: str = Field(description="The SMTP server's host name or IP address.")
    port: int | None = Field(
        default=None, ge=1, le=65535, description="The SMTP port; default 587 (465 with `tls: implicit`)."
    )
    tls: Literal["starttls", "implicit", "none"] = Field(
        default="starttls",
        description="`starttls` upgrades the connection (required: a server without STARTTLS is an "
        "error), `implicit` speaks TLS from the start (SMTPS, port 465), `none` sends in the clear: "
        "only where private destinations are allowed, for local work.",
    )
    tls_verify: bool = Field(
        default=True,
        description="Verify the server's certificate and host name. `false` only where private "
        "destinations are allowed; for a server with a private CA, set `ca_cert` instead.",
    )
    ca_cert: str | None = Field(
        default=None,
        description="PEM certificate(s) to trust for this server (its self-signed certificate or "
        "private CA), inline or as `ref:NAME` / `env:VAR`. Replaces the system's CAs.",
    )
    username: str | None = Field(
        default=None, description="SMTP AUTH user name (as text, or `ref:NAME` / `env:VAR`)."
    )
    password: str | None = Field(
        default=None, description="SMTP AUTH password: `ref:NAME` or `env:VAR` only, never inline."
    )
    from_: str = Field(
        alias="from", description="The sender: `alerts@example.com` or `Acme Alerts <alerts@example.com>`."
    )
    to: list[str] = Field(min_length=1, description="Recipients (one address or a list).")
    cc: list[str] = Field(default_factory=list, description="Copy recipients, shown in the message.")
    bcc: list[str] = Field(default_factory=list, description="Blind copy recipients, never shown.")
    reply_to: str | None = Field(default=None, description="A Reply-To address.")
    subject: str = Field(default="$event.type", description="The subject: a `$event.*` template.")
    template: str | None = Field(
        default=None,
        description="The plain-text body: a `$event.*` template. Default: the event type, its key "
        "fields and the event id.",
    )
    html_template: str | None = Field(
        default=None,
        description="The HTML body: a `$event.*` template whose substituted values are HTML-escaped. "
        "Default: an HTML version of the text body, every value escaped.",
    )
    helo_name: str | None = Field(
        default=None, description="The name ingestlayer gives in EHLO; default: this machine's host name."
    )
    timeout: float = Field(
        default=30.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds for the whole SMTP exchange."
    )

    @field_validator("to", "cc", "bcc", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        # "a@x.com, B <b@x.com>" is a list, as in a To: header.
        if isinstance(v, str):
            return [formataddr(pair) for pair in getaddresses([v])] if "," in v else [v]
        return v

    @field_validator("to", "cc", "bcc")
    @classmethod
    def _addresses(cls, v: list[str]) -> list[str]:
        return [check_address(a) for a in v]

    @field_validator("from_", "reply_to")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        return None if v is None else check_address(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        v = v.strip()
        if "://" in v or not _HOST.fullmatch(v):
            raise ValueError(
                "must be a host name or IP address, such as smtp.example.com (no scheme or port)"
            )
        return v

    @field_validator("password")
    @classmethod
    def _password(cls, v: str | None) -> str | None:
        return None if v is None else check_reference("password", v, "password")

    @field_validator("helo_name")
    @classmethod
    def _helo(cls, v: str | None) -> str | None:
        if v is not None and not _DOMAIN.fullmatch(v):
            raise ValueError("must be a host name such as mail.example.com")
        return v

    @field_validator("ca_cert")
    @classmethod
    def _ca_cert(cls, v: str | None) -> str | None:
        if v is None or is_reference(v):
            return v
        if "-----BEGIN CERTIFICATE-----" not in v:
            raise ValueError("must be PEM text (-----BEGIN CERTIFICATE-----…) or `ref:NAME` / `env:VAR`")
        return v

    @model_validator(mode="after")
    def _auth(self) -> EmailConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together: set both for SMTP AUTH, or neither")
        if self.tls == "none" and self.ca_cert is not None:
            raise ValueError("ca_cert is for TLS; it has no use with tls: none")
        return self

    @property
    def effective_port(self) -> int:
        return self.port or DEFAULT_PORT[self.tls]

    def recipients(self) -> list[str]:
        """Every envelope recipient (to, cc, bcc), each once, in order."""
        seen: dict[str, None] = {}
        for a in [*self.to, *self.cc, *self.bcc]:
            seen.setdefault(address_of(a), None)
        return list(seen)
