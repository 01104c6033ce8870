"""The dashboard at ``/``: server-rendered pages (Jinja2), sign-in with an admin key.

Pages: overview (charts), pipelines (recipe cards), Webhooks → Endpoints / Logs / Dead letters,
the event log and each event's trace, each delivery with all its attempts. Every change goes
through the same functions as the REST API (:mod:`ingestlayer.api.endpoints`,
:mod:`ingestlayer.api.logs`), so validation and effects are the API's. The pages work without
JavaScript; POST forms carry a CSRF token; see :mod:`ingestlayer.api.dashboard_session`.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from ingestlayer import clock
from ingestlayer.api import endpoints as endpoints_api
from ingestlayer.api import logs as logs_api
from ingestlayer.api.dashboard_session import (
    Session,
    SignedIn,
    clear_flash,
    clear_secret,
    end_session,
    load_session,
    login_csrf,
    read_flash,
    read_form,
    read_secret,
    remember_login_csrf,
    runtime,
    safe_next,
    set_flash,
    start_session,
    stash_secret,
    to_login,
    tokens_match,
)
from ingestlayer.api.dashboard_views import (
    STATUSES,
    WEB,
    latency_chart,
    mask_url,
    mask_urls_in,
    pipeline_card,
    pretty_json,
    render,
    success_chart,
    throughput_chart,
    trace_view,
)
from ingestlayer.api.errors import ApiError
from ingestlayer.idempotency_keys import shown as shown_key
from ingestlayer.records import ProjectConfig
from ingestlayer.store.stats import RANGES, DashboardStats, id_bound
from ingestlayer.timefmt import parse_time_filter

router = APIRouter(include_in_schema=False)

PAGE = 50
# The statuses worth a count in the logs' filter (delivered, most rows by far, is left out).
UNSETTLED = ("pending", "delivering", "retrying", "dead")
SLACK_AUTHORIZE_PATH = "/v1/connections/slack/authorize"
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
# Epoch seconds in a time filter, as the REST API takes them (ingestlayer.api.logs._time). ASCII
# digits only: re's \d also takes other scripts' digits.
# An attempt id in the logs' "older →" link: ASCII digits (str.isdigit() also takes "²", which
# int() refuses) of a 64-bit integer.
_ATTEMPT_ID = re.compile(r"[0-9]{1,19}")
_INT64_MAX = 2**63 - 1
# attempts.id is an INTEGER column: 64-bit on SQLite, 32-bit on PostgreSQL, whose driver refuses
# a larger parameter instead of finding nothing.
_ATTEMPT_ID_MAX = {"postgresql": 2**31 - 1}
_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".js": "text/javascript"}


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    out: dict[str, tuple[bytes, str, str]] = {}
    folder = WEB / "static"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and path.suffix in _STATIC_TYPES:
            data = path.read_bytes()
            out[path.name] = (data, _STATIC_TYPES[path.suffix], hashlib.sha256(data).hexdigest()[:16])
    return out


STATIC = _load_static()
ASSET_VERSION = hashlib.sha256(b"".join(v[2].encode() for v in STATIC.values())).hexdigest()[:10]


# ---- plumbing --------------------------------------------------------------------------------


def _stats(request: Request) -> DashboardStats:
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


async def _page(
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


async def not_found_page(request: Request) -> HTMLResponse:
    """The dashboard's 404 for a page address nothing serves (see
    :func:`dashboard_session.wants_page`): in the site's layout, signed in or not."""
    sess = await load_session(request)
    return await _error(request, sess, 404, "There is no page at this address.")


async def _error(request: Request, sess: Session | None, status: int, message: str) -> HTMLResponse:
    titles = {403: "Forbidden", 404: "Not found", 409: "Conflict", 413: "Too large", 422: "Invalid"}
    return await _page(
        request, sess, "error.html", http_status=status, title=titles.get(status, "Error"), message=message
    )


def _redirect(request: Request, target: str, message: str | None = None, kind: str = "ok") -> Response:
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    if message:
        set_flash(request, response, message, kind)
    return response


async def _post(request: Request) -> tuple[Session, dict[str, str]] | Response:
    """A signed-in POST with a valid CSRF token: (session, form), else the response to send."""
    sess = await load_session(request)
    if sess is None:
        return to_login(request)
    form = await read_form(request)
    if form is None:
        return await _error(request, sess, 413, "The form is too large.")
    if not tokens_match(sess.csrf, form.get("csrf")):
        return await _error(
            request, sess, 403, "This form is missing its security token or it has expired: reload the page."
        )
    return sess, form


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


