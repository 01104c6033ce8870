"""The entity store's API: ``identify``, ``group``, and entities by kind and id.

``identify`` and ``group`` accept ingest keys too (they are sent from the same code as events);
reading and deleting entities needs an admin key. Companies are keyed by their domain
(``PUT /v1/entities/company/acme.com``), which is how ``enrich.person`` finds them.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from ingestlayer.api.deps import Admin, AnyKey, RuntimeDep
from ingestlayer.api.errors import ApiError

router = APIRouter(prefix="/v1", tags=["entities"])

KIND_PATTERN = r"^[a-z][a-z0-9_\-]{0,63}$"
Traits = dict[str, Any]


class IdentifyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=255)
    traits: Traits = Field(
        default_factory=dict, description="Merged into the user's traits; null removes one."
    )


class GroupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str = Field(min_length=1, max_length=255)
    account_id: str = Field(min_length=1, max_length=255)
    traits: Traits = Field(default_factory=dict, description="Merged into the account's traits.")


class EntityIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    traits: Traits


class BulkEntity(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: str = Field(pattern=KIND_PATTERN)
    id: str = Field(min_length=1, max_length=255)
    traits: Traits
    merge: bool = True


class BulkIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entities: list[BulkEntity] = Field(min_length=1, max_length=1000)


def _check_kind(kind: str) -> None:
    if not re.match(KIND_PATTERN, kind):
        raise ApiError(422, "kind must be lower-case letters, digits, _ or -", field="kind")


@router.post("/identify", summary="Set a user's traits (ingest or admin key)")
async def identify(body: IdentifyIn, principal: AnyKey, rt: RuntimeDep) -> dict[str, Any]:
    await rt.store.upsert_entities(principal.project_id, [("user", body.user_id, body.traits, True)])
    return {"ok": True}


@router.post("/group", summary="Put a user in an account and set the account's traits (ingest or admin key)")
async def group(body: GroupIn, principal: AnyKey, rt: RuntimeDep) -> dict[str, Any]:
    await rt.store.upsert_entities(
        principal.project_id,
        [
            ("user", body.user_id, {"account_id": body.account_id}, True),
            ("account", body.account_id, body.traits, True),
        ],
    )
    return {"ok": True}


@router.put("/entities/{kind}/{entity_id}", summary="Replace an entity's traits")
async def put_entity(
    kind: str, entity_id: str, body: EntityIn, principal: Admin, rt: RuntimeDep
) -> dict[str, Any]:
    _check_kind(kind)
    await rt.store.upsert_entities(principal.project_id, [(kind, entity_id, body.traits, False)])
    return {"kind": kind, "id": entity_id, "traits": {k: v for k, v in body.traits.items() if v is not None}}


@router.patch("/entities/{kind}/{entity_id}", summary="Merge traits into an entity")
async def patch_entity(
    kind: str, entity_id: str, body: EntityIn, principal: Admin, rt: RuntimeDep
) -> dict[str, Any]:
    _check_kind(kind)
    await rt.store.upsert_entities(principal.project_id, [(kind, entity_id, body.traits, True)])
    return await get_entity(kind, entity_id, principal, rt)


@router.get("/entities/{kind}/{entity_id}")
async def get_entity(kind: str, entity_id: str, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    found = (await rt.store.get_entities(principal.project_id, [(kind, entity_id)])).get((kind, entity_id))
    if found is None:
        raise ApiError(404, f"no {kind} {entity_id!r}")
    return {"kind": kind, "id": entity_id, "traits": found}


@router.delete("/entities/{kind}/{entity_id}", status_code=204)
async def delete_entity(kind: str, entity_id: str, principal: Admin, rt: RuntimeDep) -> Response:
    if not await rt.store.delete_entity(principal.project_id, kind, entity_id):
        raise ApiError(404, f"no {kind} {entity_id!r}")
    return Response(status_code=204)


@router.post("/entities/bulk", summary="Upsert up to 1000 entities in one transaction")
async def bulk_upsert(body: BulkIn, principal: Admin, rt: RuntimeDep) -> dict[str, Any]:
    await rt.store.upsert_entities(
        principal.project_id, [(e.kind, e.id, e.traits, e.merge) for e in body.entities]
    )
    return {"upserted": len(body.entities)}
