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
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute

from ingestlayer.api.ingest import may_hold_huge_int


class JsonBodyRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            value = orjson.loads(body)  # an orjson.JSONDecodeError is a json.JSONDecodeError
            if may_hold_huge_int(body):
                # Deeper than the json module reads is deeper than the routes take: they refuse it.
                with contextlib.suppress(RecursionError):
                    value = json.loads(body)
            self._json = value
        return self._json


class JsonBodyRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def read_json_with_orjson(request: Request) -> Response:
            return await handler(JsonBodyRequest(request.scope, request.receive))

        return read_json_with_orjson
