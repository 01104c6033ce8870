"""uvicorn's httptools protocol, held to a size and a time limit on what a client sends.

uvicorn (0.54, httptools) sets no limit on a request's head and no timeout before a response:
a 40 MB header was parsed (quadratically: httptools grows each header value with ``+=``) and
stalled every other client, and a connection that sent nothing, or a head or a body a byte at a
time, stayed open for good. :class:`LimitedHttpToolsProtocol` changes only that:

- A request's head (request line and headers) longer than ``max_head_bytes`` is answered
  ``431`` (``414`` when it is the request target that is too long) in the API's error shape,
  with ``connection: close``; the parser never sees more of it than the limit. The bytes are
  counted from where the head begins; a head that begins in the same read as the end of the
  request before it (pipelining) is counted from the end of that read, and a read is fed to
  the parser a limit's worth at a time, so the parser may see up to twice the limit of such a
  head before it is refused.
- A head not complete ``header_timeout`` seconds after it began (the first request's: after the
  connection opened) is answered ``408``; a connection that has sent nothing by then is closed.
- A body that makes no progress for ``body_timeout`` seconds is answered ``408`` (the
  application reading it sees the client go away). Not while uvicorn has paused reading (the
  application is slow to read, not the client to send) or the client awaits ``100 Continue``.
- Past ``max_connections`` open connections, a new one is answered ``503`` and closed.

Nothing else changes: keep-alive (uvicorn's ``timeout_keep_alive`` between requests),
pipelining, flow control, graceful shutdown, and what the application answers; only how its
answers reach the socket (:mod:`ingestlayer.http_cycle`: a response in one write, the
responses finished in a turn of the event loop written together at its end).

Cost: a request adds an attribute store and a few comparisons in ``data_received`` and two
stores in ``on_message_complete``; no timer is created per request or connection. One sweep per
server (every second, or a quarter of the shorter timeout) closes the connections past their
deadlines; it stamps the heads that began since the last sweep, so a deadline is met within one
sweep interval. After an answer of its own the protocol half-closes the connection and drops
what the client still sends for up to ``LINGER_SECONDS``: closed at once over unread bytes, the
connection would be reset and the client could lose the answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Callable
from typing import ClassVar

import httptools
from uvicorn._types import ASGI3Application
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from ingestlayer.config import Settings
from ingestlayer.http_cycle import HeldTransport, OneWriteCycle, TurnWrites

log = logging.getLogger("ingestlayer.http")

# How long a connection answered by this module (or refused) may go on sending before it is
# closed, so the client can read the answer (nginx's lingering_timeout is 5 s).
LINGER_SECONDS = 2.0
# The longest and shortest time between two sweeps.
MAX_SWEEP_INTERVAL = 1.0
MIN_SWEEP_INTERVAL = 0.05
# Refused connections are logged at most this often, with their count.
REFUSED_LOG_INTERVAL = 10.0
# A head that overflows with no header complete and its request target within this many bytes
# of all it counted (the method, a space) overflowed in the target: 414, not 431.
TARGET_SLACK = 64

# _head_room once answered (or refused): every read goes to _past_head_limit, which drops it.
_DISCARD = -(1 << 62)
_UNSTAMPED = -1.0  # _head_since until a sweep sees the head begun

# uvicorn's, for the parts of a read (the parser takes any buffer).
_feed: Callable[[HttpToolsProtocol, bytes | memoryview], None] = HttpToolsProtocol.data_received  # type: ignore[assignment]


def _error(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


def _answers(max_head_bytes: int) -> dict[str, tuple[int, bytes, bytes]]:
    return {
        "head": (
            431,
            _error("headers_too_large", f"the request's headers exceed {max_head_bytes} bytes"),
            b"",
        ),
        "target": (414, _error("uri_too_long", f"the request target exceeds {max_head_bytes} bytes"), b""),
        "head_timeout": (408, _error("request_timeout", "the request's headers took too long"), b""),
        "body_timeout": (408, _error("request_timeout", "the request body stopped arriving"), b""),
        # What uvicorn answers in plain text to bytes that are not an HTTP/1.1 request.
        "invalid": (400, _error("bad_request", "the request is not valid HTTP/1.1"), b""),
        "refused": (
            503,
            _error("unavailable", "the server has as many connections open as it allows; retry shortly"),
            b"retry-after: 1\r\n",
        ),
    }


class _Sweeper:
    """Checks a server's connections against their deadlines every ``interval`` seconds, while
    it has any (started again by the next connection)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, state: ServerState, interval: float) -> None:
        self.loop = loop
        self.connections = state.connections
        self.interval = interval
        self.refused = 0
        self._refused_logged = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._handle is None:
            self._handle = self.loop.call_later(self.interval, self._sweep)

    def _sweep(self) -> None:
        self._handle = None
        now = self.loop.time()
        try:
            for conn in list(self.connections):
                if isinstance(conn, LimitedHttpToolsProtocol):  # not a WebSocket, after an upgrade
                    try:
                        conn.check_deadlines(now)
                    except Exception:  # one connection's surprise must not end every deadline
                        log.exception("checking an HTTP connection's deadlines failed")
            if self.refused and now - self._refused_logged >= REFUSED_LOG_INTERVAL:
                self._refused_logged = now
                log.warning(
                    "refused %d HTTP connection(s): the server had as many open as it allows "
                    "(INGESTLAYER_HTTP_MAX_CONNECTIONS)",
                    self.refused,
                )
                self.refused = 0
        finally:
            if self.connections:
                self.start()


