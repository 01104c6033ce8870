"""Records built from the hot path's rows, shared by the SQLite and PostgreSQL versions.

Rows arrive as plain tuples (``sqlite3`` rows, asyncpg records), columns in the order the
``*_COLUMNS`` constants give, so both backends select the same columns in the same order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import orjson

from ingestlayer import clock
from ingestlayer.ids import new_id
from ingestlayer.records import (
    AttemptResult,
    DestinationRow,
    LeasedDelivery,
    NewDelivery,
    NewEvent,
    StoredEvent,
)

EVENT_COLUMNS = "id, project_id, type, payload, idempotency_key, source, occurred_at, received_at, trace"
DELIVERY_COLUMNS = "id, project_id, event_id, event_type, destination_id, attempts, retry_base, body"
DESTINATION_COLUMNS = "id, project_id, name, kind, config, enabled, updated_at"


def empty_pipeline() -> dict[str, Any]:
    return {"source": {"match": []}, "steps": [], "destinations": []}


def empty_destination() -> dict[str, Any]:
    return {"settings": {}}


def empty_source() -> dict[str, Any]:
    return {}


def stored_config(raw: str | bytes, empty: Callable[[], dict[str, Any]]) -> tuple[dict[str, Any], str | None]:
    """A configuration row's JSON, and why it cannot be read (None: it can). A row edited by hand
    may hold text that is not JSON, or (SQLite, whose rows are read as bytes: see
    ``CONFIG_BYTES``) not even UTF-8. It is taken as ``empty()``, the shape every reader expects,
    holding nothing: reading it used to fail the read of the whole project's configuration, and
    with it the apply or API request that would replace or delete it. What cannot run without
    it (routing, delivery) looks at the reason and waits."""
    try:
        config = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:  # orjson says so of bytes that are not UTF-8, too
        return empty(), f"its stored configuration cannot be read: {exc}"
    if not isinstance(config, dict):
        return empty(), "its stored configuration is not a JSON object"
    return config, None


def stored_event(r: Sequence[Any]) -> StoredEvent:
    return StoredEvent(
        id=r[0],
        project_id=r[1],
        type=r[2],
        payload_json=r[3],
        idempotency_key=r[4],
        source=r[5],
        occurred_at=r[6],
        received_at=r[7],
        trace=orjson.loads(r[8]) if r[8] else None,
    )


def stored_from_new(ev: NewEvent) -> StoredEvent:
    """An event just inserted, as the router reads it (no trace yet)."""
    return StoredEvent(
        ev.id,
        ev.project_id,
        ev.type,
        ev.payload_json,
        ev.idempotency_key,
        ev.source,
        ev.occurred_at,
        ev.received_at,
    )


def leased_delivery(r: Sequence[Any], token: str, lease_until: float) -> LeasedDelivery:
    return LeasedDelivery(
        id=r[0],
        project_id=r[1],
        event_id=r[2],
        event_type=r[3],
        destination_id=r[4],
        attempts=r[5],
        retry_base=r[6],
        body=r[7],
        lease_token=token,
        lease_until=lease_until,
    )


def new_delivery_rows(
    deliveries: Sequence[NewDelivery], prelease: int, lease_seconds: float
) -> tuple[list[tuple[Any, ...]], list[LeasedDelivery], float]:
    """INSERT parameters of routed deliveries (id, project_id, event_id, event_type, pipeline_id,
    destination_id, status, due_at, lease_token, body), the time they are created at, and the
    first ``prelease`` as leased deliveries: those are inserted already leased (handed straight
    to this process's dispatcher), the rest due now."""
    now = clock.now()
    token = new_id("lse")
    leased = len(deliveries[:prelease])
    lease_until = now + lease_seconds
    rows = [
        (
            d.id,
            d.project_id,
            d.event_id,
            d.event_type,
            d.pipeline_id,
            d.destination_id,
            *(("delivering", lease_until, token) if i < leased else ("pending", now, None)),
            d.body,
        )
        for i, d in enumerate(deliveries)
    ]
    return rows, [leased_new(d, token, lease_until) for d in deliveries[:prelease]], now


def leased_new(d: NewDelivery, token: str, lease_until: float) -> LeasedDelivery:
    """A delivery inserted already leased (handed to this process's dispatcher)."""
    return LeasedDelivery(
        d.id, d.project_id, d.event_id, d.event_type, d.destination_id, 0, 0, d.body, token, lease_until
    )


def _text(value: str | bytes, what: str) -> tuple[str, str | None]:
    """A text column read as bytes (SQLite: see sqlite_hot.get_destinations), and why it cannot
    be used when it is not UTF-8."""
    if isinstance(value, str):
        return value, None
    try:
        return value.decode(), None
    except UnicodeDecodeError:
        return value.decode(errors="replace"), f"its stored {what} is not UTF-8"


def destination(r: Sequence[Any]) -> DestinationRow:
    config, unreadable = stored_config(r[4], empty_destination)
    name, bad_name = _text(r[2], "name")
    kind, bad_kind = _text(r[3], "kind")
    return DestinationRow(
        id=r[0],
        project_id=r[1],
        name=name,
        kind=kind,
        config=config,
        enabled=bool(r[5]),
        updated_at=r[6],
        unreadable=bad_name or bad_kind or unreadable,
    )


def attempt_row(r: AttemptResult) -> tuple[Any, ...]:
    """delivery_id, project_id, n, started_at, duration_ms, status_code, error, response_excerpt,
    next_retry_at, worker: the attempts table's columns, in that order."""
    return (
        r.delivery_id,
        r.project_id,
        r.n,
        r.started_at,
        r.duration_ms,
        r.status_code,
        r.error,
        r.response_excerpt,
        r.next_retry_at,
        r.worker,
    )


def finished_state(r: AttemptResult, now: float) -> tuple[Any, ...]:
    """The delivery's state after an attempt: id, lease token, status, attempts, due_at,
    last status code, last error, finished_at."""
    return (
        r.delivery_id,
        r.lease_token,
        r.status,
        r.n,
        r.next_retry_at if r.status == "retrying" else None,
        r.status_code,
        r.error,
        now if r.status in ("delivered", "dead") else None,
    )
