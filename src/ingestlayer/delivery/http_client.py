"""A lean asyncio HTTP/1.1 client for the one hot path of the product: outbound webhook POSTs.

aiohttp's client costs ~270 µs of CPU per POST in the delivery worker's profiles, most of its CPU. This client
does only what a webhook POST needs: one ``transport.write`` of head + body on a pooled keep-alive
connection, a C parser (httptools/llhttp) driven from a bare ``asyncio.Protocol``, one future and
one timer per request, and no decompression, redirects, cookies or streaming.

Name resolution is the caller's (``resolve``), because that is where the egress policy lives; the
only DNS "cache" is the fact that a pooled connection stays connected to the address it was opened
to.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import select
import socket
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import cast

import httptools
import yarl

__all__ = ["HttpClient", "HttpConnectError", "HttpConnectionClosed", "HttpProtocolError", "HttpResponse"]

# A body longer than the excerpt is still read (drained), up to this many bytes in all, so the
# connection can be reused; a longer one costs a new connection rather than unbounded reading.
DRAIN_LIMIT = 64 * 1024
# The response's header lines, names and values together: far more than any receiver sends.
MAX_HEADER_BYTES = 64 * 1024

_DEFAULT_PORTS = {"http": 80, "https": 443}
# What an idle keep-alive connection must not have pending: data, the peer's FIN, an error.
_PEER_SPOKE = select.POLLIN | select.POLLRDHUP | select.POLLERR | select.POLLHUP
# Framing headers are ours: a caller's Content-Length / Transfer-Encoding could desynchronise the
# connection (request smuggling). Host may be overridden by the caller (virtual hosting by IP).
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Header names repeat on every delivery; remembering the valid ones keeps validation to a set lookup.
_valid_names: set[str] = set()
_MAX_VALID_NAMES = 4096


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-cased names; last value wins
    excerpt: bytes  # at most `max_excerpt` bytes of the body


class HttpProtocolError(ValueError):
    """The server's bytes are not a valid HTTP/1.x response (or not one we asked for)."""


class HttpConnectError(ConnectionError):
    """No connection could be opened to any resolved address."""


class HttpConnectionClosed(ConnectionError):
    """The connection closed or was reset before the response was complete.

    ``response_started`` tells whether any byte of a response arrived; ``request_sent`` whether
    the request was written. Only a request never written is retried: once written, a server
    that closes without answering may have read it and acted on it (a receiver that processes a
    webhook and then drops the connection), and a second copy would be a send the attempt log
    does not show.
    """

    def __init__(self, message: str, *, response_started: bool, request_sent: bool = True) -> None:
        super().__init__(message)
        self.response_started = response_started
        self.request_sent = request_sent


def _check_header(name: str, value: str) -> None:
    if name not in _valid_names:
        if not name or not _TOKEN_CHARS.issuperset(name):
            raise ValueError(f"invalid header name {name!r}")
        if name.lower() in _FRAMING_HEADERS:
            raise ValueError(f"header {name!r} is set by the client from the body")
        if len(_valid_names) >= _MAX_VALID_NAMES:
            _valid_names.clear()
        _valid_names.add(name)
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValueError(f"header {name!r} has a value containing CR, LF or NUL")


def _basic_auth(url: yarl.URL) -> str:
    try:
        credentials = f"{url.user or ''}:{url.password or ''}".encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("URL credentials are not latin-1 encodable") from None
    return "Basic " + base64.b64encode(credentials).decode("ascii")


def _build_head(url: yarl.URL, body_len: int, headers: Mapping[str, str]) -> bytes:
    host_header: str | None = url.host_port_subcomponent
    lines = [f"POST {url.raw_path_qs or '/'} HTTP/1.1\r\n"]
    for name, value in headers.items():
        _check_header(name, value)
        if host_header is not None and len(name) == 4 and name.lower() == "host":
            host_header = None  # the caller's Host wins
        lines.append(f"{name}: {value}\r\n")
    if host_header is not None:
        lines.insert(1, f"Host: {host_header}\r\n")
    if url.raw_user is not None and not any(name.lower() == "authorization" for name in headers):
        lines.append(f"Authorization: {_basic_auth(url)}\r\n")  # as aiohttp does for user:pass@ URLs
    lines.append(f"Content-Length: {body_len}\r\n\r\n")
    try:
        return "".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"request head is not latin-1 encodable: {exc}") from None


