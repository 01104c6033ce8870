"""Every route that takes a JSON body reads it the same way (api/json_body.py): `curl -d` (a
form-encoded label) and text/plain are read as JSON, with orjson. The source routes were left
out once, and answered `curl -d` with 415 where every other route took it."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, cast

from fastapi.routing import APIRoute

from ingestlayer.api.json_body import JsonBodyRoute
from ingestlayer.app import build_fastapi


def api_routes(routes: Iterable[Any]) -> Iterator[APIRoute]:
    """The routes, with those of each router the app includes (kept as the router)."""
    for r in routes:
        if isinstance(r, APIRoute):
            yield r
        elif hasattr(r, "original_router"):
            yield from api_routes(r.original_router.routes)


def test_every_route_with_a_json_body_reads_it_as_the_others_do() -> None:
    app = build_fastapi(cast(Any, None))  # the runtime is only kept, for requests
    with_body = [r for r in api_routes(app.routes) if r.body_field is not None]
    assert any(r.path == "/v1/sources" for r in with_body)
    assert [f"{sorted(r.methods)} {r.path}" for r in with_body if not isinstance(r, JsonBodyRoute)] == []
