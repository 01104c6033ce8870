"""PostgreSQL stops answering without closing its connections (a frozen host, a partition).

Without statement timeouts every request waited until TCP gave up (130 s for a 130 s freeze,
``/readyz`` included). A proxy on 127.0.0.1 forwards to the real server and, frozen, holds
every byte; requests must end with a 503 within the configured timeout, and the server must
come back once the database does.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import aiohttp

from tests.support.freezing_proxy import FreezingProxy, through
from tests.support.server import RunningServer, start_server, wait_for

__all__ = ["FreezingProxy", "through"]  # moved to tests/support/freezing_proxy.py; kept importable here
FROZEN_KEY = "sent-while-frozen"


async def request(
    server: RunningServer, method: str, path: str, key: str, timeout: aiohttp.ClientTimeout
) -> tuple[int, str, float]:
    """One request (a POST sends an event): its status, its body and how long it took."""
    started = time.monotonic()
    async with server.session.request(
        method,
        server.url + path,
        json={"type": "a.b", "payload": {}, "idempotency_key": FROZEN_KEY} if method == "POST" else None,
        headers=server.auth(key),
        timeout=timeout,
    ) as resp:
        return resp.status, await resp.text(), time.monotonic() - started


async def test_a_frozen_database_is_a_503_in_time_then_recovers(pg_url: str) -> None:
    target = urlsplit(pg_url)
    proxy = await FreezingProxy(target.hostname or "127.0.0.1", target.port or 5432).start()
    # Room for a loaded machine's statements before the freeze; the frozen ones still end in time.
    server = await start_server(through(pg_url, proxy.port), database_timeout=3.0)
    # Far longer than the timeout, far shorter than TCP giving up: a hang fails the test.
    bounded = aiohttp.ClientTimeout(total=15)
    try:
        status, _ = await server.ingest("a.b", {"n": 1})
        assert status == 202
        proxy.flowing.clear()

        asked = (
            ("GET", "/v1/deliveries", server.admin_key),
            ("POST", "/v1/events", server.ingest_key),
            ("GET", "/readyz", server.admin_key),
        )
        # At once, as clients of a frozen server would send them: each waits out its own timeout.
        answers = await asyncio.gather(*(request(server, m, path, key, bounded) for m, path, key in asked))
        for (method, path, _), (status, text, _) in zip(asked, answers, strict=True):
            assert status == 503, (path, text)
            if method == "POST":
                # Its INSERT may be held in the frozen connection and commit once it thaws: the
                # answer must not say it was not stored (a client without a key would store it
                # twice by sending it again); the same key makes sending it again safe.
                assert "the event may not have been stored" in text, text
                assert "same idempotency key" in text, text

        proxy.flowing.set()

        async def serving() -> bool:
            status, _ = await server.request("GET", "/v1/deliveries")
            return status == 200

        await wait_for(serving, timeout=20)
        status, body = await server.ingest("a.b", {}, idempotency_key=FROZEN_KEY)
        assert status in (200, 202), body  # 200 if the frozen insert committed after all
        _, listed = await server.request("GET", "/v1/events?limit=10")
        assert len(listed["data"]) == 2, listed  # the first event, and the frozen one once
        status, _ = await server.ingest("a.b", {"n": 2})
        assert status == 202
    finally:
        proxy.flowing.set()
        await server.stop()
        await proxy.close()


async def test_frozen_database_answers_within_the_documented_bounds(pg_url: str) -> None:
    """``/readyz`` within 2 s, an ingest's 503 within INGESTLAYER_DATABASE_TIMEOUT.

    They took twice as long: a cancelled ``/readyz`` ping first closed its connection (2 s more
    on a frozen server), and an ingest whose statement timed out handed its connection back only
    once the server acknowledged the cancel (the timeout again: 10 s for a timeout of 5)."""
    # Long enough that the old bound (the timeout twice over) and the new one (once) stay apart
    # by more than a loaded machine's delays.
    timeout = 6.0
    proxy = await FreezingProxy.to(pg_url)
    server = await start_server(proxy.url(pg_url), database_timeout=timeout)
    bounded = aiohttp.ClientTimeout(total=30)

    async def timed(method: str, path: str, key: str) -> tuple[int, float]:
        status, _, took = await request(server, method, path, key, bounded)
        return status, took

    try:
        # Connections in both pools, as on a server that has been serving.
        assert (await server.ingest("a.b", {"n": 1}))[0] == 202
        assert (await timed("GET", "/readyz", server.admin_key))[0] == 200
        proxy.flowing.clear()

        status, took = await timed("GET", "/readyz", server.admin_key)
        assert status == 503
        assert took < 3.6, f"/readyz took {took:.1f}s"  # 2 s (it took 4), and a loaded machine's margin
        for _ in range(2):  # the first on a pooled connection, the next on a new one
            status, took = await timed("POST", "/v1/events", server.ingest_key)
            assert status == 503
            assert took < timeout + 3.5, f"an ingest took {took:.1f}s"  # it took twice the timeout
    finally:
        proxy.flowing.set()
        await server.stop()
        await proxy.close()
