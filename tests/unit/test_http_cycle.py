"""ingestlayer.http_cycle through the server's protocol, on a stub transport that records every
call: a response is one write, the responses finished in a turn of the loop are written at its
end, and nothing held is lost or reordered by a close, a half-close, a stream or an answer of
the protocol's own."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.protocols.http.httptools_impl import RequestResponseCycle
from uvicorn.server import ServerState

from ingestlayer.config import Settings
from ingestlayer.http_cycle import HeldTransport, TurnWrites
from ingestlayer.http_protocol import LimitedHttpToolsProtocol, http_protocol

App = Callable[[Any, Any, Any], Awaitable[None]]


class Transport(asyncio.Transport):
    """Records what is done to it, in order: ("write", bytes), ("close",), ("eof",)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, ...]] = []
        self.closed = False
        self.refuse = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("peername", "sockname") else default

    def write(self, data: Any) -> None:
        assert not self.closed, "written after close"
        if self.refuse:
            raise RuntimeError("Cannot call write() after write_eof()")  # as asyncio's does
        self.calls.append(("write", bytes(data)))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True
        self.calls.append(("close",))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.calls.append(("eof",))

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def writes(self) -> list[bytes]:
        return [c[1] for c in self.calls if c[0] == "write"]


def serve(app: App, state: ServerState | None = None) -> tuple[LimitedHttpToolsProtocol, Transport]:
    cls = http_protocol(Settings())
    config = uvicorn.Config(app, http=cls, lifespan="off", log_config=None, access_log=False)
    config.load()
    proto = cls(config=config, server_state=state or ServerState(), app_state={})
    transport = Transport()
    proto.connection_made(transport)
    return proto, transport


