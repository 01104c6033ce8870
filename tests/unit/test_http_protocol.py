"""ingestlayer.http_protocol on a stub transport: the exact head limit, what the parser is given
of a head past it, and the uvicorn code it carries inlined (checked against uvicorn's own)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import textwrap
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from ingestlayer.config import Settings
from ingestlayer.http_protocol import (
    INVALID_REQUEST,
    InvalidRequestsLog,
    LimitedHttpToolsProtocol,
    http_protocol,
)

LIMIT = 1024


class Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closed = False
        self.eof = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("peername", "sockname") else default

    def write(self, data: Any) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class CountingParser:
    """The protocol's parser, counting the bytes it is given."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data: Any) -> None:
        self.fed += len(data)
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


async def app(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


def connection() -> tuple[LimitedHttpToolsProtocol, Transport]:
    cls = http_protocol(Settings(http_max_header_bytes=LIMIT))
    config = uvicorn.Config(app, http=cls, lifespan="off", log_config=None, access_log=False)
    config.load()
    proto = cls(config=config, server_state=ServerState(), app_state={})
    transport = Transport()
    proto.connection_made(transport)
    return proto, transport


def head_of(size: int) -> bytes:
    start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: "
    return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"


async def answered(transport: Transport) -> bytes:
    for _ in range(20):
        await asyncio.sleep(0)
    return transport.written.split(b"\r\n", 1)[0]


async def test_a_head_of_the_limit_is_read_and_a_byte_more_is_refused() -> None:
    for reads in (1, 7, 100):
        proto, transport = connection()
        head = head_of(LIMIT)
        for i in range(0, len(head), reads):
            proto.data_received(head[i : i + reads])
        assert await answered(transport) == b"HTTP/1.1 200 OK"

        proto, transport = connection()
        head = head_of(LIMIT + 1)
        for i in range(0, len(head), reads):
            proto.data_received(head[i : i + reads])
        assert await answered(transport) == b"HTTP/1.1 431 Request Header Fields Too Large"
        assert transport.eof


async def test_the_parser_is_given_no_more_of_a_head_than_the_limit() -> None:
    proto, transport = connection()
    parser = proto.parser = CountingParser(proto.parser)  # type: ignore[assignment]
    proto.data_received(b"GET / HTTP/1.1\r\nX-Big: ")
    for _ in range(100):
        proto.data_received(b"a" * 500)
    assert parser.fed == LIMIT
    assert await answered(transport) == b"HTTP/1.1 431 Request Header Fields Too Large"


async def test_a_head_pipelined_behind_a_request_is_refused_within_twice_the_limit() -> None:
    proto, transport = connection()
    parser = proto.parser = CountingParser(proto.parser)  # type: ignore[assignment]
    first = head_of(100)
    # One read: a request, and the start of the next one's head (uncounted: the count starts
    # again where the first request ends, which is not known), then more of that head.
    proto.data_received(first + b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (100 * LIMIT))
    for _ in range(100):
        proto.data_received(b"a" * 500)
    assert parser.fed <= len(first) + 2 * LIMIT
    # The first is answered, then the connection closed (a 431 would be in its answer's way).
    assert await answered(transport) == b"HTTP/1.1 200 OK"
    assert transport.closed


async def test_a_body_is_not_counted_and_the_next_head_is() -> None:
    proto, transport = connection()
    body = b"x" * (10 * LIMIT)
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    proto.data_received(request)  # one read, ten times the limit
    assert await answered(transport) == b"HTTP/1.1 200 OK"
    transport.written = b""
    proto.data_received(head_of(LIMIT - 1))  # the next request, on its own read
    assert await answered(transport) == b"HTTP/1.1 200 OK"
    transport.written = b""
    proto.data_received(head_of(LIMIT + 1))
    assert await answered(transport) == b"HTTP/1.1 431 Request Header Fields Too Large"


def _body(source: str) -> list[str]:
    """The statements of a method's source, without its signature, comments or blank lines."""
    lines = textwrap.dedent(source).splitlines()
    start = next(i for i, line in enumerate(lines) if line.rstrip().endswith(":")) + 1
    return [line.strip() for line in lines[start:] if line.strip() and not line.strip().startswith("#")]


def test_the_uvicorn_code_inlined_is_uvicorns() -> None:
    """LimitedHttpToolsProtocol inlines uvicorn's data_received and on_message_complete (a call
    fewer per request): after an upgrade of uvicorn, they must be inlined again."""
    ours = _body(inspect.getsource(LimitedHttpToolsProtocol.data_received))
    theirs = _body(inspect.getsource(HttpToolsProtocol.data_received))
    assert ours[-len(theirs) :] == theirs
    ours = _body(inspect.getsource(LimitedHttpToolsProtocol.on_message_complete))
    theirs = _body(inspect.getsource(HttpToolsProtocol.on_message_complete))
    assert ours[-len(theirs) :] == theirs


def test_the_limits_are_settings_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INGESTLAYER_HTTP_MAX_HEADER_BYTES", "32768")
    monkeypatch.setenv("INGESTLAYER_HTTP_HEADER_TIMEOUT", "10")
    monkeypatch.setenv("INGESTLAYER_HTTP_BODY_TIMEOUT", "20.5")
    monkeypatch.setenv("INGESTLAYER_HTTP_MAX_CONNECTIONS", "500")
    cls = http_protocol(Settings.from_env())
    assert (cls.max_head_bytes, cls.header_timeout, cls.body_timeout, cls.max_connections) == (
        32768,
        10.0,
        20.5,
        500,
    )
    monkeypatch.delenv("INGESTLAYER_HTTP_MAX_CONNECTIONS")
    assert 1 <= Settings.from_env().http_connection_limit <= 50_000  # from the open-file limit


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("INGESTLAYER_HTTP_MAX_HEADER_BYTES", "0"),
        ("INGESTLAYER_HTTP_HEADER_TIMEOUT", "0"),
        ("INGESTLAYER_HTTP_BODY_TIMEOUT", "-1"),
    ],
)
def test_limits_that_would_refuse_every_request_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=rf"^{name} must be at least"):
        Settings.from_env()


def test_requests_that_are_not_http_are_logged_once_every_ten_seconds() -> None:
    now = [100.0]
    quiet = InvalidRequestsLog(monotonic=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, (), None)

    passed = []
    for _ in range(5):  # a burst: one line
        r = record(INVALID_REQUEST)
        if quiet.filter(r):
            passed.append(r.getMessage())
        now[0] += 1.0
    now[0] += 10.0
    r = record(INVALID_REQUEST)
    assert quiet.filter(r)
    passed.append(r.getMessage())
    assert passed == [INVALID_REQUEST, f"{INVALID_REQUEST} (4 more in the 15 s before this one)"]
    assert quiet.filter(record("Shutting down"))  # anything else passes
