"""The entity store's API: ``identify``, ``group``, and entities by kind and id.

``identify`` and ``group`` accept ingest keys too (they are sent from the same code as events);
reading and deleting entities needs an admin key. Companies are keyed by their domain
(``PUT /v1/entities/company/acme.com``), which is how ``enrich.person`` finds them: lower-case,
without surrounding spaces or a trailing dot, whichever way the id was written. Traits may nest
at most MAX_JSON_DEPTH levels, like event payloads.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ingestlayer.api.deps import Admin, AnyKey, RuntimeDep
from ingestlayer.api.errors import ApiError
from ingestlayer.api.ingest import storable_json
from ingestlayer.api.json_body import JsonBodyRoute
from ingestlayer.api.ratelimit import spend_ingest_allowance
from ingestlayer.delivery.step_services import CachedEntities
from ingestlayer.pipeline.steps.enrich_person import company_domain

router = APIRouter(prefix="/v1", tags=["entities"], route_class=JsonBodyRoute)

KIND_PATTERN = r"^[a-z][a-z0-9_\-]{0,63}$"
KIND_RULE = "must be 1 to 64 lower-case letters, digits, _ or -, starting with a letter"
MAX_ID_LENGTH = 255

Traits = dict[str, Any]


class IdentifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    traits: Traits = Field(
        default_factory=dict, description="Merged into the user's traits; null removes one."
    )


class GroupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    account_id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    traits: Traits = Field(default_factory=dict, description="Merged into the account's traits.")


class EntityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    traits: Traits


class BulkEntity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str
    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    traits: Traits
    merge: bool = True

    @field_validator("kind")
    @classmethod
    def _kind(cls, kind: str) -> str:
        # Said as the single-entity routes say it, not as pydantic's "should match pattern '^…$'".
        if not re.fullmatch(KIND_PATTERN, kind):
            raise ValueError(KIND_RULE)
        return kind


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entities: list[BulkEntity] = Field(min_length=1, max_length=1000)


def _check_kind(kind: str) -> None:
    if not re.fullmatch(KIND_PATTERN, kind):
        raise ApiError(422, f"kind {KIND_RULE}", field="kind")


def entity_key(kind: str, entity_id: str, field: str = "id") -> str:
    """The id an entity is stored under. A company's is its domain as ``enrich.person`` takes it
    from an email address: ``Initech.COM`` and ``initech.com.`` are the company ``initech.com``."""
    if not 0 < len(entity_id) <= MAX_ID_LENGTH or "\x00" in entity_id:
        raise ApiError(422, f"an entity id is 1 to {MAX_ID_LENGTH} characters, without NUL", field=field)
    if kind != "company":
        return entity_id
    domain = company_domain(entity_id)
    if not domain:
        raise ApiError(422, f"a company's id is its domain, not {entity_id!r}", field=field)
    return domain


async def _upsert(rt: RuntimeDep, project_id: str, items: list[tuple[str, str, Traits, bool]]) -> None:
    await rt.store.upsert_entities(project_id, items)
    _forget(rt, project_id, [(kind, entity_id) for kind, entity_id, _, _ in items])


def _forget(rt: RuntimeDep, project_id: str, keys: list[tuple[str, str]]) -> None:
    # The router in this process caches entity reads for a few seconds; without this an event
    # sent right after `identify` would still be enriched with what the user was before.
    services = rt.router.services
    if services is not None and isinstance(services.entities, CachedEntities):
        services.entities.forget(project_id, keys)


def _check_traits(traits: Traits, field: str, limit: int) -> None:
    raw = storable_json(traits, field, field)  # 422 when nested too deeply or holding a number over 64 bits
    if len(raw) > limit:
        # The per-event limit: an ingest key could otherwise store megabytes on one user.
        raise ApiError(413, f"{field} is {len(raw)} bytes; the limit is {limit // 1024} KiB", field=field)


@router.post("/identify", summary="Set a user's traits (ingest or admin key)")
async def identify(body: IdentifyIn, principal: AnyKey, rt: RuntimeDep, request: Request) -> dict[str, Any]:
    user_id = entity_key("user", body.user_id, "user_id")
    _check_traits(body.traits, "traits", rt.settings.max_event_bytes)
    # One write each from the project's ingest allowance: else an ingest key could write
    # traits as fast as the database takes them.
    await spend_ingest_allowance(request, principal.project_id)
    await _upsert(rt, principal.project_id, [("user", user_id, body.traits, True)])
    return {"ok": True}


@router.post("/group", summary="Put a user in an account and set the account's traits (ingest or admin key)")
async def group(body: GroupIn, principal: AnyKey, rt: RuntimeDep, request: Request) -> dict[str, Any]:
    user_id = entity_key("user", body.user_id, "user_id")
    account_id = entity_key("account", body.account_id, "account_id")
    _check_traits(body.traits, "traits", rt.settings.max_event_bytes)
    # One write each from the project's ingest allowance: else an ingest key could write
    # traits as fast as the database takes them.
    await spend_ingest_allowance(request, principal.project_id)
    await _upsert(
        rt,
        principal.project_id,
        [
            ("user", user_id, {"account_id": account_id}, True),
            ("account", account_id, body.traits, True),
        ],
    )
    return {"ok": True}


@router.put("/entities/{kind}/{entity_id}", summary="Replace an entity's traits")
async def put_entity(
    kind: str, entity_id: str, body: EntityIn, principal: Admin, rt: RuntimeDep
) -> dict[str, Any]:
    _check_kind(kind)
    entity_id = entity_key(kind, entity_id)
    _check_traits(body.traits, "traits", rt.settings.max_event_bytes)
    await _upsert(rt, principal.project_id, [(kind, entity_id, body.traits, False)])
    return {"kind": kind, "id": entity_id, "traits": {k: v for k, v in body.traits.items() if v is not None}}


@router.patch("/entities/{kind}/{entity_id}", summary="Merge traits into an entity")
async def patch_entity(
    kind: str, entity_id: str, body: EntityIn, principal: Admin, rt: RuntimeDep
) -> dict[str, Any]:
    _check_kind(kind)
    entity_id = entity_key(kind, entity_id)
    _check_traits(body.traits, "traits", rt.settings.max_event_bytes)
    await _upsert(rt, principal.project_id, [(kind, entity_id, body.traits, True)])
    return await get_entity(kind, entity_id, principal, rt)


@router.get("/entities/{kind}/{entity_id}")
async def get_entity(kind: str, entity_id: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    _check_kind(kind)
    key = entity_key(kind, entity_id)
    found = await rt.store.get_entities(principal.project_id, [(kind, key)])
    if (kind, key) not in found:
        raise ApiError(404, f"no {kind} {key!r}")
    return {"kind": kind, "id": key, "traits": found[(kind, key)]}


@router.delete("/entities/{kind}/{entity_id}", status_code=204)
async def delete_entity(kind: str, entity_id: str, principal: Admin, rt: RuntimeDep) -> Response:
    _check_kind(kind)
    key = entity_key(kind, entity_id)
    if not await rt.store.delete_entity(principal.project_id, kind, key):
        raise ApiError(404, f"no {kind} {key!r}")
    _forget(rt, principal.project_id, [(kind, key)])
    return Response(status_code=204)


@router.post("/entities/bulk", summary="Upsert up to 1000 entities in one transaction")
async def bulk_upsert(body: BulkIn, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    items = []
    for i, e in enumerate(body.entities):
        _check_traits(e.traits, f"entities[{i}].traits", rt.settings.max_event_bytes)
        items.append((e.kind, entity_key(e.kind, e.id, f"entities[{i}].id"), e.traits, e.merge))
    await _upsert(rt, principal.project_id, items)
    return {"upserted": len(body.entities)}