async def turns(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def request(path: str = "/", extra: bytes = b"") -> bytes:
    return b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


async def fixed(scope: Any, receive: Any, send: Any, body: bytes = b'{"ok":true}') -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 202,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def test_a_response_of_known_length_is_one_write_of_its_head_and_body() -> None:
    proto, transport = serve(fixed)
    proto.data_received(request())
    await turns()
    [written] = transport.writes()
    assert written.startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert written.endswith(b'content-length: 11\r\n\r\n{"ok":true}')
    assert not transport.closed  # kept alive


async def test_the_responses_finished_in_a_turn_are_written_at_its_end_in_order() -> None:
    state = ServerState()
    connections = [serve(fixed, state) for _ in range(3)]
    for proto, _ in connections:
        proto.data_received(request())
    await asyncio.sleep(0)  # the three requests' tasks run in this turn and finish
    assert all(t.writes() == [] for _, t in connections)  # held until the turn ends
    await turns()
    assert all(len(t.writes()) == 1 for _, t in connections)


async def test_a_transport_refusing_a_write_holds_back_no_other_connection() -> None:
    state = ServerState()
    connections = [serve(fixed, state) for _ in range(3)]
    connections[0][1].refuse = True
    for proto, _ in connections:
        proto.data_received(request())
    await turns()
    assert [len(t.writes()) for _, t in connections] == [0, 1, 1]
    # And the next turn's answers are written too.
    for proto, _ in connections[1:]:
        proto.data_received(request())
    await turns()
    assert [len(t.writes()) for _, t in connections] == [0, 2, 2]


async def test_pipelined_requests_are_answered_in_order() -> None:
    async def echo_path(scope: Any, receive: Any, send: Any) -> None:
        await fixed(scope, receive, send, scope["path"].encode())

    proto, transport = serve(echo_path)
    proto.data_received(request("/first") + request("/second") + request("/third"))
    await turns(60)
    sent = b"".join(transport.writes())
    assert re.findall(rb"content-length: \d+\r\n\r\n(/[a-z]+)", sent) == [b"/first", b"/second", b"/third"]
    # Answers held in the same turn leave together.
    assert len(transport.writes()) < 3


async def test_a_streamed_response_begins_before_its_first_part() -> None:
    go_on = asyncio.Event()

    async def stream(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
        )
        await go_on.wait()
        await send({"type": "http.response.body", "body": b"part", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    proto, transport = serve(stream)
    proto.data_received(request())
    await turns()
    [head] = transport.writes()
    assert head.startswith(b"HTTP/1.1 200 OK") and b"transfer-encoding: chunked" in head
    go_on.set()
    await turns()
    assert b"".join(transport.writes()[1:]) == b"4\r\npart\r\n0\r\n\r\n"


async def test_a_response_that_closes_the_connection_is_written_before_the_close() -> None:
    async def closing(scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"2"), (b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    proto, transport = serve(closing)
    proto.data_received(request())
    await turns()
    assert [c[0] for c in transport.calls] == ["write", "close"]
    assert transport.calls[0][1].endswith(b"\r\n\r\nok")


async def test_a_request_pipelined_behind_a_closing_response_is_not_run() -> None:
    ran: list[str] = []

    async def close_or_count(scope: Any, receive: Any, send: Any) -> None:
        ran.append(scope["path"])
        extra = [(b"connection", b"close")] if scope["path"] == "/close" else []
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2"), *extra]}
        )
        await send({"type": "http.response.body", "body": b"ok"})

    proto, transport = serve(close_or_count)
    proto.data_received(request("/first") + request("/close") + request("/count"))
    await turns(60)
    # As uvicorn does: the connection ends with the answer that closes it, and what was sent
    # behind it is not run (its answer could not be sent).
    assert ran == ["/first", "/close"]
    assert transport.calls[-1] == ("close",)
    assert b"".join(transport.writes()).count(b"HTTP/1.1 200 OK") == 2


async def answered_then(after: Callable[[LimitedHttpToolsProtocol], object]) -> Transport:
    """One request, answered, then ``after(protocol)`` in the same turn (the answer still held);
    the stub transport once the turns that follow have run."""
    holder: list[LimitedHttpToolsProtocol] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await fixed(scope, receive, send)
        after(holder[0])

    proto, transport = serve(app)
    holder.append(proto)
    proto.data_received(request())
    await turns()
    return transport


def real_transport(proto: LimitedHttpToolsProtocol) -> Transport:
    """The stub under the protocol's HeldTransport."""
    held = proto.transport
    assert isinstance(held, HeldTransport) and isinstance(held.transport, Transport)
    return held.transport


async def test_a_shutdown_in_the_same_turn_writes_the_held_response_first() -> None:
    # What uvicorn does to idle connections on SIGTERM.
    transport = await answered_then(lambda proto: proto.shutdown())
    assert [c[0] for c in transport.calls] == ["write", "close"]
    assert transport.calls[0][1].endswith(b'{"ok":true}')


async def test_a_client_that_stops_sending_still_receives_the_held_response() -> None:
    def eof(proto: LimitedHttpToolsProtocol) -> None:
        proto.eof_received()
        real_transport(proto).close()  # as uvloop's transport does, after it

    transport = await answered_then(eof)
    assert [c[0] for c in transport.calls] == ["write", "close"]


async def test_the_protocols_own_answer_follows_a_held_response() -> None:
    # Answered 400 by the protocol.
    transport = await answered_then(lambda proto: proto.data_received(b"NOT HTTP AT ALL\r\n\r\n"))
    statuses = [w.split(b"\r\n", 1)[0] for w in transport.writes()]
    assert statuses == [b"HTTP/1.1 202 Accepted", b"HTTP/1.1 400 Bad Request"]


async def test_a_connection_gone_before_the_turn_ends_is_not_written() -> None:
    def lost(proto: LimitedHttpToolsProtocol) -> None:
        real_transport(proto).close()  # the socket went away
        proto.connection_lost(ConnectionResetError())

    transport = await answered_then(lost)
    assert transport.writes() == []  # the stub fails any write after its close


async def test_an_application_failing_after_the_head_closes_the_connection_unanswered() -> None:
    async def fails(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        raise RuntimeError("boom")

    proto, transport = serve(fails)
    proto.data_received(request())
    await turns()
    assert transport.calls == [("close",)]


async def test_what_is_held_counts_in_the_write_buffer() -> None:
    held = HeldTransport(Transport(), TurnWrites(asyncio.get_running_loop()))
    held.hold(b"12345")
    assert held.get_write_buffer_size() == 5
    held.release()
    assert held.get_write_buffer_size() == 0


async def test_a_held_response_the_transport_refuses_does_not_stop_its_close() -> None:
    # Half-closed by an answer of the protocol's own, the transport refuses writes.
    refusing = Transport()
    refusing.refuse = True
    held = HeldTransport(refusing, TurnWrites(asyncio.get_running_loop()))
    held.hold(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    held.close()
    assert refusing.calls == [("close",)]


async def test_a_client_that_half_closes_after_its_request_is_answered_then_closed() -> None:
    proto, transport = serve(fixed)
    proto.data_received(request())
    assert proto.eof_received() is True  # before the answer: the connection stays open to send it
    await turns()
    assert [c[0] for c in transport.calls] == ["write", "close"]
    assert transport.calls[0][1].endswith(b'{"ok":true}')


async def test_a_client_that_half_closes_mid_request_or_between_requests_is_closed() -> None:
    proto, _ = serve(fixed)
    proto.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12345")
    assert proto.eof_received() is None  # a body cut short: nothing to answer

    proto, _ = serve(fixed)
    proto.data_received(request())
    await turns()
    assert proto.eof_received() is None  # answered: nothing more to send


# ---- heads built once for headers given as the same tuple ----------------------------------------

TUPLE_HEADERS = ((b"content-type", b"application/json"), (b"content-length", b"11"))


def tuple_app(status: int = 202, headers: Any = TUPLE_HEADERS) -> App:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})

    return app


async def answers(app: App, state: ServerState, extra: bytes = b"") -> tuple[bytes, Transport]:
    proto, transport = serve(app, state)
    proto.data_received(request(extra=extra))
    await turns()
    [written] = transport.writes()
    return written, transport


async def test_a_head_reused_for_the_same_header_tuple_is_the_one_uvicorn_builds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[int] = []
    build = RequestResponseCycle.send

    async def counted(self: RequestResponseCycle, message: Any) -> None:
        if message["type"] == "http.response.start":
            built.append(message["status"])
        await build(self, message)

    monkeypatch.setattr(RequestResponseCycle, "send", counted)
    state = ServerState()
    state.default_headers = [(b"date", b"Sat, 28 Nov 2026 10:00:00 GMT"), (b"server", b"uvicorn")]
    first, _ = await answers(tuple_app(), state)
    again, _ = await answers(tuple_app(), state)
    assert built == [202]  # the second head was not built again
    # Built by uvicorn from the same headers given as a list: byte for byte the same response.
    as_list, _ = await answers(tuple_app(headers=list(TUPLE_HEADERS)), state)
    assert first == again == as_list
    assert first.startswith(b"HTTP/1.1 202 Accepted\r\ndate: Sat, 28 Nov 2026 10:00:00 GMT\r\n")

    # The date moves on every second (a new list of default headers): the head follows it.
    state.default_headers = [(b"date", b"Sat, 28 Nov 2026 10:00:01 GMT"), (b"server", b"uvicorn")]
    later, _ = await answers(tuple_app(), state)
    assert b"10:00:01 GMT" in later and b"10:00:00" not in later

    # Another status is another head; a client that asked to close gets "connection: close" and
    # the connection closed, then a kept-alive one gets neither.
    other, _ = await answers(tuple_app(status=200), state)
    assert other.startswith(b"HTTP/1.1 200 OK\r\n")
    closing, transport = await answers(tuple_app(), state, b"Connection: close\r\n")
    assert b"connection: close\r\n" in closing and transport.closed
    kept, transport = await answers(tuple_app(), state)
    assert b"connection: close" not in kept and not transport.closed
    assert kept.startswith(b"HTTP/1.1 202 Accepted\r\n")
