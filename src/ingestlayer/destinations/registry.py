"""Name → destination class. The YAML key of a destination is its registered kind."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ingestlayer.registry import LazyRegistry

DESTINATIONS = LazyRegistry(
    "destination kind",
    {
        "webhook.out": "ingestlayer.destinations.webhook_out:WebhookOut",
        "slack": "ingestlayer.destinations.slack:Slack",
        "discord": "ingestlayer.destinations.discord:Discord",
        "telegram": "ingestlayer.destinations.telegram:Telegram",
        "email": "ingestlayer.destinations.email:Email",
        "postgres": "ingestlayer.destinations.postgres:Postgres",
        "notion": "ingestlayer.destinations.notion:Notion",
    },
)


def destination_class(kind: str) -> Any:
    return DESTINATIONS.get(kind)


def parse_destination_config(kind: str, raw: Any) -> BaseModel:
    """A destination's settings as written by a user (``new`` in the validation context: rules
    that configurations stored before them must still load past are checked only here)."""
    model: type[BaseModel] = destination_class(kind).config_model
    return model.model_validate(raw or {}, context={"new": True})


def build_destination(kind: str, config: dict[str, Any]) -> Any:
    cls = destination_class(kind)
    return cls(cls.config_model.model_validate(config))
