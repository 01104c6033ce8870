"""The baseline: a bare ASGI endpoint on exactly the server's HTTP stack.

One process, uvicorn with httptools on uvloop, access log off, like ``ingestlayer serve``
(see ``ingestlayer/server.py``). It reads the POST body, parses it with orjson, checks it is an
object with a ``type`` (or a ``batch`` list), and answers 202 with a small JSON body of the same
shape as the real ingest answer. No authentication, no storage: the ceiling of this stack.

    python bench/bare_asgi.py --port 8100
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

_ids = itertools.count(1)


async def app(
    scope: Scope, receive: Callable[[], Awaitable[Message]], send: Callable[[Message], Awaitable[None]]
) -> None:
    if scope["type"] != "http":
        return
    if scope["method"] == "GET":  # readiness probe
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"{}"})
        return
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    status = 202
    try:
        doc = orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("batch"), list):
        body = orjson.dumps(
            {"items": [{"id": f"evt_{next(_ids)}", "duplicate": False} for _ in doc["batch"]]}
        )
    elif isinstance(doc, dict) and isinstance(doc.get("type"), str):
        body = orjson.dumps({"id": f"evt_{next(_ids)}", "duplicate": False})
    else:
        status, body = 400, b'{"error": {"code": "invalid_json", "message": "bad body"}}'
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--port", type=int, required=True)
    p.add_argument(
        "--stack",
        choices=["uvicorn", "ingestlayer"],
        default="uvicorn",
        help="uvicorn's own httptools protocol, or the one ingestlayer serves with",
    )
    args = p.parse_args()
    http: Any = "httptools"
    if args.stack == "ingestlayer":
        from ingestlayer.config import Settings
        from ingestlayer.http_protocol import http_protocol

        http = http_protocol(Settings())
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http=http,
        lifespan="off",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
