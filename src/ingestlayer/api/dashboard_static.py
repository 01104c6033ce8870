"""The dashboard's static files (the stylesheet, the icon): read once at import, served with an ETag.

``ASSET_VERSION`` changes whenever one of them does; pages put it in their asset URLs.
"""

from __future__ import annotations

import hashlib

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ingestlayer.api.dashboard_views import WEB

router = APIRouter(include_in_schema=False)

_STATIC_TYPES = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml", ".js": "text/javascript"}


def _load_static() -> dict[str, tuple[bytes, str, str]]:
    out: dict[str, tuple[bytes, str, str]] = {}
    folder = WEB / "static"
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file() and path.suffix in _STATIC_TYPES:
            data = path.read_bytes()
            out[path.name] = (data, _STATIC_TYPES[path.suffix], hashlib.sha256(data).hexdigest()[:16])
    return out


STATIC = _load_static()
ASSET_VERSION = hashlib.sha256(b"".join(v[2].encode() for v in STATIC.values())).hexdigest()[:10]


@router.get("/static/{name}")
async def static(name: str, request: Request) -> Response:
    found = STATIC.get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    data, ctype, etag = found
    headers = {
        "ETag": f'"{etag}"',
        "Cache-Control": "public, max-age=86400",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == f'"{etag}"':
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=ctype, headers=headers)