_SWEEPERS: weakref.WeakKeyDictionary[ServerState, _Sweeper] = weakref.WeakKeyDictionary()
_TURN_WRITES: weakref.WeakKeyDictionary[ServerState, TurnWrites] = weakref.WeakKeyDictionary()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """See the module's docstring. :func:`http_protocol` makes one with the settings' limits."""

    # Slots, not the instance's dict: uvicorn's protocol keeps 28 attributes there, and past 30
    # CPython 3.11 stops sharing the dict's keys, which slowed every attribute uvicorn reads (a
    # request cost 300 ns more).
    __slots__ = (
        "_body_seen",
        "_head_room",
        "_head_since",
        "_linger_until",
        "_max_head",
        "_refused",
        "_restarts",
        "_restarts_seen",
        "_room_seen",
        "_seen_cycle",
        "_sweeper",
        "_turn",
    )

    max_head_bytes: ClassVar[int] = 64 * 1024
    header_timeout: ClassVar[float] = 30.0
    body_timeout: ClassVar[float] = 60.0
    max_connections: ClassVar[int] = 10_000
    answers: ClassVar[dict[str, tuple[int, bytes, bytes]]] = _answers(64 * 1024)

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, object],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._max_head = self.max_head_bytes
        # What the next head may still take: the limit, less every byte received since the
        # connection opened or the last request ended. Those are the head's until they run
        # into its body, which is only looked into when a read would take this below 0; in a
        # body, counted again from there (_restarts).
        self._head_room = self._max_head
        self._restarts = 0
        # When the head being received began: when the connection opened (the first request),
        # when a sweep first saw it begun (a later one; _UNSTAMPED until then).
        self._head_since = _UNSTAMPED
        # The request, _head_room and _restarts when a sweep last saw a body progress, and when.
        self._seen_cycle: RequestResponseCycle | None = None
        self._room_seen = 0
        self._restarts_seen = 0
        self._body_seen = 0.0
        self._linger_until: float | None = None
        self._refused = False
        sweeper = _SWEEPERS.get(server_state)
        if sweeper is None:
            shortest = min(self.header_timeout, self.body_timeout) / 4
            interval = max(MIN_SWEEP_INTERVAL, min(MAX_SWEEP_INTERVAL, shortest))
            sweeper = _SWEEPERS[server_state] = _Sweeper(self.loop, server_state, interval)
        self._sweeper = sweeper
        turn = _TURN_WRITES.get(server_state)
        if turn is None or turn.loop is not self.loop:
            turn = _TURN_WRITES[server_state] = TurnWrites(self.loop)
        self._turn = turn

    # uvicorn's callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        over = len(self.connections) >= self.max_connections
        super().connection_made(HeldTransport(transport, self._turn))
        self._sweeper.start()
        if over:
            # Answered at its first read, once the request has been read (closed over unread
            # bytes, the connection would be reset before the client read the answer), or
            # closed after LINGER_SECONDS.
            self._refused = True
            self._head_room = _DISCARD
            self._linger_until = self.loop.time() + LINGER_SECONDS
            self._sweeper.refused += 1
        else:
            self._head_since = self.loop.time()

    def data_received(self, data: bytes) -> None:
        room = self._head_room - len(data)
        self._head_room = room
        if room < 0:
            self._past_head_limit(data, room + len(data))
            return
        # uvicorn's data_received (0.54.0; tests/unit/test_http_protocol.py checks it is the
        # same), inlined: calling it cost a request 50 ns more.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # Every request's cycle, the first on a connection and pipelined ones alike, passes here
        # before its task runs: it becomes a OneWriteCycle (the same object and state; only
        # ``send`` differs), rather than inlining uvicorn's on_headers_complete to create one.
        if type(cycle) is RequestResponseCycle:
            cycle.__class__ = OneWriteCycle
        super()._start_asgi_task(cycle, app)

    def eof_received(self) -> bool | None:  # type: ignore[override]  # asyncio.Protocol's type
        """The client sends no more (it half-closed). A request it sent whole and is not yet
        answered is answered, and the connection closed after it: uvicorn closed at once, and
        an event posted by a client that half-closes after its request (``nc -N``, some HTTP/1.0
        clients) was stored and never acknowledged. Otherwise the transport closes after this,
        the responses held for the end of the loop's turn going out first."""
        cycle = self.cycle
        if (
            cycle is not None
            and not cycle.response_complete
            and not cycle.more_body
            and self._linger_until is None
        ):
            cycle.keep_alive = False
            return True  # keep the sending side open; nothing more is read
        transport = self.transport
        if isinstance(transport, HeldTransport):
            transport.release()
        return None

    def on_message_complete(self) -> None:
        # What follows is the next request's head. (The rest of the read that ended this
        # request, a limit's worth at most, is not counted: a head begun in it is counted from
        # the next read.)
        self._head_room = self._max_head
        self._head_since = _UNSTAMPED
        # uvicorn's on_message_complete (0.54.0, checked like data_received), inlined.
        if (self.parser.should_upgrade() and self._should_upgrade()) or self.cycle.response_complete:
            return
        self.cycle.more_body = False
        self.cycle.message_event.set()

    # Where the parser is (uvicorn makes a scope when a request begins, and a cycle for it
    # once its head is complete)

    def expecting_head(self) -> bool:
        """Whether the parser's next bytes belong to a head: one being received, or the next
        (the last request has ended)."""
        cycle = self.cycle
        return cycle is None or cycle.scope is not self.scope or not cycle.more_body

    # Head size

    def _past_head_limit(self, data: bytes | memoryview, room: int) -> None:
        """``data`` would take the count past the limit, with ``room`` left before it."""
        if room < 0:  # _DISCARD
            self._head_room = _DISCARD
            if self._refused and not self.transport.is_closing():
                self._refused = False
                self._answer("refused")
            return
        # The parser takes what the limit leaves, then it is seen where that ended.
        view = memoryview(data)
        self._head_room = 0
        if room > 0:
            _feed(self, view[:room])
            if self.transport.is_closing() or self not in self.connections:
                return  # a parse error (answered 400 by uvicorn), or upgraded to a WebSocket
        if self._head_room == 0:  # no request ended in it
            if self.expecting_head():
                self._head_too_large()
                return
            # It ended in a body: counted again from there. (A body is fed to the parser a
            # limit's worth at a time, so a head begun in it is counted from that far at most.)
            self._head_room = self._max_head
            self._restarts += 1
        if len(view) > room:
            self.data_received(view[room:])  # type: ignore[arg-type]

    def _head_too_large(self) -> None:
        url: bytes = getattr(self, "url", b"")  # set when a request begins
        which = "target" if not self.headers and len(url) + TARGET_SLACK >= self._max_head else "head"
        log.debug("refused a request whose %s passed %d bytes", which, self._max_head)
        self._head_room = _DISCARD
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # Answers to earlier (pipelined) requests are on their way: the connection closes
            # after them, and nothing more is read.
            cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self._answer(which)

    # Deadlines (the sweep)

    def check_deadlines(self, now: float) -> None:
        if self.transport.is_closing():
            return
        if self._linger_until is not None:
            if now >= self._linger_until:
                self.transport.close()
            return
        room = self._head_room
        if room < 0:
            return  # refused a head: closed once the answers before it are sent
        cycle = self.cycle
        if cycle is None or cycle.scope is not self.scope:
            # A head is being received: the first request's (timed from the connection's
            # start), or a later one's, begun and not complete.
            since = self._head_since
            if since == _UNSTAMPED:
                self._head_since = now
            elif now - since >= self.header_timeout:
                self._head_timed_out()
            return
        if cycle.response_complete or not cycle.more_body:
            return  # no body being received (or none that anyone reads)
        if (
            room != self._room_seen
            or self._restarts != self._restarts_seen
            or cycle is not self._seen_cycle
            or self.pipeline
            or self.flow.read_paused
            or cycle.waiting_for_100_continue
        ):
            # It progressed (or is another request's), or is not the client's to send yet:
            # queued behind another request, read no further until the application reads,
            # waiting for "100 Continue".
            self._seen_cycle = cycle
            self._room_seen = room
            self._restarts_seen = self._restarts
            self._body_seen = now
        elif now - self._body_seen >= self.body_timeout:
            self._body_timed_out()

    def _head_timed_out(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # an answer to an earlier request is on its way: checked again after it
        log.debug("closed a connection whose request head took over %s s", self.header_timeout)
        if self.scope is None:  # nothing received: no request to answer
            self.transport.close()
        else:
            self._answer("head_timeout")

    def _body_timed_out(self) -> None:
        cycle = self.cycle
        log.debug("closed a connection whose request body made no progress for %s s", self.body_timeout)
        # The application reading the body sees the client go away, and what it sends is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
        else:
            self._answer("body_timeout")

    # Answers of its own

    def send_400_response(self, msg: str) -> None:
        """A request that is not HTTP, answered in the project's error shape (uvicorn: plain
        text, and the connection closed at once, over what the client may still be sending)."""
        self._answer("invalid")

    def _answering_head(self) -> bool:
        """Whether the request answered is a HEAD, whose answer is its head alone (RFC 9110
        9.3.2): the error's body after a 414 to a HEAD was taken by clients for the start of
        another answer (aiohttp: "Data after `Connection: close`")."""
        # The parser has read the method once the target began (uvicorn resets the url as each
        # request begins); before that, its method is the last request's, or none.
        return bool(getattr(self, "url", b"")) and self.parser.get_method() == b"HEAD"

    def _answer(self, which: str) -> None:
        """Answer, half-close, and drop what the client still sends, for LINGER_SECONDS."""
        status, body, extra = self.answers[which]
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content += (name, b": ", value, b"\r\n")
        content += (
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            extra,
            b"connection: close\r\n\r\n",
        )
        if not self._answering_head():
            content.append(body)
        self.transport.write(b"".join(content))
        self._linger()

    def close_after_answer(self) -> None:
        """The application answered with ``connection: close`` (a 413 for a body over the limit,
        a 405): over a body still arriving, lingered rather than closed. Closed at once, the
        kernel answered the client's next bytes with a reset, and a client that sends its whole
        body before it reads (Python's urllib and requests) got ``Connection reset by peer``
        instead of the answer, and an SDK retried it."""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and self._linger_until is None:
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        """Half-close, and drop what the client still sends for LINGER_SECONDS (closed sooner
        if the client closes its side). Requests pipelined behind the answer are dropped too:
        the transport is not closing, and uvicorn would run the next one, whose effects would
        stand and whose answer would go nowhere (the client, told ``connection: close``, sends
        it again)."""
        self.pipeline.clear()
        self._head_room = _DISCARD
        self._linger_until = self.loop.time() + LINGER_SECONDS
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        else:
            self.transport.close()


INVALID_REQUEST = "Invalid HTTP request received."  # uvicorn's warning, one per such request
INVALID_REQUEST_EVERY = 10.0


class InvalidRequestsLog(logging.Filter):
    """uvicorn logs a warning for every request that is not HTTP, and anyone can send those:
    one line every INVALID_REQUEST_EVERY seconds, saying how many came since the last."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._monotonic = monotonic
        self._last = -INVALID_REQUEST_EVERY
        self._held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != INVALID_REQUEST:
            return True
        now = self._monotonic()
        if now - self._last < INVALID_REQUEST_EVERY:
            self._held += 1
            return False
        if self._held:
            record.msg = (
                f"{INVALID_REQUEST} ({self._held} more in the {now - self._last:.0f} s before this one)"
            )
        self._last, self._held = now, 0
        return True


def _quiet_invalid_requests() -> None:
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, InvalidRequestsLog) for f in uvicorn_log.filters):
        uvicorn_log.addFilter(InvalidRequestsLog())


def http_protocol(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class for ``uvicorn.Config(http=...)``, with ``settings``' limits."""
    _quiet_invalid_requests()

    class Protocol(LimitedHttpToolsProtocol):
        __slots__ = ()
        max_head_bytes = settings.http_max_header_bytes
        header_timeout = settings.http_header_timeout
        body_timeout = settings.http_body_timeout
        max_connections = settings.http_connection_limit
        answers = _answers(settings.http_max_header_bytes)

    return Protocol
