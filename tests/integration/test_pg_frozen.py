"""PostgreSQL stops answering without closing its connections (a frozen host, a partition).

Without statement timeouts every request waited until TCP gave up (130 s for a 130 s freeze,
``/readyz`` included). A proxy on 127.0.0.1 forwards to the real server and, frozen, holds
every byte; requests must end with a 503 within the configured timeout, and the server must
come back once the database does.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from tests.support.server import start_server, wait_for


class FreezingProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FreezingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self.flowing.wait()  # frozen: the bytes wait here, the sockets stay open
                writer.write(data)
                await writer.drain()
        writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.flowing.set()
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


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

        for method, path, key in (
            ("GET", "/v1/deliveries", server.admin_key),
            ("POST", "/v1/events", server.ingest_key),
            ("GET", "/readyz", server.admin_key),
        ):
            async with server.session.request(
                method,
                server.url + path,
                json={"type": "a.b", "payload": {}} if method == "POST" else None,
                headers=server.auth(key),
                timeout=bounded,
            ) as resp:
                assert resp.status == 503, (path, await resp.text())

        proxy.flowing.set()

        async def serving() -> bool:
            status, _ = await server.request("GET", "/v1/deliveries")
            return status == 200

        await wait_for(serving, timeout=20)
        status, _ = await server.ingest("a.b", {"n": 2})
        assert status == 202
    finally:
        proxy.flowing.set()
        await server.stop()
        await proxy.close()
