"""A real HTTP receiver on 127.0.0.1 for delivery tests.

It records every request (headers and raw body) and answers from a programmable plan: a list of
status codes consumed one per request (then ``default``), optional delays, and extra headers
such as ``Retry-After``. A reply with ``echo=True`` answers, as httpbin does, with the request
it got: the URL as requested, the query's values decoded, the HTTP Basic credentials decoded,
and the headers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from ingestlayer.sdk.webhooks import verify


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    # When the reply went out; None while the receiver still holds the request.
    answered_at: float | None = None

    def json(self) -> Any:
        return orjson.loads(self.body)

    def verify(self, secret: str, tolerance: int = 300) -> Any:
        return verify(secret, self.headers, self.body, tolerance=tolerance)


@dataclass
class Reply:
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b'{"received": true}'
    # Answer with the request instead of ``body`` (httpbin's /anything): see echo().
    echo: bool = False


def echo(request: web.Request) -> bytes:
    """The request as a receiver that echoes it shows it: the URL first, as requested (the
    raw path and query), then the query's values, the user:password of an ``Authorization:
    Basic`` header, decoded, and every header."""
    basic = None
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "basic":
        basic = base64.b64decode(credentials).decode("utf-8", "replace")
    return orjson.dumps(
        {
            "url": f"{request.scheme}://{request.host}{request.raw_path}",
            "args": {str(k): v for k, v in request.query.items()},
            "basic_auth": basic,
            "headers": {str(k): v for k, v in request.headers.items()},
        }
    )


class Receiver:
    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.plan: list[Reply] = []
        self.default = Reply()
        self.url = ""
        self._runner: web.AppRunner | None = None
        self.arrived = asyncio.Event()
        # Requests being answered right now, and the most seen at once, per path.
        self.inflight: dict[str, int] = {}
        self.max_inflight: dict[str, int] = {}
        # Set by release_held(): the replies held at that moment go out at once.
        self._release = asyncio.Event()

    def release_held(self) -> None:
        """Answer every request held by a ``delay`` now, instead of when its delay ends; later
        requests are held for their full delay again. For a test whose held replies have done
        their part (a reply that outlasts a process, say): ``stop`` waits for them otherwise."""
        self._release.set()
        self._release = asyncio.Event()

    def fail_times(self, n: int, status: int = 500) -> None:
        self.plan = [Reply(status=status) for _ in range(n)]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        received = Received(request.path, dict(request.headers), body, time.time())
        self.requests.append(received)
        self.arrived.set()
        reply = self.plan.pop(0) if self.plan else self.default
        path = request.path
        self.inflight[path] = self.inflight.get(path, 0) + 1
        self.max_inflight[path] = max(self.max_inflight.get(path, 0), self.inflight[path])
        try:
            if reply.delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), reply.delay)
        finally:
            self.inflight[path] -= 1
            received.answered_at = time.time()
        return web.Response(
            status=reply.status,
            body=echo(request) if reply.echo else reply.body,
            headers=reply.headers,
            content_type="application/json",
        )

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.url, self._runner = await serve_app(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def by_delivery(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for r in self.requests:
            out.setdefault(r.headers.get("X-Ingestlayer-Delivery", ""), []).append(r)
        return out


async def serve_app(app: web.Application, shutdown_timeout: float = 60.0) -> tuple[str, web.AppRunner]:
    """``app`` on a free port of 127.0.0.1: its base URL, and the runner to clean up (which waits
    up to ``shutdown_timeout`` seconds for requests still open: aiohttp's default, 60)."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return f"http://127.0.0.1:{port}", runner


async def serve_handler(
    handler: Callable[[web.Request], Awaitable[web.Response]],
) -> tuple[str, web.AppRunner]:
    """``handler`` answering every path on a port of 127.0.0.1: its base URL, and the runner to
    clean up."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return await serve_app(app)