class _Connection(asyncio.Protocol):
    """One keep-alive connection; at most one request in flight, completed from the callbacks."""

    __slots__ = (
        "_body_len",
        "_drain_limit",
        "_eof_body",
        "_excerpt",
        "_header_bytes",
        "_headers",
        "_headers_done",
        "_interim",
        "_loop",
        "_max_excerpt",
        "_parser",
        "_pool",
        "_received",
        "_status",
        "_timer",
        "_transport",
        "_waiter",
        "closed",
        "idle_since",
        "reusable",
    )

    def __init__(self, pool: _Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[HttpResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._status = 0
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._excerpt = bytearray()
        self._max_excerpt = 0
        self._drain_limit = DRAIN_LIMIT
        self._body_len = 0
        self._received = False
        self._headers_done = False
        self._interim = False
        self._eof_body = False
        self.closed = False
        self.reusable = False
        self.idle_since = 0.0

    # -- driven by HttpClient -------------------------------------------------------------------

    def itself(self) -> _Connection:
        """The protocol factory for create_connection: the instance exists before it connects."""
        return self

    def start(self, data: bytes, deadline: float, max_excerpt: int) -> asyncio.Future[HttpResponse]:
        waiter: asyncio.Future[HttpResponse] = self._loop.create_future()
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            waiter.set_exception(
                HttpConnectionClosed(
                    "connection closed before the request was sent",
                    response_started=False,
                    request_sent=False,
                )
            )
            return waiter
        self._waiter = waiter
        self._status = 0
        self._headers = {}
        self._excerpt = bytearray()
        self._max_excerpt = max_excerpt
        self._drain_limit = max(DRAIN_LIMIT, max_excerpt)
        self._body_len = 0
        self._received = False
        self._headers_done = False
        self._interim = False
        self._eof_body = False
        self.reusable = False
        self._timer = self._loop.call_at(deadline, self._on_timeout)
        transport.write(data)
        return waiter

    def peer_has_spoken(self) -> bool:
        """Whether an idle connection has something to read that the event loop has not handled
        yet: the server's FIN (it closed the connection while idle), a reset, a TLS alert or
        stray bytes. Such a connection is not reused: a request written on it would be lost
        or answered out of step. One poll(2), no read: the loop still sees what arrived."""
        transport = self._transport
        if self.closed or transport is None or transport.is_closing():
            return True
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            fd = sock.fileno()
        except (OSError, ValueError):
            return True
        if fd < 0:
            return True
        poller = select.poll()
        poller.register(fd, _PEER_SPOKE)
        return bool(poller.poll(0))

    def abort(self) -> None:
        """Close at once (no flush, no TLS close_notify): the connection is in an unknown state."""
        self.reusable = False
        transport = self._transport
        if transport is not None and not self.closed and not transport.is_closing():
            transport.abort()

    # -- request completion ---------------------------------------------------------------------

    def _finish(self, reusable: bool) -> None:
        waiter = self._waiter
        self._waiter = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reusable = reusable and not self.closed
        if waiter is not None and not waiter.done():
            waiter.set_result(HttpResponse(self._status, self._headers, bytes(self._excerpt)))

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        self._waiter = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.reusable = False
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _on_timeout(self) -> None:
        self._timer = None
        phase = "the response body" if self._headers_done else "the response status and headers"
        self._fail(TimeoutError(f"deadline expired while waiting for {phase}"))
        self.abort()

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not subclass asyncio.Transport.
        self._transport = cast(asyncio.Transport, transport)
        sock = self._transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Head and body go out in one write and the reply must not wait for delayed ACKs.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes while no request is in flight: the stream is out of step; never reuse it.
            self.abort()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpProtocolError(f"unexpected protocol switch (HTTP {self._status})"))
            self.abort()
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, HttpProtocolError):  # raised by a callback of ours
                self._fail(exc.__context__)
            else:
                self._fail(HttpProtocolError(f"malformed HTTP response: {exc.__context__ or exc}"))
            self.abort()

    def eof_received(self) -> bool | None:
        return None  # close our side too; connection_lost settles the request

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._waiter is not None:
            if exc is None and self._headers_done and self._eof_body:
                self._finish(reusable=False)  # a close-delimited body ends here
            else:
                self._fail(self._closed_error(exc))
        self._pool.connection_closed(self)

    def _closed_error(self, exc: Exception | None) -> HttpConnectionClosed:
        how = f"reset ({exc})" if exc is not None else "closed by the server"
        if not self._received:
            where = "before any response"
        elif not self._headers_done:
            where = "in the middle of the response headers"
        else:
            where = f"in the middle of the response body (after {self._body_len} bytes)"
        err = HttpConnectionClosed(f"connection {how} {where}", response_started=self._received)
        err.__cause__ = exc
        return err

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._headers = {}  # fresh per message: the previous dict may belong to a returned response
        self._header_bytes = 0
        if self._waiter is None:
            self.abort()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            # A receiver (any tenant's URL) could otherwise grow the worker's memory at will.
            raise HttpProtocolError(f"the response headers exceed {MAX_HEADER_BYTES // 1024} KiB")
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        self._status = status
        if status < 200:
            self._interim = True  # 1xx: the final response follows on the same connection
            return
        self._headers_done = True
        headers = self._headers
        te = headers.get("transfer-encoding")
        if te is not None:
            self._eof_body = not te.rstrip().lower().endswith("chunked")
        else:
            self._eof_body = "content-length" not in headers

    def on_body(self, body: bytes) -> None:
        if self._waiter is None:
            return
        room = self._max_excerpt - len(self._excerpt)
        if room > 0:
            self._excerpt += body[:room] if len(body) > room else body
        self._body_len += len(body)
        if self._body_len > self._drain_limit:
            # The caller has its excerpt; reading on would be unbounded. Give up the connection.
            self._finish(reusable=False)
            self.abort()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            self._status = 0
            return
        if self._waiter is not None:
            self._finish(reusable=self._parser.should_keep_alive())


