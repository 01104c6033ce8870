"""The dashboard's deliveries: Webhooks → Logs (every attempt) and Dead letters, each delivery's
page with its attempts, and replaying one delivery or all that match a filter."""

from __future__ import annotations

from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ingestlayer.api import logs as logs_api
from ingestlayer.api.dashboard_pages import (
    PAGE,
    dashboard_stats,
    destination_names,
    endpoint_urls,
    error_page,
    filters,
    not_found_page,
    page,
    project_config,
    redirect,
    shown,
    signed_in_post,
    storable,
)
from ingestlayer.api.dashboard_session import SignedIn, runtime, safe_next, seal, unseal
from ingestlayer.api.dashboard_views import STATUSES, pretty_json
from ingestlayer.api.errors import ApiError
from ingestlayer.api.logs import DELIVERY_ID

router = APIRouter(include_in_schema=False)

# The statuses worth a count in the logs' filter (delivered, most rows by far, is left out).
UNSETTLED = ("pending", "delivering", "retrying", "dead")
# The field of the logs' sealed "older →" cursor (see _attempt_cursor).
_CURSOR_FIELD = "attempts_before"


@router.get("/webhooks/logs")
async def delivery_logs(
    request: Request, sess: SignedIn, status: str = "", destination: str = "", before: str = ""
) -> Response:
    cfg = await project_config(request, sess.project_id)
    names = destination_names(cfg)
    stats = dashboard_stats(request)
    cursor = _attempt_cursor(request, before) if before else None
    error = _unknown_filter(names, destination, status)
    rows: list[Any] = []
    if error:
        status, destination = "", ""
    elif before and cursor is None:
        error = (
            f"{shown(before)} is not a page of these logs: “older →” links carry one. Start from the newest."
        )
    else:
        rows = await stats.list_attempts(
            sess.project_id,
            status=[status] if status else None,
            destination_id=destination or None,
            before=cursor,
            limit=PAGE,
        )
    # Beside each status in the filter: of the chosen destination's deliveries, when one is.
    counts = await runtime(request).store.delivery_counts(
        sess.project_id, statuses=UNSETTLED, destination_id=destination or None, zeros=True
    )
    return await page(
        request,
        sess,
        "logs.html",
        http_status=422 if error else 200,
        section="webhooks",
        sub="logs",
        title="Delivery logs",
        rows=rows,
        names=names,
        status=status,
        destination=destination,
        counts=counts,
        older=filters(
            status=status,
            destination=destination,
            before=seal(runtime(request), {_CURSOR_FIELD: rows[-1].id}),
        )
        if len(rows) == PAGE
        else None,
        first_page=not before,
        reset=filters(status=status, destination=destination),
        error=error,
    )


def _unknown_filter(names: dict[str, str], destination: str, status: str = "") -> str | None:
    """Why a filter cannot be applied, or None. Ignored, it listed everything unfiltered, and the
    dead letters' "Replay all matching" then replayed every destination's."""
    if destination and destination not in names:
        return (
            f"There is no destination {shown(destination)} in this project (it may have been "
            "deleted): choose one from the list."
        )
    if status and status not in STATUSES:
        return f"{shown(status)} is not a delivery status: choose one from the list."
    return None


def _attempt_cursor(request: Request, before: str) -> int | None:
    """The attempt id sealed in the logs' ``before``, or None if it holds none.

    Attempt ids count up across every project on the server: shown in the link, the gaps
    between a project's own ids would tell it how many attempts other projects made, and when.
    The link carries the id encrypted with the server's key instead."""
    data = unseal(runtime(request), before)
    value = data.get(_CURSOR_FIELD) if data is not None else None
    return value if type(value) is int else None


