"""The SQL the ``postgres`` destination runs: every identifier validated, then quoted.

Rows are inserted with ``json_populate_record(NULL::table, $1::json)``: one JSON parameter, and
PostgreSQL converts each value to the type the table's column has (text, numbers, timestamps,
jsonb…), exactly as it would convert a literal. ``ON CONFLICT (delivery_id) DO NOTHING`` makes
a retried or replayed delivery a no-op instead of a second row. U+0000, which no PostgreSQL text
can hold, is dropped from every value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from ingestlayer.destinations.postgres.config import (
    DELIVERY_ID,
    METADATA_COLUMNS,
    PostgresConfig,
    quote_identifier,
)
from ingestlayer.pipeline.templates import Template

# Every column of the table; whether it alone carries a unique index usable by ON CONFLICT (not
# partial, not an expression, valid, checked immediately); and the names of the DEFERRABLE unique
# or primary key constraints on it alone. ON CONFLICT (delivery_id) takes every unique index on
# the column as an arbiter and refuses the whole insert (SQLSTATE 55000) if one of them is
# deferrable, even when a non-deferrable one is there too: such a table can never be inserted into.
TABLE_INFO = """
SELECT a.attname::text AS name,
       EXISTS (
         SELECT 1 FROM pg_index i
         WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indisvalid AND i.indimmediate
           AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL
       ) AS is_unique,
       ARRAY(
         SELECT c.conname::text FROM pg_index i
         JOIN pg_constraint c ON c.conindid = i.indexrelid AND c.conrelid = i.indrelid
         WHERE i.indrelid = a.attrelid AND i.indisunique AND i.indisvalid AND NOT i.indimmediate
           AND i.indnkeyatts = 1 AND i.indkey[0] = a.attnum AND i.indpred IS NULL
           AND c.contype IN ('p', 'u')
         ORDER BY c.conname
       ) AS deferrable_keys
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""


@dataclass(frozen=True)
class TableInfo:
    columns: frozenset[str]
    delivery_id_unique: bool
    # The DEFERRABLE unique keys on delivery_id alone, by constraint name.
    delivery_id_deferrable: tuple[str, ...] = ()


def create_table_sql(cfg: PostgresConfig) -> str:
    defs = [
        f"{quote_identifier(DELIVERY_ID)} text PRIMARY KEY",
        f"{quote_identifier('event_id')} text NOT NULL",
        f"{quote_identifier('event_type')} text NOT NULL",
        f"{quote_identifier('occurred_at')} timestamptz",
        f"{quote_identifier('received_at')} timestamptz NOT NULL DEFAULT now()",
    ]
    builtin = {DELIVERY_ID, *METADATA_COLUMNS, "received_at"}
    defs += [
        f"{quote_identifier(name)} {spec.type}" for name, spec in cfg.columns.items() if name not in builtin
    ]
    if cfg.jsonb_column is not None and cfg.jsonb_column not in builtin:
        defs.append(f"{quote_identifier(cfg.jsonb_column)} jsonb")
    body = ",\n  ".join(defs)
    return f"CREATE TABLE IF NOT EXISTS {cfg.quoted_table()} (\n  {body}\n)"


def insert_columns(cfg: PostgresConfig, table_columns: frozenset[str]) -> list[str]:
    """What one insert writes: delivery_id, the metadata columns the table has (unless mapped),
    the mapped columns, the jsonb column."""
    cols = [DELIVERY_ID]
    cols += [c for c in METADATA_COLUMNS if c in table_columns and c not in cfg.columns]
    cols += list(cfg.columns)
    if cfg.jsonb_column is not None:
        cols.append(cfg.jsonb_column)
    return cols


def insert_sql(cfg: PostgresConfig, columns: list[str]) -> str:
    names = ", ".join(quote_identifier(c) for c in columns)
    table = cfg.quoted_table()
    return (
        f"INSERT INTO {table} ({names}) "
        f"SELECT {names} FROM json_populate_record(NULL::{table}, $1::json) "
        f"ON CONFLICT ({quote_identifier(DELIVERY_ID)}) DO NOTHING"
    )


def compile_templates(cfg: PostgresConfig) -> dict[str, Template]:
    return {name: Template(spec.value) for name, spec in cfg.columns.items()}


def row_values(
    cfg: PostgresConfig,
    templates: Mapping[str, Template],
    columns: list[str],
    *,
    delivery_id: str,
    event: Mapping[str, Any],
) -> bytes:
    """The JSON object the insert reads: one key per column."""
    payload = event.get("payload")
    payload_map: Mapping[str, Any] = payload if isinstance(payload, dict) else {}
    envelope = {"type": event.get("type"), "id": event.get("id"), "occurred_at": event.get("occurred_at")}
    builtin: dict[str, Any] = {
        DELIVERY_ID: delivery_id,
        "event_id": event.get("id"),
        "event_type": event.get("type"),
        "occurred_at": event.get("occurred_at"),
    }
    row: dict[str, Any] = {}
    for col in columns:
        if col in templates:
            row[col] = templates[col].render(envelope, payload_map)
        elif col == cfg.jsonb_column:
            row[col] = payload
        else:
            row[col] = builtin[col]
    raw = orjson.dumps(row)
    # PostgreSQL's text and jsonb cannot hold U+0000 ("unsupported Unicode escape sequence"):
    # as every loader into PostgreSQL does, drop it, or the event could never be inserted.
    return orjson.dumps(without_nul(row)) if b"\\u0000" in raw else raw


def without_nul(value: Any) -> Any:
    """``value`` with every U+0000 taken out of its texts and keys."""
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value