def _storable(value: str) -> bool:
    """Whether a stored id or type could equal ``value``: PostgreSQL text holds no NUL character,
    and its driver answers a query carrying one with an error rather than no rows."""
    return "\x00" not in value


def _shown(value: str, limit: int = 60) -> str:
    """A value from the URL, quoted for a message."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


async def _config(request: Request, project_id: str) -> ProjectConfig:
    return await runtime(request).store.load_project_config(project_id)


def _destination_names(cfg: ProjectConfig) -> dict[str, str]:
    """Destination id → what to call it: its name, or an endpoint's URL."""
    names = {d.id: d.name for d in cfg.destinations.values()}
    for p in cfg.pipelines:
        for r in p.config.get("destinations", []):
            d = cfg.destinations.get(r["destination_id"])
            if p.endpoint and d is not None:
                url = d.config.get("settings", {}).get("url")
                names[d.id] = mask_url(str(url)) if url else d.name
    return names


def _endpoint_urls(cfg: ProjectConfig) -> dict[str, str]:
    """Destination id → the endpoint id it belongs to."""
    return {
        r["destination_id"]: p.id
        for p in cfg.pipelines
        if p.endpoint
        for r in p.config.get("destinations", [])
    }


# ---- static files and sign-in ----------------------------------------------------------------


@router.get("/static/{name}")
async def static(name: str, request: Request) -> Response:
    found = STATIC.get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    data, ctype, etag = found
    headers = {
        "ETag": f'"{etag}"',
        "Cache-Control": "public, max-age=86400",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=ctype, headers=headers)


@router.get("/login")
async def login_form(request: Request, next: str | None = None) -> Response:
    if await load_session(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return await _login_page(request, next=next)


async def _login_page(
    request: Request, *, next: str | None, error: str | None = None, status: int = 200
) -> Response:
    token = login_csrf(request)
    html = render(
        "login.html",
        csrf=token,
        signed_in=False,
        project="",
        section="login",
        path="/login",
        flash=read_flash(request),
        asset_version=ASSET_VERSION,
        now=clock.now(),
        title="Sign in",
        next=safe_next(next),
        error=error,
    )
    response = HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)
    remember_login_csrf(request, response, token)
    clear_flash(request, response)
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await read_form(request) or {}
    target = safe_next(form.get("next"))
    if not tokens_match(request.cookies.get("il_login"), form.get("csrf")):
        return await _login_page(
            request, next=target, error="The sign-in form expired. Please try again.", status=403
        )
    key = form.get("key", "").strip()
    if not key:
        return await _login_page(request, next=target, error="Enter an admin key (il_admin_…).", status=400)
    principal = await runtime(request).keys.lookup(key) if len(key) <= 200 else None
    if principal is None:
        return await _login_page(
            request, next=target, error="That key is not valid, or it has been revoked.", status=401
        )
    if principal.kind != "admin":
        return await _login_page(
            request,
            next=target,
            error="That is an ingest key: it can only send events. Sign in with an admin key (il_admin_…).",
            status=403,
        )
    response = RedirectResponse(target, status_code=303)
    start_session(request, response, key)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    response = RedirectResponse("/login", status_code=303)
    await end_session(request, response)
    set_flash(request, response, "You are signed out.")
    return response


# ---- overview --------------------------------------------------------------------------------


@router.get("/")
async def overview(request: Request, sess: SignedIn, range: str = "24h") -> Response:
    if range not in RANGES:
        range = "24h"
    stats = _stats(request)
    series = await stats.series(sess.project_id, range)
    # Each status counted up to the store's cap: one that reaches it shows as "100 000+".
    counts = await runtime(request).store.delivery_counts(
        sess.project_id, since_id=id_bound("dlv", series.start), zeros=True
    )
    return await _page(
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
    )


# ---- pipelines -------------------------------------------------------------------------------


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


