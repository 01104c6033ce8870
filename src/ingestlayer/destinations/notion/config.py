"""``notion`` configuration.

Example::

    destinations:
      - name: signups-db
        notion:
          token: ref:notion-token          # an internal integration's secret, shared with the database
          database_id: 0f6e1c2ab9d34c8e8a4d5b6c7d8e9f01
          properties:
            Name:     { type: title, value: "$event.email signed up" }
            Plan:     { type: select, value: $event.plan }
            Seats:    { type: number, value: $event.seats }
            Tags:     { type: multi_select, value: $event.tags }
            Signed up: { type: date, value: $event.occurred_at }
            Paid:     { type: checkbox, value: $event.paid }
            Email:    { type: email, value: $event.email }
            Website:  { type: url, value: $event.website }
            Notes:    { type: rich_text, value: "Source: $event.source_channel" }
          dedupe_property: Delivery        # a rich_text property: no second page on a retry
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingestlayer.destinations.base import MAX_TIMEOUT_SECONDS
from ingestlayer.destinations.shared import check_reference
from ingestlayer.urlcheck import http_url_problem

DEFAULT_API_BASE = "https://api.notion.com"
PropertyType = Literal[
    "title", "rich_text", "select", "multi_select", "number", "date", "checkbox", "url", "email"
]
_HEX32 = re.compile(r"([0-9a-fA-F]{32})(?![0-9a-fA-F])")


def normalize_database_id(value: str) -> str:
    """A database id as Notion prints it (dashed UUID), from an id with or without dashes, or
    from the database's URL (``https://www.notion.so/acme/<id>?v=…``)."""
    text = value.strip().split("?", 1)[0].replace("-", "")
    found = _HEX32.findall(text)
    if not found:
        raise ValueError(
            "must be a Notion database id (32 hex digits, dashes optional) or the database's URL"
        )
    h = found[-1].lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class NotionProperty(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: PropertyType = Field(description="The database property's type in Notion.")
    value: str | int | float | bool = Field(
        description="A `$event.*` template (one placeholder keeps the value's type), or a constant."
    )


class NotionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    token: str = Field(description="The integration token: `ref:NAME` or `env:VAR` only, never inline.")
    database_id: str = Field(description="The database to add pages to: its id or its URL.")
    properties: dict[str, NotionProperty] = Field(
        min_length=1,
        description="Notion property name → {type, value}. Names must match the database's "
        "properties exactly; at most one `title`.",
    )
    dedupe_property: str | None = Field(
        default=None,
        description="A rich_text property of the database that receives the delivery id. Before a "
        "retry or a replay, the database is queried for it, so a page Notion created on an attempt "
        "whose answer was lost is not created a second time.",
    )
    api_base: str = Field(
        default=DEFAULT_API_BASE, description="The API's base URL (override for a proxy or a test server)."
    )
    timeout: float = Field(
        default=10.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds to wait for Notion's answer."
    )

    @field_validator("token")
    @classmethod
    def _token(cls, v: str) -> str:
        return check_reference("token", v, "token")

    @field_validator("database_id")
    @classmethod
    def _database_id(cls, v: str) -> str:
        return normalize_database_id(v)

    @field_validator("properties")
    @classmethod
    def _properties(cls, v: dict[str, NotionProperty]) -> dict[str, NotionProperty]:
        titles = [name for name, p in v.items() if p.type == "title"]
        if len(titles) > 1:
            raise ValueError(f"a Notion database has one title property; found {', '.join(titles)}")
        for name in v:
            if not name.strip():
                raise ValueError("property names cannot be empty")
        return v

    @model_validator(mode="after")
    def _dedupe(self) -> NotionConfig:
        if self.dedupe_property is not None:
            if not self.dedupe_property.strip():
                raise ValueError("dedupe_property cannot be empty")
            if self.dedupe_property in self.properties:
                raise ValueError(
                    f"dedupe_property {self.dedupe_property!r} is filled with the delivery id; "
                    "remove it from properties"
                )
        return self

    @field_validator("api_base")
    @classmethod
    def _api_base(cls, v: str) -> str:
        problem = http_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v.rstrip("/")
