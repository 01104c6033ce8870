"""``/healthz`` (the process answers), ``/readyz`` (the database answers), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingestlayer.api.deps import RuntimeDep
from ingestlayer.api.errors import ApiError
from ingestlayer.metrics import REGISTRY

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> dict[str, str]:
    try:
        await rt.store.ping()
    except Exception:
        raise ApiError(503, "the database is not reachable") from None
    return {"status": "ready"}


@router.get("/metrics")
async def prometheus() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
