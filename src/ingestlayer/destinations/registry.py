"""Name → destination class. The YAML key of a destination is its registered kind.

Entries are import paths, loaded on first use: adding a destination is one module (or package)
and one line here.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel

DESTINATIONS: dict[str, str] = {
    "webhook.out": "ingestlayer.destinations.webhook_out:WebhookOut",
    "slack": "ingestlayer.destinations.slack:Slack",
    "discord": "ingestlayer.destinations.discord:Discord",
    "telegram": "ingestlayer.destinations.telegram:Telegram",
    "email": "ingestlayer.destinations.email:Email",
    "postgres": "ingestlayer.destinations.postgres:Postgres",
    "notion": "ingestlayer.destinations.notion:Notion",
}

_loaded: dict[str, Any] = {}


def destination_class(kind: str) -> Any:
    cls = _loaded.get(kind)
    if cls is not None:
        return cls
    try:
        target = DESTINATIONS[kind]
    except KeyError:
        known = ", ".join(sorted(DESTINATIONS))
        raise ValueError(f"unknown destination kind {kind!r} (known: {known})") from None
    module, _, attr = target.partition(":")
    cls = getattr(importlib.import_module(module), attr)
    _loaded[kind] = cls
    return cls


def parse_destination_config(kind: str, raw: Any) -> BaseModel:
    model: type[BaseModel] = destination_class(kind).config_model
    return model.model_validate(raw or {})


def build_destination(kind: str, config: dict[str, Any]) -> Any:
    cls = destination_class(kind)
    return cls(cls.config_model.model_validate(config))
