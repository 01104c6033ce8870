"""The webhook HTTP client against real sockets on 127.0.0.1.

Most servers here are raw asyncio servers whose replies the test writes byte for byte, so framing
corner cases (chunked, close-delimited, 1xx, resets, stale keep-alive) are exact and each test can
count the TCP connections and requests the server saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import itertools
import socket
import ssl
import struct
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvloop
import yarl
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ingestlayer.delivery.egress import EgressDenied
from ingestlayer.delivery.http_client import (
    HttpClient,
    HttpConnectError,
    HttpConnectionClosed,
    HttpProtocolError,
    HttpResponse,
    _build_head,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


# -- a scriptable raw server --------------------------------------------------------------------


@dataclass
class Request:
    conn: int  # which TCP connection (0, 1, ...) it arrived on
    head: bytes
    body: bytes
    number_on_conn: int  # 0 for the first request on its connection


# Writes the reply (or not); returns False to close the connection afterwards.
Handler = Callable[[Request, asyncio.StreamWriter], Awaitable[bool | None]]


@dataclass
class RawServer:
    handler: Handler
    ssl_context: ssl.SSLContext | None = None
    requests: list[Request] = field(default_factory=list)
    connections: int = 0
    active: int = 0
    max_active: int = 0
    client_eofs: int = 0  # connections the client closed on its side
    ended: int = 0  # connections over, for any reason
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def url(self, path: str = "/hook", scheme: str = "http", host: str = "127.0.0.1") -> yarl.URL:
        return yarl.URL(f"{scheme}://{host}:{self.port}{path}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = self.connections
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            n = 0
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError:
                    self.client_eofs += 1
                    return
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = Request(conn, head, await reader.readexactly(length), n)
                n += 1
                self.requests.append(request)
                if await self.handler(request, writer) is False:
                    return
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.active -= 1
            self.ended += 1
            writer.close()
            self._tasks.discard(task)


def replying(*responses: bytes, close: bool = False) -> Handler:
    """Answer the n-th request on each connection with responses[n] (the last one repeats)."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        writer.write(responses[min(request.number_on_conn, len(responses) - 1)])
        return not close

    return handler


async def resolve_local(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


async def eventually(condition: Callable[[], bool], within: float = 10.0) -> None:
    end = time.monotonic() + within
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.005)


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    c = HttpClient(resolve=resolve_local)
    yield c
    await c.close()


HEADERS = {"Content-Type": "application/json", "User-Agent": "ingestlayer/test", "X-Sig": "v1=abc"}


# -- responses ----------------------------------------------------------------------------------


async def test_plain_200_status_headers_and_excerpt(client: HttpClient) -> None:
    response = (
        b"HTTP/1.1 201 Created\r\nContent-Type: text/plain\r\nX-Dup: first\r\nX-DUP: last\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    async with RawServer(replying(response)) as server:
        got = await client.post(server.url(), b"{}", HEADERS, timeout=2)
    assert got == HttpResponse(
        201, {"content-type": "text/plain", "x-dup": "last", "content-length": "5"}, b"hello"
    )


async def test_exact_request_bytes(client: HttpClient) -> None:
    async with RawServer(replying(OK)) as server:
        url = yarl.URL(f"http://127.0.0.1:{server.port}/hooks/in?x=1&y=two#frag")
        await client.post(url, b'{"hello":"x"}', HEADERS, timeout=2)
    (request,) = server.requests
    assert request.head == (
        b"POST /hooks/in?x=1&y=two HTTP/1.1\r\n"
        + f"Host: 127.0.0.1:{server.port}\r\n".encode()
        + b"Content-Type: application/json\r\nUser-Agent: ingestlayer/test\r\nX-Sig: v1=abc\r\n"
        b"Content-Length: 13\r\n\r\n"
    )
    assert request.body == b'{"hello":"x"}'


@pytest.mark.parametrize(
    ("url", "host_line"),
    [
        pytest.param("https://example.com/x", b"Host: example.com\r\n", id="https"),
        pytest.param("https://example.com:443/x", b"Host: example.com\r\n", id="explicit-443"),
        pytest.param("http://example.com:8443/x", b"Host: example.com:8443\r\n", id="other-port"),
        pytest.param("http://[::1]:8080/", b"Host: [::1]:8080\r\n", id="ipv6"),
        pytest.param("http://b\u00fccher.example/", b"Host: xn--bcher-kva.example\r\n", id="idna"),
    ],
)
def test_host_header_omits_default_port_and_encodes_idna(url: str, host_line: bytes) -> None:
    head = _build_head(yarl.URL(url), 0, {})
    assert head.split(b"\r\n", 1)[1].startswith(host_line)


def test_caller_host_header_replaces_ours() -> None:
    head = _build_head(yarl.URL("http://203.0.113.7/x"), 2, {"host": "api.example.com"})
    assert head == b"POST /x HTTP/1.1\r\nhost: api.example.com\r\nContent-Length: 2\r\n\r\n"


def test_url_credentials_become_basic_auth_unless_the_caller_sends_authorization() -> None:
    url = yarl.URL("https://hook%20user:p%40ss@example.com/x")
    assert b"\r\nAuthorization: Basic aG9vayB1c2VyOnBAc3M=\r\n" in _build_head(url, 0, {})
    head = _build_head(url, 0, {"Authorization": "Bearer t"})
    assert b"Basic" not in head and b"\r\nAuthorization: Bearer t\r\n" in head
    assert b"example.com\r\n" in head and b"user" not in head


async def test_chunked_response_and_reuse(client: HttpClient) -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n"
    )
    async with RawServer(replying(chunked)) as server:
        first = await client.post(server.url(), b"a", {}, timeout=2)
        second = await client.post(server.url(), b"b", {}, timeout=2)
    assert first.excerpt == second.excerpt == b"hello world"
    assert server.connections == 1


