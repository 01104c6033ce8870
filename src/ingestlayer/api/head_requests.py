"""HEAD on every route that answers GET: the GET, whose body the server leaves out.

FastAPI routes answer only the methods they name, so a HEAD was answered 405 everywhere, on
/healthz and the dashboard's pages too, which uptime monitors and link checkers send (RFC 9110
9.1: a server MUST support GET and HEAD). uvicorn's response cycle keeps the request's own scope,
whose method is still HEAD: it sends the GET answer's headers, Content-Length included, and
leaves its body out (RFC 9110 9.3.2).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ingestlayer.api.ingest import Receive, Scope, Send

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# GETs that change something: Slack's OAuth start (a state made and kept) and its callback (the
# code exchanged, the state used up). A link checker's HEAD must not do either: 405 there.
GETS_WITH_EFFECTS = ("/oauth/", "/v1/connections/")


class HeadAsGet:
    """``app``, with a HEAD request handed to it as the GET it asks about."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "HEAD"
            and not scope["path"].startswith(GETS_WITH_EFFECTS)
        ):
            scope = {**scope, "method": "GET"}  # a copy: the server's keeps HEAD
        await self.app(scope, receive, send)
