"""The dashboard's sign-in page (with an admin key) and sign-out."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ingestlayer import clock
from ingestlayer.api.dashboard_pages import SECURITY_HEADERS, signed_in_post
from ingestlayer.api.dashboard_session import (
    clear_flash,
    end_session,
    load_session,
    login_csrf,
    read_flash,
    read_form,
    remember_login_csrf,
    runtime,
    safe_next,
    set_flash,
    start_session,
    tokens_match,
)
from ingestlayer.api.dashboard_static import ASSET_VERSION
from ingestlayer.api.dashboard_views import render

router = APIRouter(include_in_schema=False)


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
    # Only what could be a key is looked up, as the API does: anything else is no key at all.
    could_be = len(key) <= 200 and key.startswith(("il_ingest_", "il_admin_"))
    principal = await runtime(request).keys.lookup(key) if could_be else None
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
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    response = RedirectResponse("/login", status_code=303)
    await end_session(request, response)
    set_flash(request, response, "You are signed out.")
    return response
