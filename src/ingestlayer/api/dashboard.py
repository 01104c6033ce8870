"""The dashboard at ``/``: server-rendered pages (Jinja2), sign-in with an admin key.

Pages: overview (charts), pipelines (recipe cards), Webhooks → Endpoints / Logs / Dead letters,
the event log and each event's trace, each delivery with all its attempts. Every change goes
through the same functions as the REST API (:mod:`ingestlayer.api.endpoints`,
:mod:`ingestlayer.api.logs`), so validation and effects are the API's. The pages work without
JavaScript; POST forms carry a CSRF token; see :mod:`ingestlayer.api.dashboard_session`.

The routes are grouped by area, one module each, and gathered here in the order they were
written in (FastAPI tries routes in that order, so e.g. ``/webhooks/endpoints/new`` comes before
``/webhooks/endpoints/{endpoint_id}``):

- :mod:`~ingestlayer.api.dashboard_static`: ``/static/…``
- :mod:`~ingestlayer.api.dashboard_signin`: ``/login``, ``/logout``
- :mod:`~ingestlayer.api.dashboard_overview`: ``/``
- :mod:`~ingestlayer.api.dashboard_pipelines`: ``/pipelines``, ``/connections/slack``
- :mod:`~ingestlayer.api.dashboard_endpoints`: ``/webhooks``, ``/webhooks/endpoints…``
  (the form itself: :mod:`~ingestlayer.api.dashboard_endpoint_form`)
- :mod:`~ingestlayer.api.dashboard_deliveries`: ``/webhooks/logs``, ``/webhooks/dead``,
  ``/deliveries/…``
- :mod:`~ingestlayer.api.dashboard_events`: ``/events``, ``/events/{event_id}``

What the pages share (rendering, errors, redirects, the CSRF check) is in
:mod:`~ingestlayer.api.dashboard_pages`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ingestlayer.api import (
    dashboard_deliveries,
    dashboard_endpoints,
    dashboard_events,
    dashboard_overview,
    dashboard_pipelines,
    dashboard_signin,
    dashboard_static,
)
from ingestlayer.api.dashboard_pages import error_page
from ingestlayer.api.dashboard_session import load_session

router = APIRouter(include_in_schema=False)
router.include_router(dashboard_static.router)
router.include_router(dashboard_signin.router)
router.include_router(dashboard_overview.router)
router.include_router(dashboard_pipelines.router)
router.include_router(dashboard_endpoints.router)
router.include_router(dashboard_deliveries.router)
router.include_router(dashboard_events.router)


async def not_found_page(request: Request) -> HTMLResponse:
    """The dashboard's 404 for a page address nothing serves (see
    :func:`dashboard_session.wants_page`): in the site's layout, signed in or not."""
    sess = await load_session(request)
    return await error_page(request, sess, 404, "There is no page at this address.")
