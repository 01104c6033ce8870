"""``postgres`` configuration.

Example::

    destinations:
      - name: warehouse
        postgres:
          dsn: ref:warehouse-dsn        # postgresql://user:password@db.example.com:5432/analytics
          table: analytics.events       # schema.table, or just table
          create_table: true            # CREATE TABLE IF NOT EXISTS on first use
          columns:
            account: $event.account
            feature: $event.feature
            amount: { value: $event.amount, type: numeric }
          jsonb_column: payload         # the whole processed payload, as jsonb
          pool_size: 4
          timeout: 10
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ingestlayer.destinations.base import MAX_TIMEOUT_SECONDS
from ingestlayer.destinations.shared import check_reference

IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
# Always written by ingestlayer; the idempotency key.
DELIVERY_ID = "delivery_id"
# Filled when the table has a column of the name and `columns` does not map it.
METADATA_COLUMNS = ("event_id", "event_type", "occurred_at")
ColumnType = Literal[
    "text", "jsonb", "bigint", "integer", "numeric", "double precision", "boolean", "timestamptz", "date"
]


def check_identifier(value: str, what: str) -> str:
    if not IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a plain SQL identifier (letters, digits and _, not starting "
            "with a digit, at most 63 characters)"
        )
    return value


def quote_identifier(name: str) -> str:
    """``"name"``: quoted, so it is used exactly as written (case-sensitive)."""
    return '"' + name.replace('"', '""') + '"'


class ColumnSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: str = Field(description="A `$event.*` template (one placeholder keeps the value's type).")
    type: ColumnType = Field(
        default="text",
        description="The column's type in `create_table` (values are converted by PostgreSQL into "
        "whatever type the table's column has).",
    )


class PostgresConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dsn: str = Field(
        description="`ref:NAME` or `env:VAR` holding `postgresql://user:password@host:5432/db` "
        "(a DSN carries a password, so never inline). Query options such as `?sslmode=verify-full` "
        "are honoured."
    )
    table: str = Field(description="`table` or `schema.table`; used exactly as written (quoted).")
    columns: dict[str, ColumnSpec] = Field(
        default_factory=dict,
        description="column → `$event.*` template, or {value, type}. `delivery_id` is reserved.",
    )
    jsonb_column: str | None = Field(
        default=None,
        description="A jsonb column that receives the processed payload. Default `payload` when "
        "`columns` is empty.",
    )
    create_table: bool = Field(
        default=False,
        description="Create the table if it does not exist: delivery_id text primary key, event_id, "
        "event_type, occurred_at timestamptz, received_at timestamptz default now(), then the "
        "mapped columns and the jsonb column.",
    )
    pool_size: int = Field(default=4, ge=1, le=20, description="Most connections this destination holds.")
    timeout: float = Field(
        default=10.0, gt=0, le=MAX_TIMEOUT_SECONDS, description="Seconds for connecting and inserting."
    )

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str) -> str:
        return check_reference("dsn", v, "DSN (it carries the password)")

    @field_validator("table")
    @classmethod
    def _table(cls, v: str) -> str:
        parts = v.split(".")
        if len(parts) > 2:
            raise ValueError("must be `table` or `schema.table`")
        for p in parts:
            check_identifier(p, "table name part")
        return v

    @field_validator("columns", mode="before")
    @classmethod
    def _column_shorthand(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"value": s} if isinstance(s, str) else s for k, s in v.items()}
        return v

    @field_validator("columns")
    @classmethod
    def _columns(cls, v: dict[str, ColumnSpec]) -> dict[str, ColumnSpec]:
        for name in v:
            check_identifier(name, "column")
            if name == DELIVERY_ID:
                raise ValueError("delivery_id is written by ingestlayer (the idempotency key); do not map it")
        return v

    @field_validator("jsonb_column")
    @classmethod
    def _jsonb(cls, v: str | None) -> str | None:
        if v is not None:
            check_identifier(v, "jsonb_column")
            if v == DELIVERY_ID:
                raise ValueError("delivery_id is written by ingestlayer; choose another jsonb_column")
        return v

    @model_validator(mode="after")
    def _default_jsonb(self) -> PostgresConfig:
        if not self.columns and self.jsonb_column is None:
            self.jsonb_column = "payload"
        if self.jsonb_column is not None and self.jsonb_column in self.columns:
            raise ValueError(f"{self.jsonb_column!r} is both in columns and the jsonb_column")
        return self

    def table_parts(self) -> tuple[str | None, str]:
        schema, _, name = self.table.rpartition(".")
        return (schema or None), name

    def quoted_table(self) -> str:
        schema, name = self.table_parts()
        return (quote_identifier(schema) + "." if schema else "") + quote_identifier(name)
