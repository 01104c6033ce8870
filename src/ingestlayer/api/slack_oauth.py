"""Connect a Slack workspace over OAuth v2: the authorize redirect and the callback.

- ``GET /v1/connections/slack/authorize?name=slack-main`` (admin key): a 302 to Slack's consent
  page (or, with ``Accept: application/json``, ``{"authorize_url", …}`` for a dashboard to open).
- ``GET /oauth/slack/callback?code=…&state=…``: where Slack sends the browser back. No API key (a
  browser coming back from Slack has none): the sealed, expiring, single-use ``state`` names the
  project and the connection. The bot token is stored encrypted as the project's secret ``name``;
  the page says which workspace was connected and never shows the token.

Failures (Slack not configured, a bad, expired or reused state, Slack refusing the code) answer 400
with a page saying what to do (JSON with ``Accept: application/json``); Slack unreachable, 502. A
``name`` that is one of an endpoint's managed secrets (``endpoint-<id>…``) is refused, as ``PUT
/v1/secrets/{name}`` refuses it: a 409 naming ``name`` at the start, and a 409 page at the callback
before Slack's code is spent.
See :mod:`ingestlayer.destinations.slack.oauth` for the settings.
"""

from __future__ import annotations

import hmac
import html
import logging
import re
import secrets
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from ingestlayer.api.auth import Principal
from ingestlayer.api.deps import Admin, RuntimeDep
from ingestlayer.api.errors import ApiError, error_body
from ingestlayer.destinations.slack.oauth import (
    STATE_CACHE_PREFIX,
    STATE_TTL_SECONDS,
    OAuthState,
    SlackApp,
    SlackOAuthError,
    browser_digest,
    exchange_code,
    open_state,
    seal_state,
)
from ingestlayer.runtime import Runtime
from ingestlayer.secret_names import secret_endpoint
from ingestlayer.store.store import Store
from ingestlayer.timefmt import iso

log = logging.getLogger("ingestlayer.slack")

router = APIRouter(tags=["connections"])

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
PENDING, USED = "pending", "used"
# No caching of these pages, and no Referer carrying the code and state to other sites.
PAGE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
# The callback's page, as the dashboard's: no script, no framing (its one style is inline).
HTML_HEADERS = {
    **PAGE_HEADERS,
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}
# The cookie that ties a connection started in the dashboard to that browser: otherwise a
# project's admin could hand the Slack link to another workspace's admin and get its bot token.
# SameSite=Lax: sent on the top-level navigation back from Slack, not on other sites' requests.
BROWSER_COOKIE = "il_slack_oauth"
CALLBACK_PATH = "/oauth/slack/callback"


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _page(title: str, body_html: str, status: int) -> HTMLResponse:
    doc = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)} · ingestlayer</title>"
        "<style>body{font:16px/1.5 system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}"
        "code,pre{background:#f4f4f5;padding:.1rem .3rem;border-radius:4px}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body_html}</body></html>"
    )
    return HTMLResponse(doc, status_code=status, headers=HTML_HEADERS)


def _failure(request: Request, exc: SlackOAuthError) -> Response:
    if _wants_json(request):
        return Response(
            error_body(exc.code, exc.message),
            status_code=exc.status,
            media_type="application/json",
            headers=PAGE_HEADERS,
        )
    return _page(
        "Slack connection failed",
        f"<p>{html.escape(exc.message)}</p>"
        "<p>Nothing was stored. Start again from ingestlayer "
        "(<code>GET /v1/connections/slack/authorize?name=…</code>).</p>",
        exc.status,
    )


async def _endpoint_owning(store: Store, project_id: str, name: str) -> str | None:
    """The endpoint whose managed secret ``name`` is (its signing secret or bearer token), if
    any: PUT /v1/secrets/{name} refuses such a name, and so does a connection, whose token
    would otherwise replace the endpoint's secret."""
    return secret_endpoint(name, await store.load_project_config(project_id))


def _taken_message(name: str, owner: str) -> str:
    return (
        f"name: secret {name!r} belongs to endpoint {owner} (it signs or authenticates the "
        "endpoint's requests): choose another name for the Slack connection"
    )


async def _claim(store: Store, state: OAuthState) -> None:
    """Mark the state used; raises when it was used already, expired, or never issued here.
    One statement decides, so two callbacks with the same state (a browser sending it twice,
    to two API processes behind a load balancer) connect the workspace once."""
    key = STATE_CACHE_PREFIX + state.nonce
    if not await store.cache_swap(state.project_id, key, PENDING, USED, ttl=STATE_TTL_SECONDS):
        raise SlackOAuthError(
            "this authorization link was used already: start the connection again",
            code="used_state",
        )


@router.get(
    "/v1/connections/slack/authorize",
    summary="Start connecting a Slack workspace (redirects to Slack's consent page)",
    status_code=302,
    responses={
        302: {"description": "Redirect to Slack's OAuth v2 authorize page"},
        200: {"description": "With `Accept: application/json`: `{authorize_url, name, expires_at}`"},
        400: {"description": "Slack is not configured on this server"},
        409: {"description": "`name` is one of an endpoint's own secrets (`endpoint-<id>…`)"},
    },
)
async def authorize(
    request: Request,
    principal: Admin,
    rt: RuntimeDep,
    name: Annotated[
        str,
        Query(
            description="The secret the bot token is stored as; pipelines use `connection: ref:NAME`.",
            examples=["slack-main"],
        ),
    ],
) -> Response:
    return await start(request, principal, rt, name, bind_browser=False)