async def test_http10_close_delimited_body(client: HttpClient) -> None:
    response = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the server closes"
    async with RawServer(replying(response, close=True)) as server:
        first = await client.post(server.url(), b"a", {}, timeout=2)
        second = await client.post(server.url(), b"b", {}, timeout=2)
    assert first.status == 200
    assert first.excerpt == second.excerpt == b"until the server closes"
    assert server.connections == 2


async def test_http10_keep_alive_is_reused(client: HttpClient) -> None:
    response = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
    async with RawServer(replying(response)) as server:
        for _ in range(3):
            await client.post(server.url(), b"a", {}, timeout=2)
    assert server.connections == 1


async def test_body_longer_than_excerpt_is_drained_and_connection_kept(client: HttpClient) -> None:
    body = bytes(range(256)) * 40  # 10 KiB: within the drain limit
    response = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    async with RawServer(replying(response)) as server:
        got = await client.post(server.url(), b"a", {}, timeout=2, max_excerpt=100)
        await client.post(server.url(), b"b", {}, timeout=2)
    assert got.excerpt == body[:100]
    assert server.connections == 1


async def test_huge_body_is_cut_off_not_read_and_connection_dropped(client: HttpClient) -> None:
    async def endless(request: Request, writer: asyncio.StreamWriter) -> None:
        # Announces 100 MB, sends 1 MB, then stalls: neither reading it all nor waiting is OK.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n" + b"x" * 1_000_000)

    async with RawServer(endless) as server:
        # Reading on, or waiting for the rest, would end in the 5 s timeout's TimeoutError.
        got = await client.post(server.url(), b"a", {}, timeout=5)
        assert got.excerpt == b"x" * 1024
        await eventually(lambda: server.ended == 1)  # we closed it (a reset: data was left unread)
        again = await client.post(server.url(), b"b", {}, timeout=5)
    assert again.excerpt == b"x" * 1024
    assert server.connections == 2


async def test_huge_response_headers_are_refused_not_kept(client: HttpClient) -> None:
    async def flood(request: Request, writer: asyncio.StreamWriter) -> None:
        # 20 MB of header lines: kept, they would grow the worker's memory at the receiver's will.
        writer.write(b"HTTP/1.1 200 OK\r\n")
        line = b"X-Pad-%d: " + b"p" * 200 + b"\r\n"
        for i in range(100_000):
            writer.write(line % i)
            if i % 1000 == 0:
                await writer.drain()
        writer.write(b"Content-Length: 2\r\n\r\nok")

    async with RawServer(flood) as server:
        with pytest.raises(HttpProtocolError, match="response headers exceed 64 KiB"):
            await client.post(server.url(), b"a", {}, timeout=5)


