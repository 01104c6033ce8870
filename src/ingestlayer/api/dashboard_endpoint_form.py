"""The dashboard's endpoint form: its fields as typed, the API body they make, and the API's
validation errors mapped back onto the fields."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ingestlayer.api.dashboard_views import mask_urls_in
from ingestlayer.validation_messages import error_message


def _finite(text: str) -> float:
    """A number typed into a form; float() also reads "nan" and "inf", which no field takes and
    whose range errors ("less than or equal to 60") would not say what was wrong."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


@dataclass
class EndpointForm:
    url: str = ""
    events: str = ""
    auth: str = "hmac"
    secret: str = ""
    signing: str = "ingestlayer"
    format: str = "ingestlayer"
    timeout: str = "10"
    retry: str = ""
    description: str = ""
    enabled: bool = True

    @classmethod
    def from_endpoint(cls, ep: dict[str, Any]) -> EndpointForm:
        retry = ep.get("retry") or {}
        return cls(
            url=ep.get("url") or "",
            events="\n".join(ep.get("events") or []),
            auth=ep.get("auth") or "none",
            signing=ep.get("signing") or "ingestlayer",
            format=ep.get("format") or "ingestlayer",
            timeout=f"{ep.get('timeout') or 10:g}",
            retry=", ".join(f"{s:g}" for s in retry.get("schedule", [])),
            # As every page shows it: a URL in it masked (saving it unchanged keeps the stored one).
            description=mask_urls_in(ep.get("description") or ""),
            enabled=bool(ep.get("enabled", True)),
        )

    @classmethod
    def from_form(cls, form: dict[str, str]) -> EndpointForm:
        return cls(
            url=form.get("url", "").strip(),
            events=form.get("events", ""),
            auth=form.get("auth", "hmac"),
            secret=form.get("secret", ""),
            signing=form.get("signing", "ingestlayer"),
            format=form.get("format", "ingestlayer"),
            timeout=form.get("timeout", "10").strip(),
            retry=form.get("retry", "").strip(),
            description=form.get("description", "").strip(),
            enabled=form.get("enabled") in ("1", "on", "true"),
        )

    def event_list(self) -> list[str]:
        return [e.strip() for e in re.split(r"[,\s]+", self.events) if e.strip()]

    def values(self, errors: dict[str, str]) -> dict[str, Any]:
        """The API body for these fields; problems found here go into ``errors``."""
        out: dict[str, Any] = {
            "url": self.url,
            "events": self.event_list(),
            "auth": self.auth,
            "signing": self.signing,
            "format": self.format,
            "description": self.description or None,
            "enabled": self.enabled,
        }
        if not out["events"]:
            errors["events"] = "Add at least one event type, e.g. invoice.created or invoice.*"
        try:
            out["timeout"] = _finite(self.timeout or "10")
        except ValueError:
            errors["timeout"] = "A number of seconds, e.g. 10"
        if self.retry:
            try:
                out["retry"] = {"schedule": [_finite(s) for s in re.split(r"[,\s]+", self.retry) if s]}
            except ValueError:
                errors["retry"] = "Seconds before each attempt, separated by commas: 0, 60, 300, 1800"
        else:
            out["retry"] = None
        if self.secret:
            out["secret"] = self.secret
        return out


_FIELD_RE = re.compile(r"^(?:body\.)?([a-z_]+)")


def field_error(errors: dict[str, str], field: str | None, message: str) -> None:
    m = _FIELD_RE.match(field or "")
    name = m.group(1) if m else "form"
    if name not in {
        "url",
        "events",
        "auth",
        "secret",
        "signing",
        "format",
        "timeout",
        "retry",
        "description",
    }:
        name = "retry" if "retry" in message else "form"
    # The API's message may quote what was sent; a URL in it is shown as everywhere else.
    message = mask_urls_in(message)
    errors.setdefault(name, message.split(": ", 1)[1] if ": " in message and name != "form" else message)


def validation_errors(exc: ValidationError, errors: dict[str, str]) -> None:
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        field_error(errors, loc[0] if loc else None, error_message(err))
