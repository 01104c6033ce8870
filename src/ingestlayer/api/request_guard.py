"""What every request is held to before the application reads it, and CORS for browsers.

The ingest route (``POST /v1/events``) checks these itself, on its hot path; every other route
comes through :func:`guarded`. Without it, FastAPI read a body whole, of any size, before the
route's key was checked: anyone could make the server buffer gigabytes.

- A body over the request limit is a 413: at once when ``Content-Length`` says so (no
  ``100 Continue`` invites it), else as soon as the bytes received pass it.
- A body in a ``Content-Encoding`` other than ``identity`` is a 415 (none is decoded: a
  compressed body read as JSON was "not valid JSON", which did not say why).
- An answer sent before the body was read says ``connection: close``: kept open, the
  connection went on taking the rest of a body no one would read.
- Browsers may send events with an ingest key (the TypeScript SDK runs in them): the routes an
  ingest key opens answer CORS preflights and allow any origin. No cookie is involved (the key
  travels in ``Authorization``), so ``*`` opens nothing a script elsewhere could not do.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.requests import ClientDisconnect

from ingestlayer.api.errors import ApiError, error_body

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

# The routes an ingest key opens, which browsers may call from any origin.
CORS_PATHS = frozenset({"/v1/events", "/v1/identify", "/v1/group"})
ALLOW_ANY_ORIGIN = (b"access-control-allow-origin", b"*")
PREFLIGHT_HEADERS = [
    ALLOW_ANY_ORIGIN,
    (b"access-control-allow-methods", b"POST"),
    # user-agent: the TypeScript SDK sets one; Firefox and Safari send it (Chromium drops it)
    # and so ask for it in the preflight, which refused the SDK's every request there.
    (b"access-control-allow-headers", b"authorization, content-type, idempotency-key, user-agent"),
    (b"access-control-max-age", b"86400"),
]
CLOSE = (b"connection", b"close")
IDENTITY = (b"", b"identity")


def mib(limit: int) -> str:
    return f"{limit // (1024 * 1024)} MiB" if limit >= 1024 * 1024 else f"{limit} bytes"


def too_large(limit: int) -> bytes:
    return error_body("payload_too_large", f"request body exceeds {mib(limit)}")


# Headers a request may carry once: with two, which one counts was up to each route (the ingest
# route took the last Authorization, the others the first).
SINGLE_HEADERS = {b"authorization": "Authorization", b"idempotency-key": "Idempotency-Key"}


def twice(header: str) -> ApiError:
    return ApiError(
        400, f"the {header} header is given more than once: send it once", field=header, unread_body=True
    )


def unsupported_encoding_message(encoding: bytes) -> str:
    shown = encoding.decode("latin-1")[:40]
    return f"Content-Encoding {shown!r} is not supported: send the body uncompressed"


async def answer(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]]) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + extra})
    await send({"type": "http.response.body", "body": body})


def is_preflight(scope: Scope) -> bool:
    """A browser asking whether it may POST to a route an ingest key opens."""
    return (
        scope["method"] == "OPTIONS"
        and scope["path"] in CORS_PATHS
        and any(name == b"access-control-request-method" for name, _ in scope["headers"])
    )


async def answer_preflight(send: Send) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": PREFLIGHT_HEADERS})
    await send({"type": "http.response.body", "body": b""})


async def guarded(app: App, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    """Run ``app`` on an HTTP request held to the body ``limit`` and to bodies without a
    content encoding (see the module's docstring); other scopes pass through."""
    if scope["type"] != "http":
        await app(scope, receive, send)
        return
    if is_preflight(scope):
        await answer_preflight(send)
        return
    body_done = True  # no body: nothing left unread whenever the app answers
    seen: set[bytes] = set()
    for name, value in scope["headers"]:
        if name in SINGLE_HEADERS:
            if name in seen:
                await answer(send, 400, twice(SINGLE_HEADERS[name]).body(), [CLOSE])
                return
            seen.add(name)
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                await answer(send, 413, too_large(limit), [CLOSE])
                return
            body_done = body_done and value.strip(b"0") == b""
        elif name == b"transfer-encoding":
            body_done = False
        elif name == b"content-encoding" and value.strip().lower() not in IDENTITY:
            body = error_body("unsupported_media_type", unsupported_encoding_message(value))
            await answer(send, 415, body, [CLOSE])
            return
    cors = scope["path"] in CORS_PATHS
    received = 0
    cut_off = False  # the body passed the limit: answered 413 here, the app's answer is dropped
    started = False

    async def bounded_receive() -> Message:
        nonlocal received, body_done, cut_off, started
        if cut_off:
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                cut_off = True
                if not started:
                    started = True
                    await answer(send, 413, too_large(limit), [CLOSE])
                # The app reads a client that went away: it ends without an answer of its own.
                return {"type": "http.disconnect"}
            body_done = not message.get("more_body", False)
        return message

    async def checked_send(message: Message) -> None:
        nonlocal started
        if cut_off:
            return
        if message["type"] == "http.response.start":
            started = True
            extra = []
            if not body_done:
                extra.append(CLOSE)
            if cors:
                extra.append(ALLOW_ANY_ORIGIN)
            if extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    try:
        await app(scope, bounded_receive, checked_send)
    except ClientDisconnect:
        # The client left (or the server closed a body that stopped arriving) while a route read
        # its body: no one to answer, and nothing wrong here, so no traceback in the log.
        return
    except Exception:
        if not cut_off:
            raise
        # The app found its client gone (Starlette's ClientDisconnect, from a route reading the
        # stream itself): the 413 is the answer, and nothing went wrong on our side.
