"""The dashboard's overview page: throughput, success and latency charts, and delivery counts."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ingestlayer.api.dashboard_pages import dashboard_stats, page, shown
from ingestlayer.api.dashboard_session import SignedIn, runtime
from ingestlayer.api.dashboard_views import latency_chart, success_chart, throughput_chart
from ingestlayer.store.stats import RANGES, id_bound

router = APIRouter(include_in_schema=False)


@router.get("/")
async def overview(request: Request, sess: SignedIn, range: str = "24h") -> Response:
    error = None
    if range not in RANGES:
        # Said, not silently replaced: the page would otherwise pass for the window asked for.
        error = f"{shown(range)} is not a time window: choose 1 h, 24 h or 7 d. Showing 24 h."
        range = "24h"
    stats = dashboard_stats(request)
    series = await stats.series(sess.project_id, range)
    # Each status counted up to the store's cap: one that reaches it shows as "100 000+".
    counts = await runtime(request).store.delivery_counts(
        sess.project_id, since_id=id_bound("dlv", series.start), zeros=True
    )
    return await page(
        request,
        sess,
        "overview.html",
        section="overview",
        title="Overview",
        range=range,
        ranges=list(RANGES),
        series=series,
        charts=[throughput_chart(series), success_chart(series), latency_chart(series)],
        counts=counts,
        error=error,
    )
