"""A browser without JavaScript, for the dashboard's tests: cookies kept, redirects not followed
(so tests see them), the CSRF token of the last form read sent back with each POST."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.support.server import RunningServer


@dataclass
class Page:
    status: int
    text: str
    headers: Any
    location: str | None


class Browser:
    """A cookie-keeping HTTP client that does not follow redirects (so tests can see them)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf = ""

    async def close(self) -> None:
        await self.session.close()

    async def get(self, path: str) -> Page:
        async with self.session.get(self.base + path, allow_redirects=False) as resp:
            page = Page(resp.status, await resp.text(), resp.headers, resp.headers.get("Location"))
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        if found:
            self.csrf = found.group(1)
        return page

    async def post(self, path: str, data: dict[str, str] | None = None, *, csrf: bool = True) -> Page:
        form = dict(data or {})
        if csrf:
            form.setdefault("csrf", self.csrf)
        async with self.session.post(self.base + path, data=form, allow_redirects=False) as resp:
            page = Page(resp.status, await resp.text(), resp.headers, resp.headers.get("Location"))
        found = re.search(r'name="csrf" value="([^"]+)"', page.text)
        if found:
            self.csrf = found.group(1)
        return page

    async def follow(self, page: Page) -> Page:
        assert page.status == 303, (page.status, page.text[:500])
        assert page.location is not None
        return await self.get(page.location)

    async def login(self, key: str) -> Page:
        await self.get("/login")
        return await self.post("/login", {"key": key})


async def signed_in(browser: Browser, server: RunningServer) -> Browser:
    page = await browser.login(server.admin_key)
    assert page.status == 303 and page.location == "/", (page.status, page.text[:300])
    await browser.get("/")
    return browser
