"""The dashboard's Webhooks → Endpoints pages: the list, the add and edit forms, and each
endpoint's page with its recent deliveries, secret rotation, enabling, deletion and test send."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from ingestlayer.api import endpoints as endpoints_api
from ingestlayer.api import logs as logs_api
from ingestlayer.api.dashboard_endpoint_form import EndpointForm, field_error, validation_errors
from ingestlayer.api.dashboard_pages import (
    error_page,
    not_found_page,
    page,
    redirect,
    signed_in_post,
    storable,
)
from ingestlayer.api.dashboard_session import (
    Session,
    SignedIn,
    clear_secret,
    read_secret,
    runtime,
    stash_secret,
)
from ingestlayer.api.dashboard_views import mask_url
from ingestlayer.api.errors import ApiError

router = APIRouter(include_in_schema=False)


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
    return await page(
        request,
        sess,
        "endpoints.html",
        section="webhooks",
        sub="endpoints",
        title="Endpoints",
        endpoints=await _endpoints(request, sess),
    )


async def _add_form(
    request: Request, sess: Session, form: EndpointForm, errors: dict[str, str], status: int = 200
) -> Response:
    """The Add endpoint form: empty, or as posted with what is wrong in it."""
    return await page(
        request,
        sess,
        "endpoint_form.html",
        http_status=status,
        section="webhooks",
        sub="endpoints",
        title="Add endpoint",
        form=form,
        errors=errors,
        endpoint=None,
    )


@router.get("/webhooks/endpoints/new")
async def endpoint_new(request: Request, sess: SignedIn) -> Response:
    return await _add_form(request, sess, EndpointForm(), {})


@router.post("/webhooks/endpoints")
async def endpoint_create(request: Request) -> Response:
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    sess, raw = got
    form = EndpointForm.from_form(raw)
    errors: dict[str, str] = {}
    values = form.values(errors)
    created: dict[str, Any] | None = None
    if errors:
        # The API's model too, for what the form's checks do not cover; the form's errors,
        # written for the form, stay where both found one.
        try:
            endpoints_api.EndpointIn(**values)
        except ValidationError as exc:
            validation_errors(exc, errors)
    else:
        try:
            body = endpoints_api.EndpointIn(**values)
            created = await endpoints_api.create_endpoint(body, sess.principal, runtime(request))
        except ValidationError as exc:
            validation_errors(exc, errors)
        except ApiError as exc:
            field_error(errors, exc.field, exc.message)
    if created is None:
        form.secret = ""  # never echoed back
        return await _add_form(request, sess, form, errors, 422)
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
    response = redirect(request, target, message)
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
        return await not_found_page(request, sess, "endpoint", endpoint_id)
    rt = runtime(request)
    recent = (
        await rt.store.list_deliveries(sess.project_id, destination_id=ep["destination_id"], limit=10)
        if ep["destination_id"]
        else []
    )
    test = None
    if test_id and storable(test_id):  # a NUL would be a 500 on PostgreSQL
        found = await rt.store.get_delivery(sess.project_id, test_id)
        if found is not None and found["destination_id"] == ep["destination_id"]:
            test = found
    return await page(
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
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    sess, raw = got
    current = await _endpoint(request, sess, endpoint_id)
    if current is None:
        return await not_found_page(request, sess, "endpoint", endpoint_id)
    form = EndpointForm.from_form(raw)
    form.enabled = current["enabled"]  # enabling is its own button
    errors: dict[str, str] = {}
    shown = EndpointForm.from_endpoint(current)
    values = form.values(errors, url_kept=form.url == shown.url, token_on_file=current["auth"] == "bearer")
    values.pop("enabled")
    if form.description == shown.description:
        # The description as the page showed it, a URL's credentials in it masked: keep it.
        values["description"] = current.get("description")
    if form.retry == shown.retry:
        # The retry field as the page showed it: keep the policy whole. The field shows only a
        # schedule's delays, so resending it would drop a jitter or a {max_attempts, base, …}.
        values["retry"] = current.get("retry")
    new_secret: str | None = None
    if errors:  # as on create: the API's model too, the form's own errors kept
        try:
            endpoints_api.EndpointPatch(**values)
        except ValidationError as exc:
            validation_errors(exc, errors)
    else:
        rt = runtime(request)
        try:
            updated = await endpoints_api.update_endpoint(
                endpoint_id, endpoints_api.EndpointPatch(**values), sess.principal, rt
            )
            # Signing switched on without a secret given: the API made one, shown once.
            new_secret = updated.get("secret")
        except ValidationError as exc:
            validation_errors(exc, errors)
        except ApiError as exc:
            field_error(errors, exc.field, exc.message)
    if errors:
        form.secret = ""
        return await _endpoint_page(request, sess, endpoint_id, form=form, errors=errors, status=422)
    return _after_endpoint_change(request, sess, endpoint_id, new_secret, "Endpoint saved.")


@router.post("/webhooks/endpoints/{endpoint_id}/enabled")
async def endpoint_enable(request: Request, endpoint_id: str) -> Response:
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    sess, form = got
    enabled = form.get("enabled") == "1"
    try:
        await endpoints_api.update_endpoint(
            endpoint_id, endpoints_api.EndpointPatch(enabled=enabled), sess.principal, runtime(request)
        )
    except ApiError as exc:
        return await error_page(request, sess, exc.status, exc.message)
    return redirect(
        request,
        f"/webhooks/endpoints/{endpoint_id}",
        "Endpoint enabled." if enabled else "Endpoint disabled.",
    )


@router.post("/webhooks/endpoints/{endpoint_id}/rotate")
async def endpoint_rotate(request: Request, endpoint_id: str) -> Response:
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    sess, _ = got
    try:
        rotated = await endpoints_api.rotate_secret(endpoint_id, sess.principal, runtime(request))
    except ApiError as exc:
        if exc.status == 404:
            return await error_page(request, sess, 404, exc.message)
        return redirect(request, f"/webhooks/endpoints/{endpoint_id}", exc.message, "error")
    return _after_endpoint_change(request, sess, endpoint_id, rotated["secret"], "Signing secret rotated.")


@router.post("/webhooks/endpoints/{endpoint_id}/delete")
async def endpoint_delete(request: Request, endpoint_id: str) -> Response:
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    sess, _ = got
    try:
        await endpoints_api.delete_endpoint(endpoint_id, sess.principal, runtime(request))
    except ApiError as exc:
        return await error_page(request, sess, exc.status, exc.message)
    return redirect(request, "/webhooks/endpoints", "Endpoint deleted. Its delivery logs stay.")


@router.post("/webhooks/endpoints/{endpoint_id}/test")
async def endpoint_test(request: Request, endpoint_id: str) -> Response:
    got = await signed_in_post(request)
    if isinstance(got, Response):
        return got
    sess, _ = got
    ep = await _endpoint(request, sess, endpoint_id)
    if ep is None or not ep["destination_id"]:
        return await not_found_page(request, sess, "endpoint", endpoint_id)
    # The API's test send: stores a test event and waits briefly for the worker's first attempt.
    result = await logs_api.test_destination(ep["destination_id"], sess.principal, runtime(request))
    return RedirectResponse(
        f"/webhooks/endpoints/{endpoint_id}?test={result['id']}#test-result", status_code=303
    )
