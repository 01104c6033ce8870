"""Events and deliveries: the logs, replay, and test sends (admin key)."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from ingestlayer import clock
from ingestlayer.api.deps import Admin, RuntimeDep
from ingestlayer.api.errors import ApiError
from ingestlayer.api.json_body import JsonBodyRoute
from ingestlayer.api.render import delivery_json, event_json
from ingestlayer.ids import new_id
from ingestlayer.pipeline.matching import TYPE_FILTER_RULE, is_type_filter
from ingestlayer.records import NewEvent, ProjectConfig
from ingestlayer.replay_scope import (
    ReplayRefused,
    listed_destination,
    replayable_destinations,
    why_not_replayable,
)
from ingestlayer.store.store import AtLeast, Store
from ingestlayer.timefmt import parse_time_filter

router = APIRouter(prefix="/v1", tags=["logs"], route_class=JsonBodyRoute)

Status = Literal["pending", "delivering", "retrying", "delivered", "dead"]
TEST_WAIT_SECONDS = 15.0


def _time(value: str | None, field: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_time_filter(value)
    except ValueError:
        raise ApiError(422, f"{field} must be an ISO 8601 timestamp or epoch seconds", field=field) from None


def _time_range(since: str | None, until: str | None) -> tuple[float | None, float | None]:
    """``since`` and ``until`` as times; bounds the wrong way round are a 422, not an empty answer
    (or a bulk replay of nothing) that reads as "there is none"."""
    start, end = _time(since, "since"), _time(until, "until")
    if start is not None and end is not None and start > end:
        raise ApiError(
            422,
            f"since ({since}) is later than until ({until}): nothing can match; swap them?",
            field="since",
        )
    return start, end


# An id as ingestlayer makes them: its kind, then a ULID (Crockford's base32).
_ULID = "[0-9A-HJKMNP-TV-Z]{26}"
EVENT_ID = re.compile(f"evt_{_ULID}")
DELIVERY_ID = re.compile(f"dlv_{_ULID}")
_EVENT_ID, _DELIVERY_ID = EVENT_ID, DELIVERY_ID


def _cursor(
    value: str | None,
    pattern: re.Pattern[str],
    what: str,
    field: str = "before",
    given_by: str = "a page's next_before",
) -> str | None:
    """A cursor (``before``, ``after``), which must be an id of the kind listed: compared as
    text, any other string silently moved the page (``before=zzz`` listed everything)."""
    if value is not None and not pattern.fullmatch(value):
        raise ApiError(
            422, f"{field} must be {what} id, as {given_by} gives, not {value[:80]!r}", field=field
        )
    return value


async def _config(rt: Any, project_id: str) -> ProjectConfig:
    config: ProjectConfig = await rt.store.load_project_config(project_id)
    return config


def _names(cfg: ProjectConfig) -> dict[str, str]:
    return {d.id: d.name for d in cfg.destinations.values()}


@router.get("/events", summary="List events, newest first (keyset pagination with `before`)")
async def list_events(
    principal: Admin,
    rt: RuntimeDep,
    type: str | None = Query(default=None, description="An event type, or a prefix ending in *"),
    since: str | None = None,
    until: str | None = None,
    before: str | None = Query(default=None, description="Return events older than this event id"),
    limit: int = Query(default=50, ge=1, le=500),
) -> dict[str, Any]:
    if type and not is_type_filter(type):  # empty: no filter, as before
        raise ApiError(
            422,
            f"{TYPE_FILTER_RULE}, not {type[:80]!r}",
            field="type",
        )
    start, end = _time_range(since, until)
    items = await rt.store.list_events(
        principal.project_id,
        type_=type,
        before=_cursor(before, _EVENT_ID, "an event"),
        since=start,
        until=end,
        limit=limit,
    )
    return {
        "data": [event_json(e) for e in items],
        "next_before": items[-1].id if len(items) == limit else None,
    }


@router.get("/events/{event_id}", summary="One event, its step trace and its deliveries")
async def get_event(event_id: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    ev = await rt.store.get_event(principal.project_id, event_id)
    if ev is None:
        raise ApiError(404, f"no event {event_id!r}")
    dels = await rt.store.list_deliveries(principal.project_id, event_id=event_id, limit=500)
    names = _names(await _config(rt, principal.project_id))
    return {**event_json(ev), "deliveries": [delivery_json(d, names) for d in dels]}


@router.get("/deliveries", summary="List deliveries, newest first")
async def list_deliveries(
    principal: Admin,
    rt: RuntimeDep,
    status: list[Status] | None = Query(default=None),
    destination: str | None = Query(default=None, description="Destination id or name"),
    event_id: str | None = None,
    before: str | None = None,
    limit: int = Query(default=50, ge=1, le=500),
) -> dict[str, Any]:
    cfg = await _config(rt, principal.project_id)
    names, dest_id = _names(cfg), await _listed_destination(rt.store, cfg, destination)
    items = await rt.store.list_deliveries(
        principal.project_id,
        status=status,
        destination_id=dest_id,
        event_id=event_id,
        before=_cursor(before, _DELIVERY_ID, "a delivery"),
        limit=limit,
    )
    page: dict[str, Any] = {
        "data": [delivery_json(d, names) for d in items],
        "next_before": items[-1]["id"] if len(items) == limit else None,
    }
    if before is None:
        # Once per listing, not once per page of an export. Each status is counted up to a cap
        # (a busy project keeps millions of delivered ones): those that reach it are listed in
        # counts_capped, and have that many or more.
        counts = await rt.store.delivery_counts(principal.project_id)
        page["counts"] = {st: int(n) for st, n in counts.items()}
        page["counts_capped"] = [st for st, n in counts.items() if isinstance(n, AtLeast)]
    return page


async def _listed_destination(store: Store, cfg: ProjectConfig, destination: str | None) -> str | None:
    """A listing's destination filter: one deleted still lists its deliveries by its dst_ id."""
    if destination is None:
        return None
    found = await listed_destination(store, cfg, destination)
    if found is None:
        raise ApiError(404, f"no destination {destination!r}", field="destination")
    return found


