"""Name → destination class. The YAML key of a destination is its registered kind."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ingestlayer.destinations.webhook_out import WebhookOut

DESTINATIONS: dict[str, Any] = {
    WebhookOut.kind: WebhookOut,
}


def destination_class(kind: str) -> Any:
    try:
        return DESTINATIONS[kind]
    except KeyError:
        known = ", ".join(sorted(DESTINATIONS))
        raise ValueError(f"unknown destination kind {kind!r} (known: {known})") from None


def parse_destination_config(kind: str, raw: Any) -> BaseModel:
    model: type[BaseModel] = destination_class(kind).config_model
    return model.model_validate(raw or {})


def build_destination(kind: str, config: dict[str, Any]) -> Any:
    cls = destination_class(kind)
    return cls(cls.config_model.model_validate(config))