class _Pool:
    """Connections to one (scheme, host, port): idle ones in a LIFO stack, a FIFO of waiters.

    ``open`` counts connections that exist or are being opened. When a slot frees up while callers
    wait, it passes to the first of them (result ``None``: "open your own"); a released reusable
    connection passes to a waiter directly.
    """

    __slots__ = ("client", "conns", "idle", "key", "open", "waiters")

    def __init__(self, client: HttpClient, key: tuple[str, str, int]) -> None:
        self.client = client
        self.key = key
        self.conns: set[_Connection] = set()  # connected ones, busy or idle
        self.idle: list[_Connection] = []  # oldest first
        self.open = 0
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()

    def release(self, conn: _Connection, now: float) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        conn.idle_since = now
        self.idle.append(conn)
        self.client._idle_added(now)

    def free_slot(self) -> None:
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.open -= 1
        if self.open <= 0:
            self.client._forget_pool(self)

    def connection_closed(self, conn: _Connection) -> None:
        # Only connections handed out by _connect hold a slot (a failed connect frees its own).
        if conn in self.conns:
            self.conns.discard(conn)
            if conn in self.idle:
                self.idle.remove(conn)
            self.free_slot()


class HttpClient:
    """Keep-alive HTTP/1.1 POST client for webhook delivery.

    ``resolve(host, port)`` returns the addresses to try, in order; it enforces the egress policy
    and its exceptions propagate unchanged. ``timeout`` on ``post`` is a total deadline.
    """

    def __init__(
        self,
        *,
        resolve: Callable[[str, int], Awaitable[list[str]]],
        limit_per_host: int = 128,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout: float = 30.0,
    ) -> None:
        if limit_per_host < 1:
            raise ValueError("limit_per_host must be at least 1")
        self._resolve = resolve
        self._limit = limit_per_host
        self._ssl_context = ssl_context
        self._idle_timeout = idle_timeout
        self._pools: dict[tuple[str, str, int], _Pool] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def post(
        self,
        url: yarl.URL,
        body: bytes,
        headers: Mapping[str, str],
        *,
        timeout: float,
        max_excerpt: int = 1024,
    ) -> HttpResponse:
        if self._closed:
            raise RuntimeError("HttpClient is closed")
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        scheme = url.scheme
        host = url.raw_host
        if scheme not in _DEFAULT_PORTS or not host:
            raise ValueError(f"cannot POST to {url!s}: need an absolute http(s) URL")
        port = url.port or _DEFAULT_PORTS[scheme]
        # Validated and encoded before any connection is touched: a bad header sends nothing.
        data = _build_head(url, len(body), headers) + body

        key = (scheme, host, port)
        pool = self._pools.get(key) or self._new_pool(key)
        conn, reused = await self._acquire(pool, deadline, loop, allow_idle=True)
        try:
            return await self._send(pool, conn, data, deadline, max_excerpt, loop)
        except HttpConnectionClosed as exc:
            if not reused or exc.request_sent or self._closed:
                raise
        # A keep-alive connection from the pool closed before the request was written: retry
        # once, on a fresh connection (other idle ones may be just as stale). A request that was
        # written is never sent again here (see HttpConnectionClosed); idle connections the
        # server has closed are left out before use (_Connection.peer_has_spoken).
        pool = self._pools.get(key) or self._new_pool(key)
        conn, _ = await self._acquire(pool, deadline, loop, allow_idle=False)
        return await self._send(pool, conn, data, deadline, max_excerpt, loop)

    async def close(self) -> None:
        """Close every connection; requests in flight fail with HttpConnectionClosed."""
        self._closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        conns: list[_Connection] = []
        for pool in list(self._pools.values()):
            conns.extend(pool.conns)
            while pool.waiters:
                waiter = pool.waiters.popleft()
                if not waiter.done():
                    waiter.set_exception(HttpConnectionClosed("client closed", response_started=False))
        for conn in conns:
            conn.abort()
        # abort() reports connection_lost on a later loop iteration (two for TLS): wait for it so
        # the sockets are gone when close() returns.
        for _ in range(8):
            if all(conn.closed for conn in conns):
                break
            await asyncio.sleep(0)

    # -- internals ------------------------------------------------------------------------------

    def _new_pool(self, key: tuple[str, str, int]) -> _Pool:
        pool = self._pools[key] = _Pool(self, key)
        return pool

    async def _send(
        self,
        pool: _Pool,
        conn: _Connection,
        data: bytes,
        deadline: float,
        max_excerpt: int,
        loop: asyncio.AbstractEventLoop,
    ) -> HttpResponse:
        waiter = conn.start(data, deadline, max_excerpt)
        try:
            response = await waiter
        except BaseException:
            conn.abort()  # timed out, cancelled or broken: its state is unknown
            raise
        if conn.reusable and not self._closed and self._idle_timeout > 0:
            pool.release(conn, loop.time())
        else:
            conn.abort()
        return response

    async def _acquire(
        self, pool: _Pool, deadline: float, loop: asyncio.AbstractEventLoop, *, allow_idle: bool
    ) -> tuple[_Connection, bool]:
        """A connection for one request, and whether it was reused from the pool."""
        idle = pool.idle
        while allow_idle and idle:
            conn = idle.pop()
            if conn.idle_since <= loop.time() - self._idle_timeout:
                # The newest is too old, so all are: closing them frees their slots.
                stale = [conn, *idle]
                idle.clear()
                for conn in stale:
                    conn.abort()
                break
            if not conn.peer_has_spoken():
                return conn, True
            conn.abort()  # closed by the server while idle: try the next one
        if pool.open < self._limit:
            pool.open += 1
        else:
            waiter: asyncio.Future[_Connection | None] = loop.create_future()
            pool.waiters.append(waiter)
            timer = loop.call_at(deadline, _expire_waiter, waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter in pool.waiters:
                    pool.waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    # Handed a connection or a slot just as we gave up: pass it on.
                    got = waiter.result()
                    if got is None:
                        pool.free_slot()
                    else:
                        pool.release(got, loop.time())
                raise
            finally:
                timer.cancel()
            if handed is not None:
                if loop.time() >= deadline:
                    pool.release(handed, loop.time())
                    raise TimeoutError("deadline expired while waiting for a free connection")
                return handed, True
        try:
            conn = await self._connect(pool, deadline, loop)
        except BaseException:
            pool.free_slot()
            raise
        pool.conns.add(conn)
        if self._closed or conn.closed:
            conn.abort()
            if conn.closed:  # connection_lost already ran, before the pool knew the connection
                pool.connection_closed(conn)
            raise HttpConnectionClosed(
                "client closed" if self._closed else "connection closed right after connecting",
                response_started=False,
            )
        return conn, False

    async def _connect(self, pool: _Pool, deadline: float, loop: asyncio.AbstractEventLoop) -> _Connection:
        scheme, host, port = pool.key
        ssl_context: ssl.SSLContext | None = None
        if scheme == "https":
            ssl_context = self._ssl_context
            if ssl_context is None:
                ssl_context = self._ssl_context = ssl.create_default_context()
        async with asyncio.timeout_at(deadline):
            try:
                addresses = await self._resolve(host, port)
            except socket.gaierror as exc:
                # Said as a name not found, not "[Errno -2] Name or service not known" bare: the
                # delivery's error then names the host whose name did not resolve.
                raise HttpConnectError(f"cannot resolve {host}: {exc.strerror or exc}") from exc
            if not addresses:
                raise HttpConnectError(f"cannot connect to {host}:{port}: no addresses to connect to")
            errors: list[str] = []
            last: OSError | None = None
            for address in addresses:
                conn = _Connection(pool, loop)
                try:
                    if ssl_context is None:
                        await loop.create_connection(conn.itself, address, port)
                    else:
                        await loop.create_connection(
                            conn.itself, address, port, ssl=ssl_context, server_hostname=host
                        )
                except ssl.SSLError:
                    raise  # certificate/handshake failure: the host's identity, not this address
                except OSError as exc:
                    last = exc
                    errors.append(f"{address}: {exc.strerror or exc}")
                    continue
                return conn
        raise HttpConnectError(f"cannot connect to {host}:{port} ({'; '.join(errors)})") from last

    def _idle_added(self, now: float) -> None:
        if self._sweep_handle is None and self._loop is not None:
            self._sweep_handle = self._loop.call_at(now + self._idle_timeout, self._sweep)

    def _sweep(self) -> None:
        """Close connections idle longer than idle_timeout, even for hosts no longer posted to."""
        self._sweep_handle = None
        assert self._loop is not None
        now = self._loop.time()
        cutoff = now - self._idle_timeout
        oldest: float | None = None
        for pool in list(self._pools.values()):
            idle = pool.idle
            while idle and idle[0].idle_since <= cutoff:
                idle.pop(0).abort()
            if idle and (oldest is None or idle[0].idle_since < oldest):
                oldest = idle[0].idle_since
        if oldest is not None:
            self._sweep_handle = self._loop.call_at(oldest + self._idle_timeout, self._sweep)

    def _forget_pool(self, pool: _Pool) -> None:
        if self._pools.get(pool.key) is pool:
            del self._pools[pool.key]


def _expire_waiter(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError("deadline expired while waiting for a free connection"))
