"""A TCP proxy in front of PostgreSQL that can freeze it or refuse it, for outage tests.

Frozen, it holds every byte while the sockets stay open: what a frozen host or a network
partition looks like to a client (nothing fails until a timeout does). Refusing, it drops every
connection and refuses new ones: what a server that is down or restarting looks like. Holding
closes, it passes every byte on but keeps a socket the server closed open towards the client:
the moment between a server's last message and the end of its connection, held still.
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit


class FreezingProxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.flowing = asyncio.Event()
        self.flowing.set()
        self.closing = asyncio.Event()
        self.closing.set()
        self.closed_by_server = 0
        self.accepted = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @classmethod
    async def to(cls, url: str) -> FreezingProxy:
        """A proxy started in front of the server of this PostgreSQL URL."""
        target = urlsplit(url)
        return await cls(target.hostname or "127.0.0.1", target.port or 5432).start()

    async def start(self) -> FreezingProxy:
        # On the port it had, when listening again after refuse().
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, url: str) -> str:
        """``url`` with its host and port replaced by the proxy's."""
        return through(url, self.port)

    async def refuse(self) -> None:
        """Drop every connection and refuse new ones (connection refused) until :meth:`restore`."""
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()
        self._server = None

    async def restore(self) -> None:
        """Accept connections again after :meth:`refuse`, and let bytes flow."""
        self.flowing.set()
        if self._server is None:
            await self.start()

    def hold_closes(self) -> None:
        """Pass the server's bytes on but keep its closed connections open towards the client,
        until :meth:`release_closes`; each such close is counted in ``closed_by_server``."""
        self.closing.clear()

    def release_closes(self) -> None:
        self.closing.set()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_server: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                await self.flowing.wait()  # frozen: the bytes wait here, the sockets stay open
                writer.write(data)
                await writer.drain()
            if from_server:
                self.closed_by_server += 1
                await self.closing.wait()
        writer.close()
        self._writers.discard(writer)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}
        for src, dst, from_server in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(src, dst, from_server))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.flowing.set()
        self.closing.set()
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
