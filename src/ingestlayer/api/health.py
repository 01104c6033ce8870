"""``/healthz`` (the process answers), ``/readyz`` (the database answers), ``/metrics``."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingestlayer.api.deps import RuntimeDep
from ingestlayer.api.errors import ApiError
from ingestlayer.metrics import REGISTRY

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> dict[str, str]:
    try:
        # A probe must answer in time whatever the database does (a frozen server holds a
        # query until the statement timeout).
        await asyncio.wait_for(rt.store.ping(), READY_TIMEOUT_SECONDS)
    except Exception:
        raise ApiError(503, "the database is not reachable") from None
    return {"status": "ready"}


@router.get("/metrics")
async def prometheus() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