async def test_204_and_304_have_no_body(client: HttpClient) -> None:
    async with RawServer(
        replying(b"HTTP/1.1 204 No Content\r\n\r\n", b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", OK)
    ) as server:
        r204 = await client.post(server.url(), b"a", {}, timeout=2)
        r304 = await client.post(server.url(), b"b", {}, timeout=2)
        r200 = await client.post(server.url(), b"c", {}, timeout=2)
    assert (r204.status, r204.excerpt) == (204, b"")
    assert (r304.status, r304.excerpt, r304.headers) == (304, b"", {"etag": "x"})
    assert (r200.status, r200.excerpt) == (200, b"ok")
    assert server.connections == 1


async def test_interim_1xx_responses_are_skipped(client: HttpClient) -> None:
    response = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\n\r\ndone"
    )
    async with RawServer(replying(response, OK)) as server:
        got = await client.post(server.url(), b"a", {}, timeout=2)
        again = await client.post(server.url(), b"b", {}, timeout=2)
    assert got == HttpResponse(202, {"content-length": "4"}, b"done")
    assert again.excerpt == b"ok"
    assert server.connections == 1


async def test_connection_close_response_is_not_reused(client: HttpClient) -> None:
    response = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    async def handler(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(response)  # ...and keeps the connection open: the client must not reuse it

    async with RawServer(handler) as server:
        await client.post(server.url(), b"a", {}, timeout=2)
        await client.post(server.url(), b"b", {}, timeout=2)
        assert server.connections == 2
        await eventually(lambda: server.client_eofs >= 1)


async def test_malformed_response_is_a_protocol_error(client: HttpClient) -> None:
    async with RawServer(replying(b"HTTP/1.1 2xx Fine\r\n\r\n")) as server:
        with pytest.raises(HttpProtocolError, match="malformed HTTP response"):
            await client.post(server.url(), b"a", {}, timeout=2)


async def test_bad_content_length_is_a_protocol_error(client: HttpClient) -> None:
    async with RawServer(replying(b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n")) as server:
        with pytest.raises(HttpProtocolError):
            await client.post(server.url(), b"a", {}, timeout=2)


async def test_against_aiohttp_web_server(client: HttpClient) -> None:
    """A real server's framing: a fixed-length reply and a streamed (chunked) one."""
    seen: list[tuple[str, str, bytes]] = []
    peers: set[object] = set()

    async def hook(request: web.Request) -> web.StreamResponse:
        seen.append((request.path_qs, request.headers["X-Sig"], await request.read()))
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        if request.query.get("stream"):
            response = web.StreamResponse(status=202)
            await response.prepare(request)
            await response.write(b"part one, ")
            await response.write(b"part two")
            await response.write_eof()
            return response
        return web.json_response({"ok": True}, headers={"X-Reply": "yes"})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        fixed = await client.post(yarl.URL(f"http://127.0.0.1:{port}/hook"), b"{}", HEADERS, timeout=2)
        streamed = await client.post(
            yarl.URL(f"http://127.0.0.1:{port}/hook?stream=1"), b"[]", HEADERS, timeout=2
        )
    finally:
        await runner.cleanup()
    assert (fixed.status, fixed.excerpt, fixed.headers["x-reply"]) == (200, b'{"ok": true}', "yes")
    assert fixed.headers["content-type"].startswith("application/json")
    assert (streamed.status, streamed.excerpt) == (202, b"part one, part two")
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert seen == [("/hook", "v1=abc", b"{}"), ("/hook?stream=1", "v1=abc", b"[]")]
    assert len(peers) == 1  # one keep-alive connection


# -- keep-alive pool ----------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(client: HttpClient) -> None:
    async with RawServer(replying(OK)) as server:
        for i in range(50):
            got = await client.post(server.url(f"/n/{i}"), b"x", {}, timeout=2)
            assert got.status == 200
    assert server.connections == 1
    assert len(server.requests) == 50


async def test_concurrent_requests_respect_limit_per_host() -> None:
    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.02)
        writer.write(OK)

    c = HttpClient(resolve=resolve_local, limit_per_host=3)
    try:
        async with RawServer(slow) as server:
            results = await asyncio.gather(*(c.post(server.url(), b"x", {}, timeout=5) for _ in range(20)))
    finally:
        await c.close()
    assert [r.status for r in results] == [200] * 20
    assert server.connections == 3
    assert server.max_active == 3


async def test_waiting_for_a_busy_pool_respects_the_deadline() -> None:
    # The only connection stays busy until the waiter has given up (or, were the deadline not
    # kept, for 5 s: then the waiter is answered instead of timing out).
    release = asyncio.Event()

    async def slow(request: Request, writer: asyncio.StreamWriter) -> None:
        if request.body == b"1":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), 5)
        writer.write(OK)

    c = HttpClient(resolve=resolve_local, limit_per_host=1)
    try:
        async with RawServer(slow) as server:
            first = asyncio.create_task(c.post(server.url(), b"1", {}, timeout=5))
            await eventually(lambda: len(server.requests) == 1)
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                await c.post(server.url(), b"2", {}, timeout=0.2)
            # It waited its 0.2 s for the connection (not failing at once); without the timeout
            # covering that wait, it would have been sent once the first was answered.
            assert time.monotonic() - start > 0.15
            release.set()
            assert (await first).status == 200
            assert (await c.post(server.url(), b"3", {}, timeout=2)).status == 200
    finally:
        await c.close()
    assert server.connections == 1


