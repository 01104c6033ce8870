"""``POST /v1/ingress/{source_id}``: signed inbound webhooks, and ``/v1/sources`` management.

The raw body is verified before it is parsed; a bad or stale signature is a 401 with the
reason. Verified events go through the same durable group commit as ``POST /v1/events``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi import APIRouter, Request, Response
from pydantic import ValidationError

from ingestlayer import clock
from ingestlayer.api.deps import Admin, RuntimeDep
from ingestlayer.api.errors import ApiError, not_stored_error, unreadable_json_error
from ingestlayer.api.ingest import may_hold_huge_int, storable_json
from ingestlayer.api.json_body import JsonBodyRoute
from ingestlayer.api.manage import apply_one, find_by_id_or_name, named_in_path
from ingestlayer.api.ratelimit import spend_ingest_allowance
from ingestlayer.delivery.dispatcher import EmptySecret
from ingestlayer.idempotency_keys import ingress_key
from ingestlayer.ids import new_id
from ingestlayer.pipeline.matching import is_valid_event_type
from ingestlayer.records import NewEvent, SourceRow
from ingestlayer.runtime import Runtime
from ingestlayer.sources.config import SourceConfig, dotted_type, locate
from ingestlayer.sources.verify import (
    HmacOptions,
    IngressAuthError,
    SourceSecretError,
    standard_headers,
    standard_key,
    verify_github,
    verify_hmac,
    verify_standard,
    verify_stripe,
)
from ingestlayer.stored_config import stored_configuration
from ingestlayer.timefmt import iso
from ingestlayer.validation_messages import configuration_problem

log = logging.getLogger("ingestlayer.ingress")

# As every management route: a JSON body sent as form data or plain text (`curl -d`) is read as
# JSON. The ingress route reads its body itself (its signature covers the bytes as sent).
router = APIRouter(tags=["sources"], route_class=JsonBodyRoute)


def ingress_path(source_id: str) -> str:
    return f"/v1/ingress/{source_id}"


def source_json(s: SourceRow, public_url: str | None = None) -> dict[str, Any]:
    path = ingress_path(s.id)
    return {
        "id": s.id,
        "name": s.name,
        "enabled": s.enabled,
        "ingress_path": path,
        # The URL to give the sender, when the server knows its public address.
        "ingress_url": public_url.rstrip("/") + path if public_url else None,
        "config": s.config,  # the secret is a reference only
        "updated_at": iso(s.updated_at),
    }


def _verify_one(cfg: SourceConfig, secret: str, headers: dict[str, str], body: bytes) -> None:
    if cfg.verify == "stripe":
        verify_stripe(secret, headers, body, tolerance=cfg.tolerance)
    elif cfg.verify == "github":
        verify_github(secret, headers, body)
    elif cfg.verify == "standard-webhooks":
        verify_standard(secret, headers, body, tolerance=cfg.tolerance)
    else:
        options = HmacOptions(
            header=cfg.header or "X-Signature",
            encoding=cfg.encoding,
            prefix=cfg.prefix,
            timestamp_header=cfg.timestamp_header,
        )
        verify_hmac(secret, headers, body, options, tolerance=cfg.tolerance)


def verify_request(cfg: SourceConfig, secrets: list[str], headers: dict[str, str], body: bytes) -> None:
    """Authentic when any of the source's secrets verifies (the current one, and the previous one
    while the operator rotates). The current secret's reason is the one reported."""
    if cfg.verify == "none":
        return
    assert secrets
    failure: IngressAuthError | None = None
    for secret in secrets:
        try:
            _verify_one(cfg, secret, headers, body)
            return
        except IngressAuthError as exc:
            failure = failure or exc
    assert failure is not None
    raise failure


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it exceeds ``limit``: an unauthenticated sender
    must not make us buffer whatever it streams before the signature is even looked at."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the webhook request body exceeds {limit // 1024} KiB")


FORM = "application/x-www-form-urlencoded"