@router.get("/pipelines")
async def pipelines(request: Request, sess: SignedIn) -> Response:
    rt = runtime(request)
    cfg = await _config(request, sess.project_id)
    secret_names = {s["name"] for s in await rt.store.list_secrets(sess.project_id)}
    cards = [pipeline_card(p, cfg, secret_names) for p in cfg.pipelines]
    sources = sorted(cfg.sources.values(), key=lambda s: s.name)
    return await _page(
        request,
        sess,
        "pipelines.html",
        section="pipelines",
        title="Pipelines",
        cards=[c for c in cards if not c.endpoint],
        endpoint_cards=[c for c in cards if c.endpoint],
        sources=sources,
        slack_connect=_slack_connect_available(request),
    )


@router.post("/connections/slack")
async def connect_slack(request: Request) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    sess, form = got
    if not _slack_connect_available(request):
        return await _error(request, sess, 404, "Slack connections are not available on this server.")
    oauth: Any = importlib.import_module("ingestlayer.api.slack_oauth")
    try:
        response: Response = await oauth.start(
            request, sess.principal, runtime(request), form.get("name", ""), bind_browser=True
        )
    except ApiError as exc:
        return _redirect(request, "/pipelines", f"Slack could not be connected: {exc.message}", "error")
    return response


# ---- webhooks: endpoints ---------------------------------------------------------------------