def _destination_id(cfg: ProjectConfig, destination: str | None) -> str | None:
    if destination is None:
        return None
    found = cfg.destination_id(destination)
    if found is None:
        raise ApiError(404, f"no destination {destination!r}", field="destination")
    return found


@router.get("/deliveries/{delivery_id}", summary="One delivery with every attempt")
async def get_delivery(delivery_id: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    d = await rt.store.get_delivery(principal.project_id, delivery_id)
    if d is None:
        raise ApiError(404, f"no delivery {delivery_id!r}")
    return delivery_json(d, _names(await _config(rt, principal.project_id)))


@router.post("/deliveries/{delivery_id}/replay", summary="Attempt a delivery again, on the same id")
async def replay_one(delivery_id: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    d = await rt.store.get_delivery(principal.project_id, delivery_id)
    if d is None:
        raise ApiError(404, f"no delivery {delivery_id!r}")
    in_flight = ApiError(409, "this delivery is being attempted right now")
    if d["status"] == "delivering":
        raise in_flight
    problem = why_not_replayable(await _config(rt, principal.project_id), d["destination_id"])
    if problem is not None:
        raise ApiError(409, problem)
    # Checked again as it is replayed: a worker may take it between that read and the update,
    # which then leaves it alone.
    if not await rt.store.replay(principal.project_id, [delivery_id]):
        raise in_flight
    rt.dispatcher.wake.set()
    return {"replayed": [delivery_id]}


class BulkReplay(BaseModel):
    model_config = ConfigDict(extra="forbid")
    status: list[Status] = Field(default_factory=lambda: list[Status](["dead"]))
    destination: str | None = None
    since: str | None = None
    until: str | None = None
    after: str | None = Field(
        default=None, description="Only deliveries after this id: the next_after of the request before"
    )
    limit: int = Field(default=10_000, ge=1, le=100_000)


@router.post("/deliveries/replay", summary="Replay every delivery matching a filter (default: all dead)")
async def replay_bulk(body: BulkReplay, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    if not body.status:
        # The store reads no status as any status: that would send delivered webhooks again.
        raise ApiError(422, 'status must name at least one status, e.g. ["dead"]', field="status")
    if "delivering" in body.status:
        raise ApiError(422, "deliveries being attempted cannot be replayed", field="status")
    after = _cursor(body.after, _DELIVERY_ID, "a delivery", "after", "the last answer's next_after")
    since, until = _time_range(body.since, body.until)
    cfg = await _config(rt, principal.project_id)
    try:
        destination_ids = await replayable_destinations(rt.store, cfg, body.destination)
    except LookupError as exc:
        raise ApiError(404, str(exc.args[0]), field="destination") from None
    except ReplayRefused as exc:
        raise ApiError(409, str(exc), field="destination") from None
    ids = await rt.store.replay(
        principal.project_id,
        status=body.status,
        destination_ids=destination_ids,
        since=since,
        until=until,
        after=after,
        limit=body.limit,
    )
    rt.dispatcher.wake.set()
    # A full page may have more after it: the next request starts after its last id, so the
    # ones replayed here are not picked again even when they have failed again meanwhile.
    return {"replayed": ids, "count": len(ids), "next_after": ids[-1] if len(ids) == body.limit else None}


@router.post(
    "/destinations/{destination:path}/test", summary="Send a test event to one destination and report"
)
async def test_destination(destination: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    cfg = await _config(rt, principal.project_id)
    names, dest_id = _names(cfg), _destination_id(cfg, destination)
    assert dest_id is not None
    now = clock.now()
    event = NewEvent(
        id=new_id("evt"),
        project_id=principal.project_id,
        type="ingestlayer.test",
        payload_json='{"message":"a test event from ingestlayer"}',
        idempotency_key=None,
        source="test",
        occurred_at=now,
        received_at=now,
    )
    delivery_id = await rt.store.create_test_delivery(event, dest_id)
    rt.dispatcher.wake.set()
    # The worker sends it like any delivery; wait briefly for the first attempt to be logged.
    deadline = time.monotonic() + TEST_WAIT_SECONDS
    while time.monotonic() < deadline:
        d = await rt.store.get_delivery(principal.project_id, delivery_id)
        if d is not None and d["attempt_log"]:
            return delivery_json(d, names)
        await asyncio.sleep(0.05)
    d = await rt.store.get_delivery(principal.project_id, delivery_id)
    assert d is not None
    return delivery_json(d, names)