@router.get("/webhooks/dead")
async def dead_letters(request: Request, sess: SignedIn, destination: str = "", before: str = "") -> Response:
    rt = runtime(request)
    cfg = await project_config(request, sess.project_id)
    names = destination_names(cfg)
    error = _unknown_filter(names, destination)
    rows: list[dict[str, Any]] = []
    if error:
        destination = ""
    elif before and not DELIVERY_ID.fullmatch(before):
        # Not only a NUL (a 500 on PostgreSQL): compared as text, any other value moved the page.
        error = "That is not a delivery id: “older →” links carry one. Start again from the newest."
    else:
        rows = await rt.store.list_deliveries(
            sess.project_id,
            status=["dead"],
            destination_id=destination or None,
            before=before or None,
            limit=PAGE,
        )
    # What "Replay all matching" replays: the dead deliveries of the filter's destination.
    counts = await rt.store.delivery_counts(
        sess.project_id, statuses=("dead",), destination_id=destination or None, zeros=True
    )
    return await page(
        request,
        sess,
        "dead.html",
        http_status=422 if error else 200,
        section="webhooks",
        sub="dead",
        title="Dead letters",
        rows=rows,
        names=names,
        destination=destination,
        dead_total=counts.get("dead", 0),
        older=filters(destination=destination, before=rows[-1]["id"]) if len(rows) == PAGE else None,
        first_page=not before,
        here=request.url.path + ("?" + request.url.query if request.url.query else ""),
        error=error,
    )


@router.get("/deliveries/{delivery_id}")
async def delivery_detail(request: Request, sess: SignedIn, delivery_id: str) -> Response:
    rt = runtime(request)
    d = await rt.store.get_delivery(sess.project_id, delivery_id) if storable(delivery_id) else None
    if d is None:
        return await not_found_page(request, sess, "delivery", delivery_id)
    cfg = await project_config(request, sess.project_id)
    return await page(
        request,
        sess,
        "delivery.html",
        section="webhooks",
        sub="logs",
        title=f"Delivery {delivery_id}",
        d=d,
        destination_name=destination_names(cfg).get(d["destination_id"], d["destination_id"]),
        endpoint_id=endpoint_urls(cfg).get(d["destination_id"]),
        body=pretty_json(d["body"]),
    )


@router.post("/deliveries/{delivery_id}/replay")
async def replay_one(request: Request, delivery_id: str) -> Response:
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    sess, form = got
    target = safe_next(form.get("next") or f"/deliveries/{delivery_id}")
    if not storable(delivery_id):
        return await not_found_page(request, sess, "delivery", delivery_id)
    try:
        await logs_api.replay_one(delivery_id, sess.principal, runtime(request))
    except ApiError as exc:
        if exc.status == 404:
            return await not_found_page(request, sess, "delivery", delivery_id)
        return redirect(request, target, exc.message, "error")
    return redirect(request, target, f"Replaying {delivery_id}: a new attempt is on its way.")


# What one click of "Replay all matching" replays at most, in pages of the API's default limit.
DASHBOARD_REPLAY_MAX = 100_000


@router.post("/deliveries/replay")
async def replay_matching(request: Request) -> Response:
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    sess, form = got
    target = safe_next(form.get("next") or "/webhooks/dead")
    status = form.get("status") or "dead"
    if status not in STATUSES or status == "delivering":
        return await error_page(
            request, sess, 422, "Only pending, retrying, delivered or dead deliveries replay."
        )
    n, after = 0, None
    while True:  # a page at a time, each after the last one's ids (see logs_api.replay_bulk)
        body = logs_api.BulkReplay(
            status=[cast(Any, status)], destination=form.get("destination") or None, after=after
        )
        try:
            result = await logs_api.replay_bulk(body, sess.principal, runtime(request))
        except ApiError as exc:
            return redirect(request, target, exc.message, "error")
        n += int(result["count"])
        after = result["next_after"]
        if after is None or n >= DASHBOARD_REPLAY_MAX:
            break
    more = " (the most one click replays; click again for the rest)" if after is not None else ""
    return redirect(request, target, f"Replaying {n} deliver{'y' if n == 1 else 'ies'}{more}.")
