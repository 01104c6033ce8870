"""``/healthz`` (the process answers, its loops go round, and it needs no restart), ``/readyz``
(the database answers and can store), ``/metrics``."""

from __future__ import annotations

import asyncio
import hmac

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ingestlayer.api.deps import RuntimeDep
from ingestlayer.api.errors import ApiError
from ingestlayer.metrics import REGISTRY

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def healthz(rt: RuntimeDep) -> dict[str, str]:
    # No database call. But a process whose SQLite log could not be synced stores nothing until
    # it restarts: a liveness probe (Kubernetes, systemd's watchdog, a supervisor) that sees it
    # fail restarts it, which is the remedy; /readyz alone only took it out of rotation.
    failure = rt.store.durability_failure()
    if failure is not None:
        raise ApiError(503, _sync_failed(failure))
    # A loop that hangs or has ended holds up every event behind it (unrouted, undelivered) while
    # the process answers: a restart takes them up again, since they are stored.
    stalled = rt.liveness.problems()
    if stalled:
        raise ApiError(503, "; ".join(stalled) + "; a restart is needed (stored events wait for it)")
    return {"status": "ok"}


def _sync_failed(failure: str) -> str:
    return f"the database log could not be synced ({failure}); nothing is stored until a restart"


# Pings given up on, still closing their connections.
_abandoned: set[asyncio.Task[None]] = set()


def _forget(task: asyncio.Task[None]) -> None:
    _abandoned.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved: asyncio would log it as never retrieved


@router.get("/readyz")
async def readyz(rt: RuntimeDep) -> dict[str, str]:
    # A probe must answer in time whatever the database does (a frozen server holds a query
    # until the statement timeout). Not asyncio.wait_for: it waits for the cancelled ping to
    # end, and the ping then closes its connection, 2 s more on a frozen server (the first
    # /readyz took 4 s). The probe answers now; the connection is closed without it.
    ping = asyncio.ensure_future(rt.store.ping())
    done, _ = await asyncio.wait({ping}, timeout=READY_TIMEOUT_SECONDS)
    if not done:
        ping.cancel()
        _abandoned.add(ping)
        ping.add_done_callback(_forget)
        raise ApiError(503, "the database is not reachable")
    if ping.exception() is not None:
        raise ApiError(503, "the database is not reachable")
    failure = rt.store.durability_failure()
    if failure is not None:
        raise ApiError(503, _sync_failed(failure))
    # Not /healthz: a restart would let go of the only copy of what the server stored.
    moved = rt.store.moved_files()
    if moved is not None:
        raise ApiError(503, f"{moved}; nothing is stored until the server restarts with it in place")
    return {"status": "ready"}


@router.get("/metrics")
async def prometheus(request: Request, rt: RuntimeDep) -> Response:
    token = rt.settings.metrics_token
    if token is not None:
        # Prometheus sends it as `authorization: {credentials: …}` (or bearer_token) in the
        # scrape config. Compared in constant time, as every key is.
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise ApiError(
                401,
                "/metrics needs the token set in INGESTLAYER_METRICS_TOKEN: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": "Bearer"},
            )
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
