"""A source's configuration: how to verify a sender and where the event type and key come from.

Example::

    sources:
      - name: stripe
        verify: stripe                 # stripe | github | standard-webhooks | hmac-sha256 | none
        secret: ref:stripe-signing     # the endpoint's signing secret (ref:NAME or env:VAR)
      - name: github
        verify: github
        secret: env:GITHUB_WEBHOOK_SECRET
        type_prefix: github.           # push → github.push
        previous_secret: ref:github-old  # while rotating: the old secret verifies too, until removed
      - name: billing
        verify: hmac-sha256
        secret: ref:billing
        header: X-Billing-Signature
        encoding: base64
        timestamp_header: X-Billing-Timestamp
        event_type: body:event
        idempotency_key: header:X-Billing-Id
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingestlayer.destinations.shared import check_reference
from ingestlayer.field_rule import FieldRule
from ingestlayer.pipeline.config import NAME_RE
from ingestlayer.pipeline.matching import is_valid_event_type
from ingestlayer.stored_config import reading_stored

Scheme = Literal["stripe", "github", "standard-webhooks", "hmac-sha256", "none"]

# Where each scheme's senders put the event type and a unique delivery id.
DEFAULT_TYPE = {
    "stripe": "body:type",
    "github": "header:X-GitHub-Event",
    "standard-webhooks": "body:type",
    "hmac-sha256": "body:type",
    "none": "body:type",
}
DEFAULT_KEY: dict[str, str | None] = {
    "stripe": "body:id",
    "github": "header:X-GitHub-Delivery",
    "standard-webhooks": "header:webhook-id",
    "hmac-sha256": None,
    "none": None,
}


# Senders whose event types are not dotted names: Shopify's topics (`orders/create`), Zendesk's
# (`zen:event-type:ticket.created`). Refused as they are (422), the sender retries and in the end
# stops sending; their separators become dots, so `source.match` takes `orders.*` as it would
# any other event.
_TYPE_SEPARATORS = str.maketrans({"/": ".", ":": "."})


def dotted_type(raw: str) -> str:
    """A sender's event type as an event name: ``/`` and ``:`` become ``.``."""
    return raw.translate(_TYPE_SEPARATORS)


def _check_locator(
    value: str | None, field: str, kinds: tuple[str, ...] = ("body", "header", "const")
) -> str | None:
    if value is None:
        return None
    kind, _, rest = value.partition(":")
    if kind not in kinds or not rest:
        shapes = {"body": "body:<path>", "header": "header:<Name>", "const": "const:<value>"}
        wanted = [shapes[k] for k in kinds]
        raise ValueError(f"{field} must be {', '.join(wanted[:-1])} or {wanted[-1]}")
    return value


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_RE, description="Unique within the project; becomes the event's source.")
    verify: Scheme = Field(description="How requests are authenticated.")
    secret: str | None = Field(default=None, description="ref:NAME or env:VAR; required unless verify: none.")
    previous_secret: str | None = Field(
        default=None,
        description="ref:NAME or env:VAR; while rotating our secret, requests signed with it verify too.",
    )
    tolerance: int = Field(default=300, ge=1, le=86400, description="Seconds a signed timestamp may be off.")
    header: str | None = Field(default=None, description="hmac-sha256: the signature header.")
    encoding: Literal["hex", "base64"] = Field(default="hex", description="hmac-sha256: signature encoding.")
    prefix: str = Field(default="", description="hmac-sha256: a prefix before the signature, e.g. sha256=.")
    timestamp_header: str | None = Field(default=None, description="hmac-sha256: signs '<timestamp>.<body>'.")
    event_type: str | None = Field(
        default=None, description="Where the type is: body:<path>, header:<Name>, const:<type>."
    )
    idempotency_key: str | None = Field(
        default=None, description="Where a unique id is: body:<path> or header:<Name>."
    )
    type_prefix: str = Field(default="", max_length=50, description="Prepended to the type, e.g. 'github.'.")
    enabled: bool = True

    @field_validator("type_prefix")
    @classmethod
    def _type_prefix(cls, v: str) -> str:
        # Put before every type: one that no event name may start with made every request a 422.
        if v and not reading_stored() and not is_valid_event_type(v + "x"):
            raise ValueError("must be letters, digits, _ and -, separated by dots, such as shopify.")
        return v

    @field_validator("secret", "previous_secret")
    @classmethod
    def _secret(cls, v: str | None) -> str | None:
        return v if v is None else check_reference("secret", v, "secret")

    @model_validator(mode="after")
    def _rules(self) -> SourceConfig:
        if self.verify != "none" and not self.secret:
            raise FieldRule("secret", f"verify: {self.verify} needs a secret")
        if self.previous_secret and self.verify == "none":
            raise FieldRule(
                "previous_secret", "previous_secret applies only to a verify scheme with a secret"
            )
        hmac_only = {
            "header": self.header,
            "timestamp_header": self.timestamp_header,
            "prefix": self.prefix or None,
        }
        if self.verify != "hmac-sha256":
            extra = [k for k, v in hmac_only.items() if v]
            if extra:
                raise FieldRule(extra[0], f"{extra[0]} applies only to verify: hmac-sha256")
        _check_locator(self.event_type, "event_type")
        # A constant key would make every event after the first a duplicate of it, dropped. (One
        # stored before this check is read as no key: see key_locator.)
        key_kinds = ("body", "header", "const") if reading_stored() else ("body", "header")
        _check_locator(self.idempotency_key, "idempotency_key", key_kinds)
        return self

    def secret_refs(self) -> list[str]:
        """The references to verify with, the current secret first."""
        return [ref for ref in (self.secret, self.previous_secret) if ref]

    def type_locator(self) -> str:
        return self.event_type or DEFAULT_TYPE[self.verify]

    def key_locator(self) -> str | None:
        if self.idempotency_key is not None and self.idempotency_key.startswith("const:"):
            return None  # stored by an earlier version: the same for every event, so no delivery id
        return self.idempotency_key or DEFAULT_KEY[self.verify]


def locate(locator: str, headers: Mapping[str, str], body: Mapping[str, Any]) -> Any:
    """Read ``body:a.b``, ``header:Name`` or ``const:value``; None when absent."""
    kind, _, rest = locator.partition(":")
    if kind == "const":
        return rest
    if kind == "header":
        lname = rest.lower()
        return next((v for k, v in headers.items() if k.lower() == lname), None)
    node: Any = body
    for part in rest.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node
