"""One project's provider that hangs cannot take the connections every other project's steps use.

The steps' calls (enrich.person lookups, classify's model) share one HTTP client. With aiohttp's
default of 100 connections in all, two projects whose providers hung held all of them, and a third
project's lookups to a healthy provider timed out waiting for a connection (its events went on
without their enrichment). Now one host holds at most one project's concurrency of them.
"""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp import web

from ingestlayer.delivery.egress import EgressPolicy
from ingestlayer.delivery.held_routes import PROJECT_CONCURRENCY
from ingestlayer.delivery.step_services import STEP_CONNECTIONS_PER_HOST, HttpSessions
from tests.support.receiver import serve_handler


async def test_calls_to_a_healthy_provider_get_a_connection_while_others_hang() -> None:
    release = asyncio.Event()
    hanging_now = 0

    async def hang(_request: web.Request) -> web.Response:
        nonlocal hanging_now
        hanging_now += 1
        await release.wait()
        return web.json_response({})

    async def answer(_request: web.Request) -> web.Response:
        return web.json_response({"company": "Acme"})

    url_a, slow_a = await serve_handler(hang)
    url_b, slow_b = await serve_handler(hang)  # a second project's provider, hanging too
    url_ok, healthy = await serve_handler(answer)
    sessions = HttpSessions(EgressPolicy(allow_private=True))
    session = await sessions()
    stuck: list[asyncio.Task[None]] = []

    async def call(url: str) -> None:
        async with session.get(url) as resp:
            await resp.read()

    try:
        # Two projects' lookups, as many as their routes may run at once, all hanging.
        for url in (url_a, url_b):
            stuck += [asyncio.create_task(call(url + f"/person/{i}")) for i in range(PROJECT_CONCURRENCY)]
        for _ in range(500):
            if hanging_now >= 2 * STEP_CONNECTIONS_PER_HOST:
                break
            await asyncio.sleep(0.01)
        assert hanging_now == 2 * STEP_CONNECTIONS_PER_HOST
        # Another project's lookup to its own, healthy provider is answered meanwhile.
        async with session.get(url_ok + "/person/x", timeout=aiohttp.ClientTimeout(total=20)) as resp:
            assert resp.status == 200 and await resp.json() == {"company": "Acme"}
        assert not any(t.done() for t in stuck)  # the others still hang
    finally:
        release.set()
        await asyncio.gather(*stuck, return_exceptions=True)
        await sessions.close()
        for runner in (slow_a, slow_b, healthy):
            await runner.cleanup()
