"""What every dashboard page shares: rendering a page or an error in the site's layout, redirects
with a flash message, the signed-in POST check (session + CSRF), and the project's configuration
and destination names as the pages show them. The routes live in the ``dashboard_*`` modules
that :mod:`ingestlayer.api.dashboard` gathers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ingestlayer import clock
from ingestlayer.api.dashboard_session import (
    Session,
    clear_flash,
    load_session,
    read_flash,
    read_form,
    runtime,
    set_flash,
    to_login,
    tokens_match,
)
from ingestlayer.api.dashboard_static import ASSET_VERSION
from ingestlayer.api.dashboard_views import mask_url, render
from ingestlayer.records import ProjectConfig
from ingestlayer.store.stats import DashboardStats

# Rows on one page of the delivery logs, the dead letters and the event log.
PAGE = 50
SECURITY_HEADERS = {
    # No script at all; styles and images from this server only.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def dashboard_stats(request: Request) -> DashboardStats:
    stats: DashboardStats | None = getattr(request.app.state, "dashboard_stats", None)
    if stats is None:
        stats = DashboardStats(runtime(request).store.engines)
        request.app.state.dashboard_stats = stats
    return stats


async def _project_name(request: Request, project_id: str) -> str:
    for p in await runtime(request).store.list_projects():
        if p["id"] == project_id:
            return str(p["name"])
    return project_id


async def page(
    request: Request,
    sess: Session | None,
    template: str,
    *,
    http_status: int = 200,
    section: str = "",
    **context: Any,
) -> HTMLResponse:
    html = render(
        template,
        csrf=sess.csrf if sess else "",
        signed_in=sess is not None,
        project=await _project_name(request, sess.project_id) if sess else "",
        section=section,
        path=request.url.path,
        flash=read_flash(request),
        asset_version=ASSET_VERSION,
        # Stored times (next retry, attempts) are on the database's clock: "in 5 min" too.
        now=clock.now(),
        **context,
    )
    response = HTMLResponse(html, status_code=http_status, headers=SECURITY_HEADERS)
    clear_flash(request, response)
    return response


async def error_page(request: Request, sess: Session | None, status: int, message: str) -> HTMLResponse:
    titles = {
        403: "Forbidden",
        404: "Not found",
        409: "Conflict",
        413: "Too large",
        422: "Invalid",
        503: "Unavailable",
    }
    return await page(
        request, sess, "error.html", http_status=status, title=titles.get(status, "Error"), message=message
    )


async def not_found_page(request: Request, sess: Session, what: str, key: str) -> HTMLResponse:
    """The 404 page of a ``what`` (an event, a delivery, an endpoint) this project has no ``key`` of."""
    return await error_page(request, sess, 404, f"There is no {what} {key!r} in this project.")


def redirect(request: Request, target: str, message: str | None = None, kind: str = "ok") -> Response:
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    if message:
        set_flash(request, response, message, kind)
    return response


async def signed_in_post(request: Request) -> tuple[Session, dict[str, str]] | Response:
    """A signed-in POST with a valid CSRF token: (session, form), else the response to send."""
    sess = await load_session(request)
    if sess is None:
        return to_login(request)
    form = await read_form(request)
    if form is None:
        return await error_page(request, sess, 413, "The form is too large.")
    if not tokens_match(sess.csrf, form.get("csrf")):
        return await error_page(
            request, sess, 403, "This form is missing its security token or it has expired: reload the page."
        )
    return sess, form


def storable(value: str) -> bool:
    """Whether a stored id or type could equal ``value``: PostgreSQL text holds no NUL character,
    and its driver answers a query carrying one with an error rather than no rows."""
    return "\x00" not in value


def shown(value: str, limit: int = 60) -> str:
    """A value from the URL, quoted for a message."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


async def project_config(request: Request, project_id: str) -> ProjectConfig:
    return await runtime(request).store.load_project_config(project_id)


def destination_names(cfg: ProjectConfig) -> dict[str, str]:
    """Destination id → what to call it: its name, or an endpoint's URL."""
    names = {d.id: d.name for d in cfg.destinations.values()}
    for p in cfg.pipelines:
        for r in p.config.get("destinations", []):
            d = cfg.destinations.get(r["destination_id"])
            if p.endpoint and d is not None:
                url = d.config.get("settings", {}).get("url")
                names[d.id] = mask_url(str(url)) if url else d.name
    return names


def endpoint_urls(cfg: ProjectConfig) -> dict[str, str]:
    """Destination id → the endpoint id it belongs to."""
    return {
        r["destination_id"]: p.id
        for p in cfg.pipelines
        if p.endpoint
        for r in p.config.get("destinations", [])
    }


def filters(**values: Any) -> str:
    return urlencode({k: v for k, v in values.items() if v not in (None, "")})