def _finite(text: str) -> float:
    """A number typed into a form; float() also reads "nan" and "inf", which no field takes and
    whose range errors ("less than or equal to 60") would not say what was wrong."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


@dataclass
class EndpointForm:
    url: str = ""
    events: str = ""
    auth: str = "hmac"
    secret: str = ""
    signing: str = "ingestlayer"
    format: str = "ingestlayer"
    timeout: str = "10"
    retry: str = ""
    description: str = ""
    enabled: bool = True

    @classmethod
    def from_endpoint(cls, ep: dict[str, Any]) -> EndpointForm:
        retry = ep.get("retry") or {}
        return cls(
            url=ep.get("url") or "",
            events="\n".join(ep.get("events") or []),
            auth=ep.get("auth") or "none",
            signing=ep.get("signing") or "ingestlayer",
            format=ep.get("format") or "ingestlayer",
            timeout=f"{ep.get('timeout') or 10:g}",
            retry=", ".join(f"{s:g}" for s in retry.get("schedule", [])),
            description=ep.get("description") or "",
            enabled=bool(ep.get("enabled", True)),
        )

    @classmethod
    def from_form(cls, form: dict[str, str]) -> EndpointForm:
        return cls(
            url=form.get("url", "").strip(),
            events=form.get("events", ""),
            auth=form.get("auth", "hmac"),
            secret=form.get("secret", ""),
            signing=form.get("signing", "ingestlayer"),
            format=form.get("format", "ingestlayer"),
            timeout=form.get("timeout", "10").strip(),
            retry=form.get("retry", "").strip(),
            description=form.get("description", "").strip(),
            enabled=form.get("enabled") in ("1", "on", "true"),
        )

    def event_list(self) -> list[str]:
        return [e.strip() for e in re.split(r"[,\s]+", self.events) if e.strip()]

    def values(self, errors: dict[str, str]) -> dict[str, Any]:
        """The API body for these fields; problems found here go into ``errors``."""
        out: dict[str, Any] = {
            "url": self.url,
            "events": self.event_list(),
            "auth": self.auth,
            "signing": self.signing,
            "format": self.format,
            "description": self.description or None,
            "enabled": self.enabled,
        }
        if not out["events"]:
            errors["events"] = "Add at least one event type, e.g. invoice.created or invoice.*"
        try:
            out["timeout"] = _finite(self.timeout or "10")
        except ValueError:
            errors["timeout"] = "A number of seconds, e.g. 10"
        if self.retry:
            try:
                out["retry"] = {"schedule": [_finite(s) for s in re.split(r"[,\s]+", self.retry) if s]}
            except ValueError:
                errors["retry"] = "Seconds before each attempt, separated by commas: 0, 60, 300, 1800"
        else:
            out["retry"] = None
        if self.secret:
            out["secret"] = self.secret
        return out


_FIELD_RE = re.compile(r"^(?:body\.)?([a-z_]+)")


def _field_error(errors: dict[str, str], field: str | None, message: str) -> None:
    m = _FIELD_RE.match(field or "")
    name = m.group(1) if m else "form"
    if name not in {
        "url",
        "events",
        "auth",
        "secret",
        "signing",
        "format",
        "timeout",
        "retry",
        "description",
    }:
        name = "retry" if "retry" in message else "form"
    # The API's message may quote what was sent; a URL in it is shown as everywhere else.
    message = mask_urls_in(message)
    errors.setdefault(name, message.split(": ", 1)[1] if ": " in message and name != "form" else message)


def _validation_errors(exc: ValidationError, errors: dict[str, str]) -> None:
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        _field_error(
            errors, loc[0] if loc else None, str(err.get("msg", "invalid")).removeprefix("Value error, ")
        )


async def _endpoints(request: Request, sess: Session) -> list[dict[str, Any]]:
    listed = await endpoints_api.list_endpoints(sess.principal, runtime(request))
    data: list[dict[str, Any]] = listed["data"]
    return data


async def _endpoint(request: Request, sess: Session, endpoint_id: str) -> dict[str, Any] | None:
    try:
        ep: dict[str, Any] = await endpoints_api.get_endpoint(endpoint_id, sess.principal, runtime(request))
    except ApiError:
        return None
    return ep


@router.get("/webhooks")
async def webhooks(request: Request) -> Response:
    return RedirectResponse("/webhooks/endpoints", status_code=303)


@router.get("/webhooks/endpoints")
async def endpoint_list(request: Request, sess: SignedIn) -> Response:
    return await _page(
        request,
        sess,
        "endpoints.html",
        section="webhooks",
        sub="endpoints",
        title="Endpoints",
        endpoints=await _endpoints(request, sess),
    )


@router.get("/webhooks/endpoints/new")
async def endpoint_new(request: Request, sess: SignedIn) -> Response:
    return await _page(
        request,
        sess,
        "endpoint_form.html",
        section="webhooks",
        sub="endpoints",
        title="Add endpoint",
        form=EndpointForm(),
        errors={},
        endpoint=None,
    )


@router.post("/webhooks/endpoints")
async def endpoint_create(request: Request) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    sess, raw = got
    form = EndpointForm.from_form(raw)
    errors: dict[str, str] = {}
    values = form.values(errors)
    created: dict[str, Any] | None = None
    if not errors:
        try:
            body = endpoints_api.EndpointIn(**values)
            created = await endpoints_api.create_endpoint(body, sess.principal, runtime(request))
        except ValidationError as exc:
            _validation_errors(exc, errors)
        except ApiError as exc:
            _field_error(errors, exc.field, exc.message)
    if created is None:
        form.secret = ""  # never echoed back
        return await _page(
            request,
            sess,
            "endpoint_form.html",
            http_status=422,
            section="webhooks",
            sub="endpoints",
            title="Add endpoint",
            form=form,
            errors=errors,
            endpoint=None,
        )
    return _after_endpoint_change(request, sess, created["id"], created.get("secret"), "Endpoint added.")


def _endpoint_path(endpoint_id: str) -> str:
    return "/webhooks/endpoints/" + quote(endpoint_id, safe="")


def _after_endpoint_change(
    request: Request, sess: Session, endpoint_id: str, new_secret: str | None, message: str
) -> Response:
    """POST-redirect-GET: the endpoint's page, showing a secret the change generated once.

    Answering the POST with the page itself would make a reload repeat the change (a second
    endpoint, another rotation). The secret crosses the redirect in an encrypted cookie scoped to
    the endpoint's path, never in the URL (which lands in history and logs).
    """
    target = _endpoint_path(endpoint_id)
    response = _redirect(request, target, message)
    if new_secret:
        stash_secret(request, response, sess, endpoint_id, new_secret, path=target)
    return response


async def _endpoint_page(
    request: Request,
    sess: Session,
    endpoint_id: str,
    *,
    new_secret: str | None = None,
    form: EndpointForm | None = None,
    errors: dict[str, str] | None = None,
    test_id: str | None = None,
    status: int = 200,
) -> Response:
    ep = await _endpoint(request, sess, endpoint_id)
    if ep is None:
        return await _error(request, sess, 404, f"There is no endpoint {endpoint_id!r} in this project.")
    rt = runtime(request)
    recent = (
        await rt.store.list_deliveries(sess.project_id, destination_id=ep["destination_id"], limit=10)
        if ep["destination_id"]
        else []
    )
    test = None
    if test_id:
        found = await rt.store.get_delivery(sess.project_id, test_id)
        if found is not None and found["destination_id"] == ep["destination_id"]:
            test = found
    return await _page(
        request,
        sess,
        "endpoint.html",
        http_status=status,
        section="webhooks",
        sub="endpoints",
        # The edit form's URL field holds the URL whole (to keep it when saving); the title, the
        # heading and every list show it masked.
        title=mask_url(ep["url"]) if ep["url"] else endpoint_id,
        endpoint=ep,
        secret_ref=f"ref:endpoint-{ep['id']}"
        if ep["auth"] != "none" or ep["signing"] == "standard"
        else None,
        new_secret=new_secret,
        form=form or EndpointForm.from_endpoint(ep),
        errors=errors or {},
        recent=recent,
        test=test,
    )


@router.get("/webhooks/endpoints/{endpoint_id}")
async def endpoint_detail(
    request: Request, sess: SignedIn, endpoint_id: str, test: str | None = None
) -> Response:
    path = _endpoint_path(endpoint_id)
    new_secret = read_secret(request, sess, endpoint_id)
    response = await _endpoint_page(request, sess, endpoint_id, test_id=test, new_secret=new_secret)
    # Shown once: whatever the cookie held, this page has used it up (a reload shows no secret).
    clear_secret(request, response, path=path)
    return response


@router.post("/webhooks/endpoints/{endpoint_id}")
async def endpoint_update(request: Request, endpoint_id: str) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    sess, raw = got
    current = await _endpoint(request, sess, endpoint_id)
    if current is None:
        return await _error(request, sess, 404, f"There is no endpoint {endpoint_id!r} in this project.")
    form = EndpointForm.from_form(raw)
    form.enabled = current["enabled"]  # enabling is its own button
    errors: dict[str, str] = {}
    values = form.values(errors)
    values.pop("enabled")
    if form.retry == EndpointForm.from_endpoint(current).retry:
        # The retry field as the page showed it: keep the policy whole. The field shows only a
        # schedule's delays, so resending it would drop a jitter or a {max_attempts, base, …}.
        values["retry"] = current.get("retry")
    if values["auth"] == "bearer" and current["auth"] != "bearer" and not form.secret:
        errors["secret"] = "Bearer auth sends your token: enter it here."
    new_secret: str | None = None
    if not errors:
        rt = runtime(request)
        try:
            updated = await endpoints_api.update_endpoint(
                endpoint_id, endpoints_api.EndpointPatch(**values), sess.principal, rt
            )
            # Signing switched on without a secret given: the API made one, shown once.
            new_secret = updated.get("secret")
        except ValidationError as exc:
            _validation_errors(exc, errors)
        except ApiError as exc:
            _field_error(errors, exc.field, exc.message)
    if errors:
        form.secret = ""
        return await _endpoint_page(request, sess, endpoint_id, form=form, errors=errors, status=422)
    return _after_endpoint_change(request, sess, endpoint_id, new_secret, "Endpoint saved.")


@router.post("/webhooks/endpoints/{endpoint_id}/enabled")
async def endpoint_enable(request: Request, endpoint_id: str) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    sess, form = got
    enabled = form.get("enabled") == "1"
    try:
        await endpoints_api.update_endpoint(
            endpoint_id, endpoints_api.EndpointPatch(enabled=enabled), sess.principal, runtime(request)
        )
    except ApiError as exc:
        return await _error(request, sess, exc.status, exc.message)
    return _redirect(
        request,
        f"/webhooks/endpoints/{endpoint_id}",
        "Endpoint enabled." if enabled else "Endpoint disabled.",
    )


@router.post("/webhooks/endpoints/{endpoint_id}/rotate")
async def endpoint_rotate(request: Request, endpoint_id: str) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    sess, _ = got
    try:
        rotated = await endpoints_api.rotate_secret(endpoint_id, sess.principal, runtime(request))
    except ApiError as exc:
        if exc.status == 404:
            return await _error(request, sess, 404, exc.message)
        return _redirect(request, f"/webhooks/endpoints/{endpoint_id}", exc.message, "error")
    return _after_endpoint_change(request, sess, endpoint_id, rotated["secret"], "Signing secret rotated.")


@router.post("/webhooks/endpoints/{endpoint_id}/delete")
async def endpoint_delete(request: Request, endpoint_id: str) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    sess, _ = got
    try:
        await endpoints_api.delete_endpoint(endpoint_id, sess.principal, runtime(request))
    except ApiError as exc:
        return await _error(request, sess, exc.status, exc.message)
    return _redirect(request, "/webhooks/endpoints", "Endpoint deleted. Its delivery logs stay.")


@router.post("/webhooks/endpoints/{endpoint_id}/test")
async def endpoint_test(request: Request, endpoint_id: str) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    sess, _ = got
    ep = await _endpoint(request, sess, endpoint_id)
    if ep is None or not ep["destination_id"]:
        return await _error(request, sess, 404, f"There is no endpoint {endpoint_id!r} in this project.")
    # The API's test send: stores a test event and waits briefly for the worker's first attempt.
    result = await logs_api.test_destination(ep["destination_id"], sess.principal, runtime(request))
    return RedirectResponse(
        f"/webhooks/endpoints/{endpoint_id}?test={result['id']}#test-result", status_code=303
    )


# ---- webhooks: logs and dead letters ---------------------------------------------------------


def _filters(**values: Any) -> str:
    return urlencode({k: v for k, v in values.items() if v not in (None, "")})


@router.get("/webhooks/logs")
async def delivery_logs(
    request: Request, sess: SignedIn, status: str = "", destination: str = "", before: str = ""
) -> Response:
    cfg = await _config(request, sess.project_id)
    names = _destination_names(cfg)
    stats = _stats(request)
    cursor = _attempt_cursor(before) if before else None
    error = _unknown_filter(names, destination, status)
    rows: list[Any] = []
    if error:
        status, destination = "", ""
    elif before and cursor is None:
        error = f"{_shown(before)} is not an attempt id: “older →” links carry one. Start from the newest."
    elif cursor is None or cursor <= _ATTEMPT_ID_MAX.get(stats.dialect, _INT64_MAX):
        rows = await stats.list_attempts(
            sess.project_id,
            status=[status] if status else None,
            destination_id=destination or None,
            before=cursor,
            limit=PAGE,
        )
    # else: no attempt has an id that large here (the database's integer is narrower): no rows.
    counts = await runtime(request).store.delivery_counts(sess.project_id, statuses=UNSETTLED, zeros=True)
    return await _page(
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
        older=_filters(status=status, destination=destination, before=rows[-1].id)
        if len(rows) == PAGE
        else None,
        first_page=not before,
        reset=_filters(status=status, destination=destination),
        error=error,
    )


def _unknown_filter(names: dict[str, str], destination: str, status: str = "") -> str | None:
    """Why a filter cannot be applied, or None. Ignored, it listed everything unfiltered, and the
    dead letters' "Replay all matching" then replayed every destination's."""
    if destination and destination not in names:
        return (
            f"There is no destination {_shown(destination)} in this project (it may have been "
            "deleted): choose one from the list."
        )
    if status and status not in STATUSES:
        return f"{_shown(status)} is not a delivery status: choose one from the list."
    return None


def _attempt_cursor(before: str) -> int | None:
    """The attempt id of the logs' ``before``, or None if it is not one (ASCII digits, 64-bit)."""
    if not _ATTEMPT_ID.fullmatch(before):
        return None
    n = int(before)
    return n if n <= _INT64_MAX else None


