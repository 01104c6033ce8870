"""The dashboard's endpoint form: its fields as typed, the API body they make, and the API's
validation errors mapped back onto the fields."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ingestlayer.api.dashboard_views import mask_urls_in
from ingestlayer.api.endpoints import MAX_DESCRIPTION
from ingestlayer.delivery.retry import MAX_ATTEMPTS_LIMIT, MAX_RETRY_DELAY, RetryPolicy
from ingestlayer.delivery.signing import validate_standard_secret
from ingestlayer.destinations.base import MAX_TIMEOUT_SECONDS
from ingestlayer.destinations.webhook_out import WebhookOutConfig, header_value_problem
from ingestlayer.pipeline.matching import is_valid_pattern
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

    def values(
        self, errors: dict[str, str], *, url_kept: bool = False, token_on_file: bool = False
    ) -> dict[str, Any]:
        """The API body for these fields. Every field is checked here on its own, so that each
        invalid one has its error at once (the API stops at the first); problems go into
        ``errors`` by field, in sentences. ``url_kept``: the URL field is the stored URL as the
        page showed it (masked), which the API restores. ``token_on_file``: the endpoint already
        sends a bearer token, which an empty secret field keeps."""
        out: dict[str, Any] = {
            "url": self.url,
            "events": self.event_list(),
            "auth": self.auth,
            "signing": self.signing,
            "format": self.format,
            "description": self.description or None,
            "enabled": self.enabled,
        }
        if not url_kept:
            _check_url(self.url, errors)
        if not out["events"]:
            errors["events"] = "Add at least one event type, e.g. invoice.created or invoice.*"
        else:
            bad = [e for e in out["events"] if not is_valid_pattern(e)]
            if bad:
                errors["events"] = (
                    f"{_quoted(bad)} {'is not an event type' if len(bad) == 1 else 'are not event types'}:"
                    " use letters, digits, _ and - in segments separated by dots, and * for a whole"
                    " segment (invoice.*)."
                )
        try:
            out["timeout"] = _finite(self.timeout or "10")
        except ValueError:
            errors["timeout"] = f"{_quoted([self.timeout])} is not a number of seconds: type one, e.g. 10."
        else:
            if not 0 < out["timeout"] <= MAX_TIMEOUT_SECONDS:
                errors["timeout"] = (
                    f"{_quoted([self.timeout])} seconds cannot be a timeout: type more than 0 and at"
                    f" most {MAX_TIMEOUT_SECONDS}."
                )
        if self.retry:
            schedule = _schedule(self.retry, errors)
            if schedule is not None:
                out["retry"] = {"schedule": schedule}
        else:
            out["retry"] = None
        if self.secret:
            out["secret"] = self.secret
        _check_secret(self, errors, token_on_file=token_on_file)
        if len(self.description) > MAX_DESCRIPTION:
            errors["description"] = (
                f"At most {MAX_DESCRIPTION} characters: this one has {len(self.description)}."
            )
        return out


def _quoted(values: list[str]) -> str:
    """What the user typed, quoted: “a”, “b” and “c” (the first five, then how many more)."""
    shown = [f"“{v if len(v) <= 40 else v[:40] + '…'}”" for v in values[:5]]
    if len(values) > 5:
        return ", ".join(shown) + f" and {len(values) - 5} more"
    return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + f" and {shown[-1]}"


def _check_url(url: str, errors: dict[str, str]) -> None:
    if not url:
        errors["url"] = "Type the URL to send the events to, e.g. https://api.yourapp.com/webhook."
        return
    try:
        WebhookOutConfig.model_validate({"url": url})
    except ValidationError as exc:
        for err in exc.errors():
            if err.get("loc", ())[:1] == ("url",):
                errors["url"] = sentence("This URL " + error_message(err).removeprefix("url: "))
                return


def _schedule(text: str, errors: dict[str, str]) -> list[float] | None:
    """The retry field's delays, each checked as typed; None (and an error) if any is wrong."""
    typed = [t for t in re.split(r"[,\s]+", text) if t]
    numbers: list[float] = []
    not_numbers: list[str] = []
    for t in typed:
        try:
            numbers.append(_finite(t))
        except ValueError:
            not_numbers.append(t)
    if not_numbers:
        what = "is not a number" if len(not_numbers) == 1 else "are not numbers"
        errors["retry"] = (
            f"{_quoted(not_numbers)} {what} of seconds: type the delay before each attempt,"
            " separated by commas, e.g. 0, 60, 300, 1800."
        )
        return None
    negative = [t for t, n in zip(typed, numbers, strict=True) if n < 0]
    too_long = [t for t, n in zip(typed, numbers, strict=True) if n > MAX_RETRY_DELAY]
    if negative:
        errors["retry"] = (
            f"{_quoted(negative)} {'is' if len(negative) == 1 else 'are'} negative: a delay is 0"
            " seconds (at once) or more."
        )
    elif too_long:
        errors["retry"] = (
            f"{_quoted(too_long)} {'is' if len(too_long) == 1 else 'are'} longer than 30 days"
            f" ({MAX_RETRY_DELAY:,.0f} seconds), the longest wait between two attempts."
        )
    elif len(numbers) > MAX_ATTEMPTS_LIMIT:
        errors["retry"] = f"{len(numbers)} delays: an endpoint makes at most {MAX_ATTEMPTS_LIMIT} attempts."
    else:
        try:
            RetryPolicy.from_config({"schedule": numbers})
        except ValueError as exc:
            errors["retry"] = sentence(str(exc))
    return None if "retry" in errors else numbers


def _check_secret(form: EndpointForm, errors: dict[str, str], *, token_on_file: bool) -> None:
    if form.auth == "bearer" and not form.secret:
        if not token_on_file:
            errors["secret"] = "Bearer auth sends your token: type it here."
        return
    if not form.secret:
        return
    if not form.secret.strip():
        errors["secret"] = "Only spaces: type a secret, or leave the field empty."
    elif form.auth == "bearer" and (problem := header_value_problem(form.secret, tab=False)):
        errors["secret"] = sentence(f"The token {problem}")
    elif form.signing == "standard":
        try:
            validate_standard_secret(form.secret)
        except ValueError as exc:
            errors["secret"] = sentence(str(exc))


def sentence(text: str) -> str:
    """An API message as a sentence for a person: no `code` marks, no list positions such as
    ``retry.schedule[0]``, a capital first and a full stop last."""
    found = _SCHEDULE_AT.match(text)
    if found:
        text = f"the delay number {int(found.group(1)) + 1} {found.group(2)}"
    text = _BACKTICKS.sub(r"\1", text).strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "?", "!")) else text + "."


_BACKTICKS = re.compile(r"`([^`]*)`")
_SCHEDULE_AT = re.compile(r"^retry\.schedule\[(\d+)\]: (.*?)(?:, got \S+)?$")


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
    errors.setdefault(
        name, sentence(message.split(": ", 1)[1] if ": " in message and name != "form" else message)
    )


def validation_errors(exc: ValidationError, errors: dict[str, str]) -> None:
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        field_error(errors, loc[0] if loc else None, error_message(err))