def json_text(body: bytes, content_type: str) -> bytes:
    """The JSON in the body. GitHub hooks set to ``application/x-www-form-urlencoded`` send it as
    the form's ``payload`` field (and sign the form body, already verified). A body labelled a
    form that is a JSON object is read as one: ``curl -d '{...}'`` labels JSON that way, and no
    form carrying a ``payload`` field starts with ``{``."""
    if content_type.split(";", maxsplit=1)[0].strip().lower() != FORM or body.lstrip()[:1] == b"{":
        return body
    try:
        fields = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, max_num_fields=100
        )
    except (UnicodeDecodeError, ValueError):
        fields = []
    payloads = [value for name, value in fields if name == "payload"]
    if len(payloads) != 1:
        raise ApiError(
            400,
            "a form-encoded webhook body must carry its JSON in one `payload` field "
            "(or send JSON, with Content-Type: application/json)",
            code="invalid_json",
        )
    return payloads[0].encode()


def parse_document(raw: bytes) -> dict[str, Any]:
    """The webhook body as a JSON object, integers over 64 bits kept whole so that storing refuses
    them by name (orjson alone would round them to floats: the payload would not be as sent)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise unreadable_json_error(exc, "the webhook body", raw) from None
    if may_hold_huge_int(raw):
        # Deeper than the json module reads is deeper than we store: storing refuses it.
        with contextlib.suppress(RecursionError):
            doc = json.loads(raw)
    if not isinstance(doc, dict):
        raise ApiError(422, "the webhook body must be a JSON object")
    return doc


async def resolve_secrets(rt: Runtime, source: SourceRow, cfg: SourceConfig) -> list[str]:
    """The secrets to verify with: the current one, which must resolve (else a 503: the
    operator's misconfiguration, not the sender's, said without naming the secret), and the
    previous one where it resolves. A previous secret mistyped during a rotation is logged and
    left out: it refused every request, those signed with the current secret too."""
    refs = cfg.secret_refs()
    secrets: list[str] = []
    for i, ref in enumerate(refs):
        try:
            try:
                secret = await rt.dispatcher.resolver(source.project_id, ref)
            except EmptySecret:
                secret = ""
            if not secret.strip():
                # A signature by an empty key is one anyone can make: an env: variable set but
                # left empty (docker-compose's ${VAR} when VAR is undefined) let forged webhooks in.
                raise SourceSecretError("it is empty, and a signature by an empty key is one anyone can make")
            if cfg.verify == "standard-webhooks":
                standard_key(secret)
        except (LookupError, SourceSecretError) as exc:
            if i == 0:
                message = (
                    f"this source's secret is unusable: {exc}"
                    if isinstance(exc, SourceSecretError)
                    else "this source's secret is not configured on the server"
                )
                raise ApiError(503, message, headers={"Retry-After": "60"}) from None
            if (source.id, ref) not in _WARNED_PREVIOUS:
                _WARNED_PREVIOUS.add((source.id, ref))
                log.warning(
                    "source %s: previous_secret %s cannot be used (%s); requests are verified with "
                    "its current secret alone",
                    source.name,
                    ref,
                    exc,
                )
            continue
        secrets.append(secret)
    return secrets


# Sources whose previous_secret could not be used, already logged (once per process each).
_WARNED_PREVIOUS: set[tuple[str, str]] = set()


def stored_source_config(source: SourceRow) -> SourceConfig:
    """The source's configuration as stored, or a 503 saying why it cannot be used: the sender
    retries (a 5xx) until the source is applied again. A row edited by hand, or written by
    another version, may be JSON this version refuses: that was a bare 500, and the log's
    traceback quoted the refused input (a secret written inline), at any stranger's request."""
    problem = source.unreadable
    if problem is None:
        try:
            with stored_configuration():  # checked when it was applied, maybe by an earlier version
                return SourceConfig.model_validate(source.config)
        except ValidationError as exc:
            problem = f"its stored configuration cannot be used: {configuration_problem(exc)}"
    raise ApiError(503, f"source {source.name!r}: {problem}", headers={"Retry-After": "60"})