@router.get("/webhooks/dead")
async def dead_letters(request: Request, sess: SignedIn, destination: str = "", before: str = "") -> Response:
    rt = runtime(request)
    cfg = await _config(request, sess.project_id)
    names = _destination_names(cfg)
    error = _unknown_filter(names, destination)
    rows: list[dict[str, Any]] = []
    if error:
        destination = ""
    elif not _storable(before):
        error = "That is not a delivery id: “older →” links carry one. Start again from the newest."
    else:
        rows = await rt.store.list_deliveries(
            sess.project_id,
            status=["dead"],
            destination_id=destination or None,
            before=before or None,
            limit=PAGE,
        )
    counts = await rt.store.delivery_counts(sess.project_id, statuses=("dead",), zeros=True)
    return await _page(
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
        older=_filters(destination=destination, before=rows[-1]["id"]) if len(rows) == PAGE else None,
        first_page=not before,
        here=request.url.path + ("?" + request.url.query if request.url.query else ""),
        error=error,
    )


@router.get("/deliveries/{delivery_id}")
async def delivery_detail(request: Request, sess: SignedIn, delivery_id: str) -> Response:
    rt = runtime(request)
    d = await rt.store.get_delivery(sess.project_id, delivery_id) if _storable(delivery_id) else None
    if d is None:
        return await _error(request, sess, 404, f"There is no delivery {delivery_id!r} in this project.")
    cfg = await _config(request, sess.project_id)
    return await _page(
        request,
        sess,
        "delivery.html",
        section="webhooks",
        sub="logs",
        title=f"Delivery {delivery_id}",
        d=d,
        destination_name=_destination_names(cfg).get(d["destination_id"], d["destination_id"]),
        endpoint_id=_endpoint_urls(cfg).get(d["destination_id"]),
        body=pretty_json(d["body"]),
    )