async def test_idle_connections_expire() -> None:
    c = HttpClient(resolve=resolve_local, idle_timeout=0.1)
    try:
        async with RawServer(replying(OK)) as server:
            await c.post(server.url(), b"1", {}, timeout=2)
            await eventually(lambda: server.client_eofs == 1)  # closed by the sweep, unprompted
            await c.post(server.url(), b"2", {}, timeout=2)
    finally:
        await c.close()
    assert server.connections == 2


async def test_close_closes_pooled_connections() -> None:
    c = HttpClient(resolve=resolve_local)
    async with RawServer(replying(OK)) as server:
        await asyncio.gather(*(c.post(server.url(), b"x", {}, timeout=2) for _ in range(3)))
        assert server.connections == 3
        await c.close()
        await eventually(lambda: server.client_eofs == 3)
        with pytest.raises(RuntimeError):
            await c.post(server.url(), b"x", {}, timeout=2)


# -- failures and retries -----------------------------------------------------------------------


async def test_server_closing_idle_connection_is_noticed(client: HttpClient) -> None:
    async with RawServer(replying(OK, close=True)) as server:
        await client.post(server.url(), b"1", {}, timeout=2)
        await asyncio.sleep(0.05)
        assert (await client.post(server.url(), b"2", {}, timeout=2)).status == 200
    assert server.connections == 2
    assert len(server.requests) == 2


@pytest.mark.parametrize("how", ["close", "reset"])
async def test_a_request_the_server_read_is_not_sent_again_when_it_closes_without_answering(
    client: HttpClient, how: str
) -> None:
    """A receiver that reads a webhook, acts on it and then drops the connection: a second copy
    would be a send no attempt records (it was one, retried at once, on a reused connection)."""

    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number_on_conn == 0:
            writer.write(OK)
            return True
        if how == "reset":
            reset(writer)
        return False

    async with RawServer(handler) as server:
        await client.post(server.url(), b"1", {}, timeout=2)
        with pytest.raises(HttpConnectionClosed, match="before any response") as info:
            await client.post(server.url(), b"2", {}, timeout=2)
    assert info.value.request_sent and not info.value.response_started
    assert [(r.conn, r.body) for r in server.requests] == [(0, b"1"), (0, b"2")]


