"""Webhook endpoints (``/v1/endpoints``), as in "Webhooks → Add Endpoint".

An endpoint is a pipeline with one ``webhook.out`` destination and a list of event types. With
``auth: hmac`` and no secret given, a signing secret is generated, stored encrypted, and shown
once in the create (or rotate) response.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ingestlayer.api.deps import Admin, RuntimeDep
from ingestlayer.api.errors import ApiError
from ingestlayer.api.manage import config_error
from ingestlayer.delivery.signing import generate_secret, validate_standard_secret
from ingestlayer.ids import new_id
from ingestlayer.pipeline.config import ConfigError, parse_destination_entry
from ingestlayer.pipeline.matching import is_valid_pattern
from ingestlayer.records import DestinationRow, PipelineRow
from ingestlayer.runtime import Runtime
from ingestlayer.store.store import NotFound
from ingestlayer.timefmt import iso, parse_iso

router = APIRouter(prefix="/v1/endpoints", tags=["endpoints"])


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    events: list[str] = Field(min_length=1, description="Event types or patterns, e.g. invoice.*")
    auth: Literal["none", "bearer", "hmac"] = "hmac"
    secret: str | None = Field(default=None, description="Write-only. Generated for hmac when omitted.")
    signing: Literal["ingestlayer", "standard"] = "ingestlayer"
    format: Literal["ingestlayer", "data"] = "ingestlayer"
    headers: dict[str, str] = Field(default_factory=dict)
    timeout: float = 10.0
    retry: dict[str, Any] | None = None
    description: str | None = None
    enabled: bool = True


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = None
    events: list[str] | None = Field(default=None, min_length=1)
    auth: Literal["none", "bearer", "hmac"] | None = None
    secret: str | None = None
    signing: Literal["ingestlayer", "standard"] | None = None
    format: Literal["ingestlayer", "data"] | None = None
    headers: dict[str, str] | None = None
    timeout: float | None = None
    retry: dict[str, Any] | None = None
    description: str | None = None
    enabled: bool | None = None


def _secret_name(endpoint_id: str) -> str:
    return f"endpoint-{endpoint_id}"


def _previous_name(endpoint_id: str) -> str:
    """The secret replaced by the last rotation, still signing until the rotation ends."""
    return f"endpoint-{endpoint_id}.previous"


# How long a rotated-out secret still signs by default: a day to update the receivers, as
# Standard Webhooks providers commonly allow; at most 30 days.
DEFAULT_OVERLAP_SECONDS = 86_400.0
MAX_OVERLAP_SECONDS = 30 * 86_400.0


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep_old_for: float = Field(
        default=DEFAULT_OVERLAP_SECONDS,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="Seconds the old secret still signs beside the new one (0: stop at once).",
    )


def _needs_secret(spec: dict[str, Any]) -> bool:
    return bool(spec["auth"] != "none" or spec["signing"] == "standard")


def _check_standard(secret: str, field: str | None, fix: str) -> None:
    """A Standard Webhooks secret must be base64: refuse it here, not at the first delivery."""
    try:
        validate_standard_secret(secret)
    except ValueError as exc:
        raise ApiError(422, f"signing: standard: {exc}{fix}", field=field) from None


def _endpoint_json(p: PipelineRow, d: DestinationRow | None) -> dict[str, Any]:
    settings = d.config.get("settings", {}) if d else {}
    return {
        "id": p.id,
        "url": settings.get("url"),
        "events": p.config["source"]["match"],
        "auth": settings.get("auth"),
        "signing": settings.get("signing"),
        "format": settings.get("format"),
        "headers": settings.get("headers", {}),
        "timeout": settings.get("timeout"),
        # While a rotation lasts, requests carry both signatures.
        "rotation_ends_at": _rotation_end(settings),
        "retry": d.config.get("retry") if d else None,
        "description": p.config.get("description"),
        "enabled": p.enabled,
        "destination_id": d.id if d else None,
        "created_at": iso(p.created_at),
        "updated_at": iso(p.updated_at),
    }


def _rotation_end(settings: dict[str, Any]) -> str | None:
    ends = settings.get("rotation_ends_at")
    return ends if isinstance(ends, str) and parse_iso(ends) > time.time() else None


async def _load(rt: Runtime, project_id: str, endpoint_id: str) -> tuple[PipelineRow, DestinationRow | None]:
    cfg = await rt.store.load_project_config(project_id)
    for p in cfg.pipelines:
        if p.endpoint and p.id == endpoint_id:
            routes = p.config.get("destinations", [])
            return p, cfg.destinations.get(routes[0]["destination_id"]) if routes else None
    raise ApiError(404, f"no endpoint {endpoint_id!r}")


async def _save(
    rt: Runtime, project_id: str, endpoint_id: str, dest_id: str, spec: dict[str, Any], new_secret: str | None
) -> None:
    for i, pattern in enumerate(spec["events"]):
        if not is_valid_pattern(pattern):
            raise ApiError(
                422, f"events[{i}]: {pattern!r} is not an event type or pattern", field=f"events[{i}]"
            )
    settings = {
        k: spec[k]
        for k in ("url", "auth", "signing", "format", "headers", "timeout")
        if spec.get(k) is not None
    }
    if _needs_secret(spec):
        settings["secret"] = f"ref:{_secret_name(endpoint_id)}"
        if spec.get("rotation_ends_at") and spec["auth"] != "bearer":
            settings["secret"] = [settings["secret"], f"ref:{_previous_name(endpoint_id)}"]
            settings["rotation_ends_at"] = spec["rotation_ends_at"]
    entry = {"webhook.out": settings, "name": f"endpoint:{endpoint_id}"}
    if spec.get("retry") is not None:
        entry["retry"] = spec["retry"]
    try:
        dest, _, _ = parse_destination_entry("", entry, None)
    except ConfigError as exc:
        raise config_error(exc) from None
    assert dest is not None
    if new_secret is not None:
        await rt.store.set_secret(project_id, _secret_name(endpoint_id), rt.box.encrypt(new_secret))
    pipeline_cfg = {
        "description": spec.get("description"),
        "source": {"match": spec["events"]},
        "steps": [],
        "destinations": [{"destination_id": dest_id, "destination": dest.name, "when": None}],
    }
    await rt.store.apply_config(
        project_id,
        [
            {
                "id": dest_id,
                "name": dest.name,
                "kind": dest.kind,
                "config": dest.stored_config(),
                "enabled": spec["enabled"],
            }
        ],
        [
            {
                "id": endpoint_id,
                "name": f"endpoint:{endpoint_id}",
                "config": pipeline_cfg,
                "endpoint": True,
                "enabled": spec["enabled"],
            }
        ],
    )


@router.post("", status_code=201, summary="Add an endpoint: POST these event types to a URL")
async def create_endpoint(body: EndpointIn, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    endpoint_id = new_id("ep")
    secret = body.secret
    generated = False
    if secret is None and _needs_secret(body.model_dump()):
        if body.auth == "bearer":
            raise ApiError(422, "auth: bearer needs the token as `secret`", field="secret")
        secret, generated = generate_secret(), True
    elif secret is not None and body.signing == "standard":
        _check_standard(secret, "secret", "")
    await _save(rt, principal.project_id, endpoint_id, new_id("dst"), body.model_dump(), secret)
    p, d = await _load(rt, principal.project_id, endpoint_id)
    out = _endpoint_json(p, d)
    if generated:
        out["secret"] = secret  # shown once; store it in your receiver's configuration
    return out


@router.get("", summary="List endpoints")
async def list_endpoints(principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    cfg = await rt.store.load_project_config(principal.project_id)
    out = []
    for p in cfg.pipelines:
        if p.endpoint:
            routes = p.config.get("destinations", [])
            out.append(
                _endpoint_json(p, cfg.destinations.get(routes[0]["destination_id"]) if routes else None)
            )
    return {"data": out}


@router.get("/{endpoint_id}")
async def get_endpoint(endpoint_id: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    return _endpoint_json(*await _load(rt, principal.project_id, endpoint_id))


@router.patch("/{endpoint_id}", summary="Update, disable (enabled: false) or re-enable an endpoint")
async def update_endpoint(
    endpoint_id: str, body: EndpointPatch, principal: Admin, rt: RuntimeDep
) -> dict[str, Any]:
    p, d = await _load(rt, principal.project_id, endpoint_id)
    current = _endpoint_json(p, d)
    changes = body.model_dump(exclude_unset=True)
    secret = changes.pop("secret", None)
    spec = {**current, **changes}
    generated = False
    if secret is not None:
        if spec["signing"] == "standard":
            _check_standard(secret, "secret", "")
        spec["rotation_ends_at"] = None  # a secret set by hand replaces the old one at once
    elif _needs_secret(spec):
        # Switching to auth or signing that needs a secret: the one already stored, if any (an
        # endpoint created with auth: none has none), must suit it; else one is made, as on create.
        # A bearer token is the receiver's own, never a signing secret reused.
        if spec["auth"] == "bearer" and current["auth"] != "bearer":
            raise ApiError(422, "auth: bearer needs the token as `secret`", field="secret")
        stored = await rt.store.get_secret(principal.project_id, _secret_name(endpoint_id))
        if stored is None:
            secret, generated = generate_secret(), True
        elif spec["signing"] == "standard":
            _check_standard(
                rt.box.decrypt(stored), None, "; send a new `secret` or rotate it (POST …/rotate-secret)"
            )
    await _save(rt, principal.project_id, endpoint_id, d.id if d else new_id("dst"), spec, secret)
    out = _endpoint_json(*await _load(rt, principal.project_id, endpoint_id))
    if generated:
        out["secret"] = secret  # shown once, as on create
    return out


@router.post(
    "/{endpoint_id}/rotate-secret",
    summary="Replace the signing secret; the new one is shown once, the old one still signs for a while",
)
async def rotate_secret(
    endpoint_id: str, principal: Admin, rt: RuntimeDep, body: RotateIn | None = None
) -> dict[str, Any]:
    p, d = await _load(rt, principal.project_id, endpoint_id)
    current = _endpoint_json(p, d)
    if current["auth"] == "bearer":
        raise ApiError(409, "bearer endpoints carry your token: set a new one with PATCH {secret}")
    keep_for = (body or RotateIn()).keep_old_for
    project_id = principal.project_id
    old = await rt.store.get_secret(project_id, _secret_name(endpoint_id))
    if keep_for > 0 and old is not None:
        # Both sign until then (several v1= entries), so receivers can move to the new one.
        await rt.store.set_secret(project_id, _previous_name(endpoint_id), old)
        current["rotation_ends_at"] = iso(time.time() + keep_for)
    else:
        current["rotation_ends_at"] = None
        with contextlib.suppress(NotFound):
            await rt.store.delete_secret(project_id, _previous_name(endpoint_id))
    secret = generate_secret()
    current["auth"] = (
        "hmac" if current["auth"] == "none" and current["signing"] != "standard" else current["auth"]
    )
    await _save(rt, project_id, endpoint_id, d.id if d else new_id("dst"), current, secret)
    return {"id": endpoint_id, "secret": secret, "rotation_ends_at": current["rotation_ends_at"]}


@router.delete("/{endpoint_id}", status_code=204)
async def delete_endpoint(endpoint_id: str, principal: Admin, rt: RuntimeDep) -> Response:
    p, d = await _load(rt, principal.project_id, endpoint_id)
    # Deliveries still pending for it end as dead ("destination was deleted"); their logs stay.
    await rt.store.apply_config(
        principal.project_id,
        [],
        [],
        delete_pipeline_ids=[p.id],
        delete_destination_ids=[d.id] if d else [],
    )
    # Its signing secrets go with it (there are none for auth: none).
    for name in (_secret_name(endpoint_id), _previous_name(endpoint_id)):
        with contextlib.suppress(NotFound):
            await rt.store.delete_secret(principal.project_id, name)
    return Response(status_code=204)