async def start(
    request: Request, principal: Principal, rt: Runtime, name: str, *, bind_browser: bool
) -> Response:
    """Start a connection. ``bind_browser`` (the dashboard): only the browser that asked may
    finish it, through a cookie; links handed out to API clients cannot be bound to a browser."""
    if not NAME_RE.fullmatch(name):
        raise ApiError(
            422, "name: secret names use letters, digits, '-', '_' and '.' (at most 200)", field="name"
        )
    owner = await _endpoint_owning(rt.store, principal.project_id, name)
    if owner is not None:
        raise ApiError(409, _taken_message(name, owner), field="name")
    try:
        app = SlackApp.from_env(rt.settings.public_url)
    except SlackOAuthError as exc:
        raise ApiError(exc.status, exc.message, code=exc.code) from None
    browser_secret = secrets.token_urlsafe(24) if bind_browser else None
    sealed, state = seal_state(
        rt.box, principal.project_id, name, app.redirect_uri, browser_secret=browser_secret
    )
    await rt.store.cache_put(
        principal.project_id, STATE_CACHE_PREFIX + state.nonce, PENDING, STATE_TTL_SECONDS
    )
    url = app.authorize_url(sealed)
    if _wants_json(request):
        return JSONResponse(
            {"authorize_url": url, "name": name, "expires_at": iso(state.expires_at)}, headers=PAGE_HEADERS
        )
    response = RedirectResponse(url, status_code=302, headers=PAGE_HEADERS)
    if browser_secret is not None:
        response.set_cookie(
            BROWSER_COOKIE,
            browser_secret,
            max_age=STATE_TTL_SECONDS,
            path=CALLBACK_PATH,
            secure=app.redirect_uri.startswith("https:"),
            httponly=True,
            samesite="lax",
        )
    return response


def _check_browser(request: Request, state: OAuthState) -> None:
    if state.browser is None:
        return
    cookie = request.cookies.get(BROWSER_COOKIE)
    if cookie is None or not hmac.compare_digest(browser_digest(cookie), state.browser):
        raise SlackOAuthError(
            "this connection was started in another browser: only the browser that clicked "
            "Connect Slack in ingestlayer can finish it",
            code="other_browser",
        )


@router.get(
    CALLBACK_PATH,
    summary="Slack's OAuth redirect target (no API key: the state names the project)",
    response_class=HTMLResponse,
    responses={
        400: {"description": "Bad, expired or reused state, or Slack refused"},
        409: {"description": "The state's name is one of an endpoint's own secrets: nothing stored"},
        502: {"description": "Slack could not be reached"},
    },
)
async def callback(
    request: Request,
    rt: RuntimeDep,
    code: str | None = None,
    state: str | None = None,
    error: str | None = None,
) -> Response:
    response = await _finish(request, rt, code, state, error)
    if BROWSER_COOKIE in request.cookies:  # done with, whatever the outcome
        response.delete_cookie(BROWSER_COOKIE, path=CALLBACK_PATH)
    return response


async def _finish(
    request: Request, rt: Runtime, code: str | None, state: str | None, error: str | None
) -> Response:
    try:
        if not state:
            raise SlackOAuthError(
                "the request has no state parameter: start the connection from ingestlayer",
                code="invalid_state",
            )
        opened = open_state(rt.box, state)
        # Before the claim: a callback from another browser must not use up the real one's state.
        _check_browser(request, opened)
        await _claim(rt.store, opened)
        if error:
            raise SlackOAuthError(
                f"Slack did not authorize the app ({error[:100]}): nothing was connected",
                code="slack_denied",
            )
        if not code:
            raise SlackOAuthError("the request has no code parameter", code="missing_code")
        # Checked at the start too; again here, before Slack's code is spent, for a state sealed
        # before that check (or by an older version).
        owner = await _endpoint_owning(rt.store, opened.project_id, opened.name)
        if owner is not None:
            raise SlackOAuthError(_taken_message(opened.name, owner), status=409, code="conflict")
        app = SlackApp.from_env(rt.settings.public_url)
        installed = await exchange_code(app, code, opened.redirect_uri)
    except SlackOAuthError as exc:
        log.info("slack oauth callback failed: %s", exc.message)
        return _failure(request, exc)
    replaced = await rt.store.set_secret(
        opened.project_id, opened.name, rt.box.encrypt(installed.access_token)
    )
    # The next delivery must use the new token, not one cached from before a reconnect.
    rt.dispatcher.resolver.forget(opened.project_id)
    log.info(
        "slack connected: project=%s secret=%s team=%s replaced=%s",
        opened.project_id,
        opened.name,
        installed.team_id,
        replaced,
    )
    if _wants_json(request):
        return JSONResponse(
            {
                "connected": True,
                "team": {"id": installed.team_id, "name": installed.team_name},
                "secret": opened.name,
                "replaced": replaced,
                "scope": installed.scope,
            },
            headers=PAGE_HEADERS,
        )
    name = html.escape(opened.name)
    return _page(
        f"Slack connected: {installed.workspace}",
        f"<p>The bot token is stored encrypted as the secret <code>{name}</code>"
        f"{' (replacing the previous one)' if replaced else ''}. Use it in a pipeline:</p>"
        f'<pre>slack: {{ channel: "#alerts", connection: ref:{name} }}</pre>'
        "<p>Public channels work straight away; invite the app to private ones. You can close this page.</p>",
        200,
    )
