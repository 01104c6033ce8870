"""The dashboard's event log (search by type, id or time) and each event's page: its payload,
its trace through the pipelines and the deliveries it made."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ingestlayer.api.dashboard_pages import (
    PAGE,
    dashboard_stats,
    destination_names,
    filters,
    not_found_page,
    page,
    project_config,
    shown,
    storable,
)
from ingestlayer.api.dashboard_session import SignedIn, runtime
from ingestlayer.api.dashboard_views import pretty_json, trace_view
from ingestlayer.api.logs import EVENT_ID
from ingestlayer.idempotency_keys import shown as shown_key
from ingestlayer.timefmt import parse_time_filter

router = APIRouter(include_in_schema=False)


# Epoch seconds in a time filter, as the REST API takes them (ingestlayer.api.logs._time). ASCII
# digits only: re's \d also takes other scripts' digits.
def _ts(value: str | None) -> float | None:
    """A time filter: ISO 8601 (a datetime-local value is one; no zone means UTC) or epoch
    seconds, within the years 0001-9999, as the REST API takes them. None when empty; ValueError
    when it is not such a time."""
    text = (value or "").strip()
    return parse_time_filter(text) if text else None


def _local_input(ts: float | None, raw: str) -> str:
    """What a datetime-local input can show for a time given as ``raw``: the browser leaves it
    empty for epoch seconds or a zone suffix, and the next search would drop it."""
    if ts is None:
        return raw
    try:
        dt = datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)
    except (OverflowError, OSError, ValueError):
        return raw
    return dt.isoformat(timespec="milliseconds" if dt.microsecond else "seconds")


@router.get("/events")
async def event_log(
    request: Request,
    sess: SignedIn,
    type: str = "",
    id: str = "",
    since: str = "",
    until: str = "",
    before: str = "",
) -> Response:
    rt = runtime(request)
    wanted = id.strip()
    errors: list[str] = []
    status = 200
    if wanted:
        if storable(wanted):
            if wanted.startswith("dlv_") and await rt.store.get_delivery(sess.project_id, wanted) is not None:
                return RedirectResponse(f"/deliveries/{wanted}", status_code=303)
            if await rt.store.get_event(sess.project_id, wanted) is not None:
                return RedirectResponse(f"/events/{wanted}", status_code=303)
        errors.append(f"No event or delivery {shown(wanted)} in this project.")
        status = 404
    # Each time on its own: a bad one is reported without losing the other, and a search with a
    # bad value shows no rows rather than everything under the error.
    times: dict[str, float | None] = {}
    for label, raw in (("From", since), ("Until", until)):
        try:
            times[label] = _ts(raw)
        except ValueError:
            times[label] = None
            errors.append(
                f"“{label}” {shown(raw.strip())} is not a time: use ISO 8601 (2025-03-01T14:00) or"
                " epoch seconds, in UTC, within the years 0001 to 9999."
            )
            status = max(status, 422)
    t_since, t_until = times["From"], times["Until"]
    if not storable(type) or not storable(before):
        errors.append("This search holds a NUL character, which no event type or id contains.")
        status = max(status, 422)
    elif before and not EVENT_ID.fullmatch(before):
        # Compared as text, any other value moved the page silently (or listed everything).
        errors.append(
            f"{shown(before)} is not a page of these events: “older →” links carry one."
            " Start from the newest."
        )
        status = max(status, 422)
    if t_since is not None and t_until is not None and t_since > t_until:
        errors.append("“From” is later than “Until”: no event can match. Swap them?")
    rows = (
        []
        if errors
        else await dashboard_stats(request).search_events(
            sess.project_id,
            type_=type.strip() or None,
            since=t_since,
            until=t_until,
            before=before or None,
            limit=PAGE,
        )
    )
    statuses = await dashboard_stats(request).delivery_statuses(sess.project_id, [r.id for r in rows])
    return await page(
        request,
        sess,
        "events.html",
        http_status=status,
        section="events",
        title="Events",
        rows=rows,
        statuses=statuses,
        q={
            "type": type,
            "id": id,
            # The inputs are datetime-local: they can show only that form of a time.
            "since": _local_input(t_since, since),
            "until": _local_input(t_until, until),
        },
        error=" ".join(errors) or None,
        older=filters(type=type, since=since, until=until, before=rows[-1].id) if len(rows) == PAGE else None,
        first_page=not before,
        reset=filters(type=type, since=since, until=until),
    )


@router.get("/events/{event_id}")
async def event_detail(request: Request, sess: SignedIn, event_id: str) -> Response:
    rt = runtime(request)
    ev = await rt.store.get_event(sess.project_id, event_id) if storable(event_id) else None
    if ev is None:
        return await not_found_page(request, sess, "event", event_id)
    dels = await dashboard_stats(request).event_deliveries(sess.project_id, event_id)
    cfg = await project_config(request, sess.project_id)
    names = destination_names(cfg)
    # The trace names destinations and pipelines as stored: an endpoint's are "endpoint:ep_…",
    # shown here, as on the pipelines page, by the endpoint's URL (masked).
    dest_labels = {d.name: names.get(d.id, d.name) for d in cfg.destinations.values()}
    pipeline_labels = {
        p.id: names[r["destination_id"]]
        for p in cfg.pipelines
        if p.endpoint
        for r in p.config.get("destinations", [])[:1]
        if r["destination_id"] in names
    }
    return await page(
        request,
        sess,
        "event.html",
        section="events",
        title=f"{ev.type} · {ev.id}",
        ev=ev,
        idempotency_key=shown_key(ev.idempotency_key),
        payload=pretty_json(ev.payload_json),
        trace=trace_view(ev.trace),
        deliveries=dels,
        names=names,
        dest_labels=dest_labels,
        pipeline_labels=pipeline_labels,
    )