@router.post("/deliveries/{delivery_id}/replay")
async def replay_one(request: Request, delivery_id: str) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    sess, form = got
    target = safe_next(form.get("next") or f"/deliveries/{delivery_id}")
    if not _storable(delivery_id):
        return await _error(request, sess, 404, f"There is no delivery {delivery_id!r} in this project.")
    try:
        await logs_api.replay_one(delivery_id, sess.principal, runtime(request))
    except ApiError as exc:
        if exc.status == 404:
            return await _error(request, sess, 404, f"There is no delivery {delivery_id!r} in this project.")
        return _redirect(request, target, exc.message, "error")
    return _redirect(request, target, f"Replaying {delivery_id}: a new attempt is on its way.")


@router.post("/deliveries/replay")
async def replay_matching(request: Request) -> Response:
    got = await _post(request)
    if isinstance(got, Response):
        return got
    sess, form = got
    target = safe_next(form.get("next") or "/webhooks/dead")
    status = form.get("status") or "dead"
    if status not in STATUSES or status == "delivering":
        return await _error(
            request, sess, 422, "Only pending, retrying, delivered or dead deliveries replay."
        )
    body = logs_api.BulkReplay(status=[cast(Any, status)], destination=form.get("destination") or None)
    try:
        result = await logs_api.replay_bulk(body, sess.principal, runtime(request))
    except ApiError as exc:
        return _redirect(request, target, exc.message, "error")
    n = int(result["count"])
    more = " (the most one request replays; run it again for the rest)" if n >= body.limit else ""
    return _redirect(request, target, f"Replaying {n} deliver{'y' if n == 1 else 'ies'}{more}.")


