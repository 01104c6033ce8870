"""The ASGI application: the ingest hot path in front of the FastAPI app.

``POST /v1/events`` is served by :class:`~ingestlayer.api.ingest.IngestHandler` directly; every
other request goes to FastAPI, which also documents the ingest route in ``/openapi.json``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from ingestlayer import __version__
from ingestlayer.api import dashboard, endpoints, entities, health, ingress, logs, manage, slack_oauth
from ingestlayer.api.dashboard_session import install_login_redirect
from ingestlayer.api.errors import error_body, install_error_handlers
from ingestlayer.api.head_requests import HeadAsGet
from ingestlayer.api.ingest import IngestHandler, Receive, Scope, Send, send_json
from ingestlayer.api.openapi_errors import document_errors, error_response
from ingestlayer.api.ratelimit import RateLimiter, SharedRateLimiter
from ingestlayer.api.reference_pages import ReferencePageHeaders
from ingestlayer.api.request_guard import guarded
from ingestlayer.runtime import Runtime

DOCS_STATIC_URL = "/static/api-docs"
# The methods FastAPI answers on /v1/events (the listing, and CORS preflights via the guard).
EVENTS_ROUTE_READS = frozenset({"GET", "HEAD", "OPTIONS"})


class EventIn(BaseModel):
    type: str = Field(description="Dotted event name, e.g. feature.used", examples=["feature.used"])
    payload: dict[str, Any] = Field(default_factory=dict, description="Stored whole, exactly as sent")
    idempotency_key: str | None = Field(default=None, max_length=255)
    occurred_at: str | None = Field(default=None, description="ISO 8601; defaults to the time received")


class BatchIn(BaseModel):
    batch: list[EventIn] = Field(max_length=1000)


class IngestOut(BaseModel):
    id: str
    duplicate: bool


def _document_ingest(app: FastAPI) -> None:
    """Describe the hand-written ingest route in the OpenAPI document."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        comps = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (EventIn, BatchIn, IngestOut):
            comps[model.__name__] = model.model_json_schema(ref_template="#/components/schemas/{model}")
            comps.update(comps[model.__name__].pop("$defs", {}))
        err = error_response()
        schema["paths"]["/v1/events"] = {
            **schema["paths"].get("/v1/events", {}),
            "post": {
                "tags": ["ingest"],
                "summary": "Send one event or a batch of up to 1000 (ingest or admin key)",
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/EventIn"},
                                    {"$ref": "#/components/schemas/BatchIn"},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "202": {
                        "description": "Stored durably",
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/IngestOut"}}
                        },
                    },
                    "200": {
                        "description": "A repeated idempotency key: the first event's id, duplicate true"
                    },
                    **{str(c): err for c in (400, 401, 413, 422, 429, 503)},
                },
            },
        }
        document_errors(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_fastapi(rt: Runtime) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await rt.start()
        if rt.run_api:
            rt.supervise("rotations", lambda: endpoints.sweep_finished_rotations(rt))
        try:
            yield
        finally:
            await rt.shutdown()

    # /docs and /redoc load their scripts from this server, not from a CDN: a self-hosted
    # install is often on a network that cannot reach one.
    app = FastAPIOffline(
        title="ingestlayer",
        version=__version__,
        lifespan=lifespan,
        static_url=DOCS_STATIC_URL,
        # A trailing slash is a 404 naming the path, not a 307 to a Location built from the
        # request's Host header (which a client that does not follow it took for success).
        redirect_slashes=False,
    )
    app.state.runtime = rt
    install_error_handlers(app)
    install_login_redirect(app)
    app.include_router(health.router)
    app.include_router(manage.router)
    app.include_router(endpoints.router)
    app.include_router(logs.router)
    app.include_router(ingress.router)
    app.include_router(entities.router)
    app.include_router(slack_oauth.router)
    app.include_router(dashboard.router)
    _document_ingest(app)
    return app


class IngestLayerApp:
    """The process's ASGI callable."""

    def __init__(self, rt: Runtime) -> None:
        self.runtime = rt
        self.api = build_fastapi(rt)
        # X-Forwarded-For/-Proto from a trusted proxy (FORWARDED_ALLOW_IPS, as uvicorn reads it)
        # are read for the API and the dashboard (its cookies are Secure behind a TLS proxy), not
        # for ingest, which reads neither the client's address nor the scheme: the servers run
        # uvicorn with proxy_headers=False and the middleware sits here instead.
        # (Typed against uvicorn's own ASGI types, which FastAPI's are not.)
        proxy: Any = ProxyHeadersMiddleware(
            cast(Any, ReferencePageHeaders(self.api)),
            trusted_hosts=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
        )
        self.behind_proxy: Callable[[Scope, Receive, Send], Awaitable[None]] = HeadAsGet(proxy)
        s = rt.settings
        # One bucket per project for every way events come in; on PostgreSQL, for every api
        # process too. (Several processes on one SQLite file are not how it is deployed, and
        # its single writer is better kept for events.)
        limiter = (
            RateLimiter(s.ingest_rate_limit)
            if rt.store.dialect == "sqlite"
            else SharedRateLimiter(s.ingest_rate_limit, rt.store.take_rate_tokens)
        )
        self.api.state.ingest_limiter = limiter
        self.max_request_bytes = s.max_request_bytes
        self.ingest = IngestHandler(
            rt.keys,
            rt.committer.submit,
            max_event_bytes=s.max_event_bytes,
            max_request_bytes=s.max_request_bytes,
            max_batch_items=s.max_batch_items,
            limiter=limiter,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] == "/v1/events"
            and scope["method"] not in EVENTS_ROUTE_READS
        ):
            # POST, and every other method the ingest handler refuses (FastAPI, knowing only the
            # GET it serves here, would say "Allow: GET").
            await self.ingest(scope, receive, send)
            return
        path = scope.get("path", "")
        if path.startswith("/v1/") and ("\x00" in path or b"%00" in scope["query_string"]):
            # PostgreSQL cannot store or compare text holding NUL: every query with one failed.
            # (The dashboard's pages answer such input with a message of their own.)
            await send_json(send, 400, error_body("bad_request", "the URL holds a NUL character (%00)"))
            return
        await guarded(self.behind_proxy, self.max_request_bytes, scope, receive, send)


def create_app(rt: Runtime) -> IngestLayerApp:
    return IngestLayerApp(rt)
