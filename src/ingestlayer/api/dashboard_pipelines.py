"""The dashboard's pipelines page (recipe cards, sources) and its "Connect Slack" button."""

from __future__ import annotations

import importlib
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ingestlayer.api.dashboard_pages import (
    error_page,
    page,
    project_config,
    redirect,
    shown,
    signed_in_post,
)
from ingestlayer.api.dashboard_session import SignedIn, runtime
from ingestlayer.api.dashboard_views import pipeline_card
from ingestlayer.api.errors import ApiError

router = APIRouter(include_in_schema=False)

SLACK_AUTHORIZE_PATH = "/v1/connections/slack/authorize"


def _has_route(routes: Any, path: str, depth: int = 0) -> bool:
    """Whether ``path`` is served, looking into included routers (FastAPI wraps them)."""
    for route in routes:
        if getattr(route, "path", None) == path:
            return True
        inner = getattr(route, "original_router", route)
        sub = getattr(inner, "routes", None)
        if sub is not None and sub is not routes and depth < 4 and _has_route(sub, path, depth + 1):
            return True
    return False


def _slack_connect_available(request: Request) -> bool:
    return _has_route(request.app.routes, SLACK_AUTHORIZE_PATH)


# Cards on one page: each is a pipeline's settings and YAML, about a millisecond to build; a
# project of 2,000 pipelines made one page of 3.8 MB in 2.5 s, every request waiting meanwhile.
CARDS_PER_PAGE = 50


@router.get("/pipelines")
async def pipelines(request: Request, sess: SignedIn) -> Response:
    rt = runtime(request)
    cfg = await project_config(request, sess.project_id)
    secret_names = {s["name"] for s in await rt.store.list_secrets(sess.project_id)}
    # Recipes first, then endpoints, as the page shows them; a page at a time.
    ordered = [p for p in cfg.pipelines if not p.endpoint] + [p for p in cfg.pipelines if p.endpoint]
    pages = max(1, -(-len(ordered) // CARDS_PER_PAGE))
    asked = request.query_params.get("page", "1")
    error = None
    # ASCII digits only (str.isdigit() takes "²"). A page that is not one shows the nearest, and
    # says so: shown in silence, page 1 passed for the page asked for.
    number = int(asked) if asked.isascii() and asked.isdigit() and len(asked) < 10 else None
    if number is None or number < 1:
        error = f"{shown(asked)} is not a page number. Showing page 1."
        number = 1
    elif number > pages:
        there = "is 1 page" if pages == 1 else f"are {pages} pages"
        error = f"There is no page {number}: there {there}. Showing page {pages}."
        number = pages
    on_page = ordered[(number - 1) * CARDS_PER_PAGE : number * CARDS_PER_PAGE]
    cards = [pipeline_card(p, cfg, secret_names) for p in on_page]
    sources = sorted(cfg.sources.values(), key=lambda s: s.name)
    return await page(
        request,
        sess,
        "pipelines.html",
        section="pipelines",
        title="Pipelines",
        cards=[c for c in cards if not c.endpoint],
        endpoint_cards=[c for c in cards if c.endpoint],
        total=len(ordered),
        page_number=number,
        pages=pages,
        sources=sources,
        slack_connect=_slack_connect_available(request),
        error=error,
    )


@router.post("/connections/slack")
async def connect_slack(request: Request) -> Response:
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    sess, form = got
    if not _slack_connect_available(request):
        return await error_page(request, sess, 404, "Slack connections are not available on this server.")
    oauth: Any = importlib.import_module("ingestlayer.api.slack_oauth")
    try:
        response: Response = await oauth.start(
            request, sess.principal, runtime(request), form.get("name", ""), bind_browser=True
        )
    except ApiError as exc:
        return redirect(request, "/pipelines", f"Slack could not be connected: {exc.message}", "error")
    return response