class ClosingAfterEachAnswer:
    """A receiver in a thread of its own that answers one request per connection and then,
    20 ms later, closes it without having said so (no ``Connection: close``): the way servers
    end idle keep-alive connections. In a thread so that its close arrives while the client's
    event loop is busy and has not read it."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.bodies: list[tuple[int, bytes]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for n in itertools.count():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(body) < length:
                    body += conn.recv(65536)
                self.bodies.append((n, body))
                conn.sendall(OK)
                time.sleep(0.02)

    def close(self) -> None:
        self.listener.close()
        self.thread.join(5)


async def test_an_idle_connection_the_server_closed_is_left_out_before_the_loop_has_noticed(
    client: HttpClient,
) -> None:
    server = ClosingAfterEachAnswer()
    try:
        url = yarl.URL(f"http://127.0.0.1:{server.port}/hook")
        assert (await client.post(url, b"1", {}, timeout=2)).status == 200
        time.sleep(0.2)  # noqa: ASYNC251 (blocking on purpose: the FIN arrives, unread by the loop)
        assert (await client.post(url, b"2", {}, timeout=2)).status == 200
    finally:
        server.close()
    assert server.bodies == [(0, b"1"), (1, b"2")]


async def test_fresh_connection_closed_without_response_is_not_retried(client: HttpClient) -> None:
    async def drop(request: Request, writer: asyncio.StreamWriter) -> bool:
        return False

    async with RawServer(drop) as server:
        with pytest.raises(ConnectionError):
            await client.post(server.url(), b"1", {}, timeout=2)
    assert len(server.requests) == 1


async def test_reset_mid_response_raises_and_is_not_retried(client: HttpClient) -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        if request.number_on_conn == 0:
            writer.write(OK)
            return True
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)  # let the client read the partial response first
        reset(writer)
        return False

    async with RawServer(handler) as server:
        await client.post(server.url(), b"1", {}, timeout=2)  # so the failing one is on a reused conn
        with pytest.raises(OSError, match="middle of the response body") as info:
            await client.post(server.url(), b"2", {}, timeout=2)
    assert isinstance(info.value, HttpConnectionClosed) and info.value.response_started
    assert len(server.requests) == 2


async def test_reset_before_any_response_on_fresh_connection(client: HttpClient) -> None:
    async def handler(request: Request, writer: asyncio.StreamWriter) -> bool:
        reset(writer)
        return False

    async with RawServer(handler) as server:
        # Not OSError: TimeoutError is one, and a client that missed the reset would time out.
        with pytest.raises(HttpConnectionClosed, match=r"reset|closed") as info:
            await client.post(server.url(), b"1", {}, timeout=30)
    assert not info.value.response_started and info.value.request_sent
    assert len(server.requests) == 1


async def test_timeout_when_server_never_answers(client: HttpClient) -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
        return None

    async with RawServer(silent) as server:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            await client.post(server.url(), b"1", {}, timeout=0.3)
        elapsed = time.monotonic() - start
        await eventually(lambda: server.client_eofs == 1)  # the connection was closed
    assert 0.25 < elapsed < 10  # the 0.3 s asked for (the server would never answer)


async def test_timeout_covers_a_slow_body(client: HttpClient) -> None:
    async def trickle(request: Request, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab")

    async with RawServer(trickle) as server:
        with pytest.raises(TimeoutError, match="response body"):
            await client.post(server.url(), b"1", {}, timeout=0.2)


async def test_connection_refused_is_an_oserror(client: HttpClient) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once it is closed
    with pytest.raises(HttpConnectError, match=rf"cannot connect to 127\.0\.0\.1:{port}") as info:
        await client.post(yarl.URL(f"http://127.0.0.1:{port}/"), b"1", {}, timeout=2)
    assert isinstance(info.value, OSError)


async def test_a_name_that_does_not_resolve_is_said_so_naming_the_host() -> None:
    # The delivery's error read "connection error: [Errno -2] Name or service not known".
    async def not_found(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    c = HttpClient(resolve=not_found)
    try:
        with pytest.raises(HttpConnectError) as info:
            await c.post(yarl.URL("https://api.acme.invalid/hooks"), b"1", {}, timeout=2)
    finally:
        await c.close()
    assert str(info.value) == "cannot resolve api.acme.invalid: Name or service not known"
    assert isinstance(info.value, OSError)  # retried like any connection error


async def test_addresses_are_tried_in_order() -> None:
    seen: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> list[str]:
        seen.append((host, port))
        return ["127.0.0.2", "127.0.0.1"]  # 127.0.0.2 is loopback too, but nothing listens there

    c = HttpClient(resolve=resolve)
    try:
        async with RawServer(replying(OK)) as server:
            got = await c.post(server.url(host="hooks.example"), b"1", {}, timeout=2)
    finally:
        await c.close()
    assert got.status == 200
    assert seen == [("hooks.example", server.port)]
    assert server.requests[0].head.split(b"\r\n")[1] == f"Host: hooks.example:{server.port}".encode()


async def test_resolver_egress_denial_propagates_unchanged() -> None:
    denied = EgressDenied("10.0.0.1 is private")
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        raise denied

    c = HttpClient(resolve=resolve)
    try:
        with pytest.raises(EgressDenied) as info:
            await c.post(yarl.URL("http://10.0.0.1/x"), b"1", {}, timeout=2)
    finally:
        await c.close()
    assert info.value is denied
    assert calls == ["10.0.0.1"]  # literal IPs go through the resolver too


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"X-Evil": "a\r\nX-Injected: 1"}, id="crlf-in-value"),
        pytest.param({"X-Evil": "a\nb"}, id="lf-in-value"),
        pytest.param({"X-Evil\r\nX-Injected": "1"}, id="crlf-in-name"),
        pytest.param({"Bad Name": "1"}, id="space-in-name"),
        pytest.param({"X-Name": "caf\u00e9 \u2603"}, id="not-latin-1"),
        pytest.param({"Content-Length": "5"}, id="content-length"),
        pytest.param({"transfer-encoding": "chunked"}, id="transfer-encoding"),
    ],
)
async def test_invalid_headers_are_rejected_before_connecting(
    client: HttpClient, headers: dict[str, str]
) -> None:
    async with RawServer(replying(OK)) as server:
        with pytest.raises(ValueError):
            await client.post(server.url(), b"1", headers, timeout=2)
    assert server.connections == 0


async def test_cancelled_request_closes_its_connection(client: HttpClient) -> None:
    async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
        return None

    async with RawServer(silent) as server:
        task = asyncio.create_task(client.post(server.url(), b"1", {}, timeout=5))
        await eventually(lambda: len(server.requests) == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: server.client_eofs == 1)


# -- TLS ----------------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    chain: Path
    key: Path


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "http_client test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Certs(directory / "ca.pem", directory / "chain.pem", directory / "key.pem")
    paths.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.chain.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def server_context(certs: Certs, sni_seen: list[str | None]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certs.chain, certs.key)

    def record_sni(sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        sni_seen.append(name)

    ctx.sni_callback = record_sni
    return ctx


async def test_https_with_trusted_certificate_and_sni(certs: Certs) -> None:
    sni: list[str | None] = []
    trusting = ssl.create_default_context(cafile=str(certs.ca))
    c = HttpClient(resolve=resolve_local, ssl_context=trusting)
    try:
        async with RawServer(replying(OK), ssl_context=server_context(certs, sni)) as server:
            url = server.url(scheme="https", host="localhost")  # resolved to 127.0.0.1
            first = await c.post(url, b"1", {}, timeout=5)
            second = await c.post(url, b"2", {}, timeout=5)
    finally:
        await c.close()
    assert first.excerpt == second.excerpt == b"ok"
    assert sni == ["localhost"]  # verified against the name, connected to the resolved IP
    assert server.connections == 1


async def test_https_default_context_rejects_untrusted_certificate(certs: Certs) -> None:
    c = HttpClient(resolve=resolve_local)
    try:
        async with RawServer(replying(OK), ssl_context=server_context(certs, [])) as server:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                await c.post(server.url(scheme="https", host="localhost"), b"1", {}, timeout=5)
    finally:
        await c.close()
    assert isinstance(info.value, OSError)
    assert server.requests == []


# -- the production event loop ------------------------------------------------------------------


def test_core_paths_under_uvloop(certs: Certs) -> None:
    """The worker runs on uvloop, whose transports differ from asyncio's (not even subclasses)."""

    async def scenario() -> None:
        trusting = ssl.create_default_context(cafile=str(certs.ca))
        c = HttpClient(resolve=resolve_local, ssl_context=trusting, limit_per_host=2)
        try:
            chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            async with RawServer(replying(OK, chunked)) as server:
                results = await asyncio.gather(*(c.post(server.url(), b"x", {}, timeout=2) for _ in range(6)))
                assert {r.excerpt for r in results} == {b"ok"}
                assert server.connections == 2

            async def silent(request: Request, writer: asyncio.StreamWriter) -> None:
                return None

            async with RawServer(silent) as server:
                with pytest.raises(TimeoutError):
                    await c.post(server.url(), b"x", {}, timeout=0.1)

            async with RawServer(replying(OK), ssl_context=server_context(certs, [])) as server:
                got = await c.post(server.url(scheme="https", host="localhost"), b"x", {}, timeout=5)
                assert got.excerpt == b"ok"
        finally:
            await c.close()

    uvloop.run(scenario())
