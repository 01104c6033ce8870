"""Framing and sniffing headers on the interactive API reference (``/docs``, ``/redoc``).

The dashboard's pages carry them (dashboard_pages.SECURITY_HEADERS); the reference pages, served
by FastAPI, did not. Swagger UI's "Try it out" holds the admin key a reader types in, so a page
framed by another site could be dressed over it (clickjacking). Its scripts are inline and from
this server, so no stricter script policy is set here.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from ingestlayer.api.ingest import Receive, Scope, Send

REFERENCE_PATHS = frozenset({"/docs", "/redoc", "/docs/oauth2-redirect"})
FRAMING_HEADERS = [
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
]


class ReferencePageHeaders:
    """An ASGI wrapper adding FRAMING_HEADERS to the reference pages' answers, and nothing to
    any other path's."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in REFERENCE_PATHS:
            await self.app(scope, receive, send)
            return

        async def framed(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *FRAMING_HEADERS]
            await send(message)

        await self.app(scope, receive, framed)
