"""JSON request bodies on the FastAPI routes, read as ``POST /v1/events`` reads them.

FastAPI reads bodies with the json module, which takes ``NaN``, ``Infinity`` and ``1e400``
(stored as ``null`` afterwards: orjson writes them so) and UTF-16 text, all of which the
ingest route refuses. orjson reads the body instead; a body with a long run of digits is read
again by the json module so that integers over 64 bits reach the route whole and are refused
there by name (orjson would make them floats).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Coroutine, MutableMapping
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from ingestlayer.api.ingest import may_hold_huge_int


class JsonBodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                value = orjson.loads(body)  # an orjson.JSONDecodeError is a json.JSONDecodeError
            except orjson.JSONDecodeError as exc:
                if not exc.doc:
                    # orjson gives no text for a body that is not UTF-8, and FastAPI hands the
                    # error's text on to the error handler, which then said "the request body is
                    # empty": it reads the bytes instead, and says where they stop being UTF-8.
                    exc.doc = body  # type: ignore[assignment]
                raise
            if may_hold_huge_int(body):
                # Deeper than the json module reads is deeper than the routes take: they refuse it.
                with contextlib.suppress(RecursionError):
                    value = json.loads(body)
            self._json = value
        return self._json


# What ``curl -d`` and plain HTTP clients label a body they were given as text. FastAPI reads a
# body as JSON only when it is labelled JSON (or not labelled), and answered these with a 415;
# ``POST /v1/events`` reads any body. A bearer key rides in a header, which browsers never send
# cross-site without asking first, so reading these labels as JSON opens no forged requests.
LOOSELY_LABELLED = frozenset({"application/x-www-form-urlencoded", "text/plain"})


def _labelled_json(scope: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """``scope`` with a loosely labelled body's Content-Type read as application/json."""
    headers = scope["headers"]
    for name, value in headers:
        if name == b"content-type":
            if value.split(b";", 1)[0].strip().lower().decode("latin-1") not in LOOSELY_LABELLED:
                return scope
            kept = [(n, v) for n, v in headers if n != b"content-type"]
            return {**scope, "headers": [*kept, (b"content-type", b"application/json")]}
    return scope


class JsonBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        # Only where the route takes a JSON body of a declared shape: a route reading its body
        # itself (apply also takes YAML) decides what each label means.
        takes_json = self.body_field is not None

        async def read_json_with_orjson(request: Request) -> Response:
            scope = _labelled_json(request.scope) if takes_json else request.scope
            return await handler(JsonBodyRequest(scope, request.receive))

        return read_json_with_orjson
