"""The interactive API reference works on a machine with no internet.

``/docs`` (Swagger UI) and ``/redoc`` used to load their scripts from a CDN, so a self-hosted
install behind a firewall showed a blank page. Every script, stylesheet and icon they name must
come from this server, and the reference must describe the ingest route.
"""

from __future__ import annotations

import re

import pytest

from tests.support.server import RunningServer

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")


async def _fetch(server: RunningServer, path: str) -> tuple[int, bytes, str]:
    async with server.session.get(server.url + path) as resp:
        return resp.status, await resp.read(), resp.headers.get("content-type", "")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_reference_pages_load_everything_from_the_server(server: RunningServer, page: str) -> None:
    status, html, ctype = await _fetch(server, page)
    assert status == 200 and ctype.startswith("text/html")
    assets = [a or b for a, b in ASSET.findall(html.decode())]
    assert assets, html[:500]
    scripts = [a for a in assets if a.endswith(".js")]
    assert scripts, f"{page} names no script: {assets}"
    for asset in assets:
        assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
        status, body, _ = await _fetch(server, asset)
        assert status == 200, asset
        if asset in scripts:
            assert len(body) > 100_000, f"{asset} is {len(body)} bytes, not the UI bundle"


async def test_reference_describes_the_routes(server: RunningServer) -> None:
    status, body = await server.request("GET", "/openapi.json")
    assert status == 200
    assert "post" in body["paths"]["/v1/events"]
    assert "/static/api-docs/{path}" not in body["paths"]


@pytest.mark.parametrize("page", ["/docs", "/redoc", "/docs/oauth2-redirect"])
async def test_reference_pages_cannot_be_framed_by_another_site(server: RunningServer, page: str) -> None:
    """Swagger UI holds the admin key a reader types into "Try it out": framed by another site,
    the page could be dressed over (clickjacking). The dashboard's pages already refused it."""
    async with server.session.get(server.url + page) as resp:
        assert resp.status == 200
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    # Only those pages: an API answer is not given a page's headers.
    async with server.session.get(server.url + "/openapi.json") as resp:
        assert "X-Frame-Options" not in resp.headers