@router.post("/v1/ingress/{source_id}", status_code=202, summary="Receive a signed webhook from a source")
async def ingress(source_id: str, request: Request, rt: RuntimeDep) -> Response:
    source = await rt.store.get_source(source_id)
    if source is None or not source.enabled:
        raise ApiError(404, f"no source {source_id!r}")
    cfg = stored_source_config(source)
    body = await read_body(request, rt.settings.max_request_bytes)
    headers = dict(request.headers)
    if cfg.verify == "standard-webhooks":
        headers = standard_headers(headers)  # svix-* names too: verified and keyed the same way
    secrets = await resolve_secrets(rt, source, cfg)
    try:
        verify_request(cfg, secrets, headers, body)
    except IngressAuthError as exc:
        raise ApiError(401, f"signature verification failed: {exc}", code="invalid_signature") from None
    doc = parse_document(json_text(body, headers.get("content-type", "")))
    payload_json = storable_json(doc, "the webhook body", None)
    if len(payload_json) > rt.settings.max_event_bytes:
        raise ApiError(413, f"the webhook body exceeds {rt.settings.max_event_bytes // 1024} KiB per event")
    raw_type = locate(cfg.type_locator(), headers, doc)
    if not isinstance(raw_type, str) or not raw_type:
        raise ApiError(422, f"no event type at {cfg.type_locator()}", field=cfg.type_locator())
    etype = cfg.type_prefix + dotted_type(raw_type)
    if not is_valid_event_type(etype):
        raise ApiError(422, f"{etype[:80]!r} is not a valid event type", field=cfg.type_locator())
    # After the signature: unsigned traffic must not spend the project's allowance.
    await spend_ingest_allowance(request, source.project_id)
    key_loc = cfg.key_locator()
    key = ingress_key(source.name, locate(key_loc, headers, doc)) if key_loc else None
    now = clock.now()
    event = NewEvent(
        id=new_id("evt"),
        project_id=source.project_id,
        type=etype,
        payload_json=str(payload_json, "utf-8"),
        idempotency_key=key,
        source=source.name,
        occurred_at=now,
        received_at=now,
    )
    try:
        (result,) = await rt.committer.submit([event])
    except Exception as exc:
        raise not_stored_error(exc, "the sender should send it again") from None
    return Response(
        orjson.dumps({"id": result.id, "duplicate": result.duplicate}),
        status_code=200 if result.duplicate else 202,
        media_type="application/json",
    )


@router.get("/v1/sources", summary="List sources and their ingress URLs")
async def list_sources(principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    public = rt.settings.public_url
    return {"data": [source_json(s, public) for s in sorted(cfg.sources.values(), key=lambda s: s.name)]}


async def _find(rt: Runtime, project_id: str, key: str) -> SourceRow:
    cfg = await rt.store.load_project_config(project_id)
    found: SourceRow = find_by_id_or_name(cfg.sources.values(), key, "source")
    return found


@router.get("/v1/sources/{source}")
async def get_source(source: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    return source_json(await _find(rt, principal.project_id, source), rt.settings.public_url)


@router.post(
    "/v1/sources",
    status_code=201,
    summary="Create (201) or update (200) a source (the YAML shape, as JSON)",
    responses={200: {"description": "An existing source of that name, updated"}},
)
async def put_source(
    body: dict[str, Any], principal: Admin, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    name = await apply_one(rt, principal.project_id, "source", body, response)
    return source_json(await _find(rt, principal.project_id, name), rt.settings.public_url)


@router.put(
    "/v1/sources/{source}",
    status_code=201,
    summary="Create (201) or replace (200) a source by its name or id (the YAML shape, as JSON)",
    responses={200: {"description": "An existing source, replaced"}},
)
async def replace_source(
    source: str, body: dict[str, Any], principal: Admin, rt: RuntimeDep, response: Response
) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    return await put_source(named_in_path(body, source, cfg.sources.values()), principal, rt, response)


@router.delete("/v1/sources/{source}", status_code=204)
async def delete_source(source: str, principal: Admin, rt: RuntimeDep) -> Response:
    found = await _find(rt, principal.project_id, source)
    await rt.store.apply_config(principal.project_id, [], [], delete_source_ids=[found.id])
    return Response(status_code=204)