# ---- events ----------------------------------------------------------------------------------


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
        if _storable(wanted):
            if wanted.startswith("dlv_") and await rt.store.get_delivery(sess.project_id, wanted) is not None:
                return RedirectResponse(f"/deliveries/{wanted}", status_code=303)
            if await rt.store.get_event(sess.project_id, wanted) is not None:
                return RedirectResponse(f"/events/{wanted}", status_code=303)
        errors.append(f"No event or delivery {_shown(wanted)} in this project.")
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
                f"“{label}” {_shown(raw.strip())} is not a time: use ISO 8601 (2025-03-01T14:00) or"
                " epoch seconds, in UTC, within the years 0001 to 9999."
            )
            status = max(status, 422)
    t_since, t_until = times["From"], times["Until"]
    if not _storable(type) or not _storable(before):
        errors.append("This search holds a NUL character, which no event type or id contains.")
        status = max(status, 422)
    if t_since is not None and t_until is not None and t_since > t_until:
        errors.append("“From” is later than “Until”: no event can match. Swap them?")
    rows = (
        []
        if errors
        else await _stats(request).search_events(
            sess.project_id,
            type_=type.strip() or None,
            since=t_since,
            until=t_until,
            before=before or None,
            limit=PAGE,
        )
    )
    statuses = await _stats(request).delivery_statuses(sess.project_id, [r.id for r in rows])
    return await _page(
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
        older=_filters(type=type, since=since, until=until, before=rows[-1].id)
        if len(rows) == PAGE
        else None,
        first_page=not before,
        reset=_filters(type=type, since=since, until=until),
    )


@router.get("/events/{event_id}")
async def event_detail(request: Request, sess: SignedIn, event_id: str) -> Response:
    rt = runtime(request)
    ev = await rt.store.get_event(sess.project_id, event_id) if _storable(event_id) else None
    if ev is None:
        return await _error(request, sess, 404, f"There is no event {event_id!r} in this project.")
    dels = await _stats(request).event_deliveries(sess.project_id, event_id)
    cfg = await _config(request, sess.project_id)
    return await _page(
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
        names=_destination_names(cfg),
    )
