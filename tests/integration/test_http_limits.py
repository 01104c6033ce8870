"""What the HTTP server holds a client to before the application sees a request
(ingestlayer.http_protocol): a request's head is refused past its size limit (431, 414 for the
target) before the parser has taken much more; a head not complete, or a body that stops
arriving, within its time is answered 408 and the connection closed (a silent connection just
closed); connections past the limit are refused 503. Keep-alive, pipelining and large bodies
work as before, and other clients are served meanwhile. Raw sockets: every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import orjson
import pytest

from tests.support.server import RunningServer, start_server

HEAD_LIMIT = 64 * 1024  # the default
SHORT = 0.5  # the shortened header timeout, in seconds
BODY_SHORT = 1.0  # and body timeout
WAIT = 10.0  # how long anything may take before the test fails
CHUNK = b"a" * 65536


@pytest.fixture
async def quick(sqlite_url: str) -> AsyncIterator[RunningServer]:
    """A server whose heads time out after half a second, bodies after a second without progress."""
    s = await start_server(sqlite_url, http_header_timeout=SHORT, http_body_timeout=BODY_SHORT)
    yield s
    await s.stop()


class Answer:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}

    def error_code(self) -> str:
        assert self.headers["content-type"] == "application/json"
        error = orjson.loads(self.body)["error"]
        assert set(error) == {"code", "message"}, error
        code: str = error["code"]
        return code


async def connect(server: RunningServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    url = urlsplit(server.url)
    return await asyncio.wait_for(asyncio.open_connection(url.hostname, url.port), WAIT)


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = int(Answer(raw).headers.get("content-length", "0"))
    return Answer(raw + await asyncio.wait_for(reader.readexactly(length), WAIT))


async def read_answer_to(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> Answer:
    writer.write(request)
    return await read_answer(reader)


async def closed(reader: asyncio.StreamReader) -> bool:
    """Whether the server closes the connection (within WAIT) without sending anything more."""
    try:
        return await asyncio.wait_for(reader.read(1), WAIT) == b""
    except ConnectionError:
        return True


def get(path: str = "/healthz", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode()


def post_event(server: RunningServer, n: int, *, pad: int = 0) -> bytes:
    body = orjson.dumps({"type": "http.limits", "payload": {"n": n, "pad": "x" * pad}})
    return (
        f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {server.ingest_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def send_until_answered(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, start: bytes, most: int
) -> tuple[Answer, int]:
    """Send ``start`` then 64 KiB chunks of a head that never ends, up to ``most`` bytes, until
    an answer arrives; the answer and how many bytes were sent before it did."""
    answer = asyncio.create_task(read_answer(reader))
    writer.write(start)
    sent = len(start)
    with contextlib.suppress(ConnectionError):
        while sent < most and not answer.done():
            writer.write(CHUNK)
            sent += len(CHUNK)
            await asyncio.wait_for(writer.drain(), WAIT)
            await asyncio.sleep(0)  # the server (in this loop) reads
    try:
        return await asyncio.wait_for(answer, WAIT), sent
    finally:
        answer.cancel()


async def trickle(writer: asyncio.StreamWriter, data: bytes, every: float = 0.05) -> None:
    """Send ``data`` a byte at a time, until it is all sent or the server closes."""
    with contextlib.suppress(ConnectionError):
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)


async def test_a_head_past_the_limit_is_answered_431_before_much_more_is_sent(srv: RunningServer) -> None:
    reader, writer = await connect(srv)
    try:
        answer, sent = await send_until_answered(
            reader, writer, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ", most=32 * 1024 * 1024
        )
        assert answer.status == 431
        assert answer.error_code() == "headers_too_large"
        assert answer.headers["connection"] == "close"
        assert await closed(reader)
        # The answer came after the limit, long before the 32 MiB (the parser saw at most the
        # limit; what the socket buffers held besides is the rest).
        assert HEAD_LIMIT < sent <= 1024 * 1024, sent
    finally:
        writer.close()


async def test_a_request_target_past_the_limit_is_answered_414(srv: RunningServer) -> None:
    reader, writer = await connect(srv)
    try:
        writer.write(get("/healthz?q=" + "a" * (HEAD_LIMIT + 10_000)))
        answer = await read_answer(reader)
        assert answer.status == 414
        assert answer.error_code() == "uri_too_long"
        assert await closed(reader)
    finally:
        writer.close()


async def test_the_answers_to_a_head_request_past_the_limits_have_no_body(srv: RunningServer) -> None:
    """A HEAD's answer is headers alone: the JSON error sent after them was read by clients as
    the start of another answer (aiohttp refused the response: "Data after `Connection: close`")."""
    for request, status in [
        (f"HEAD /v1/events?q={'a' * (HEAD_LIMIT + 10_000)} HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (f"HEAD /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * (HEAD_LIMIT + 10_000)}\r\n\r\n", 431),
    ]:
        reader, writer = await connect(srv)
        try:
            writer.write(request.encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
            assert Answer(head).status == status
            assert await asyncio.wait_for(reader.read(), WAIT) == b"", status  # and then nothing
        finally:
            writer.close()
    # A client meets it as an answer like any other.
    async with srv.session.head(srv.url + "/v1/events?q=" + "a" * (HEAD_LIMIT + 10_000)) as resp:
        assert resp.status == 414 and await resp.read() == b""
    # A GET's answer keeps its body.
    async with srv.session.get(srv.url + "/v1/events?q=" + "a" * (HEAD_LIMIT + 10_000)) as resp:
        assert resp.status == 414 and (await resp.json())["error"]["code"] == "uri_too_long"


async def test_a_silent_connection_is_closed_after_the_header_timeout(quick: RunningServer) -> None:
    reader, writer = await connect(quick)
    try:
        started = time.monotonic()
        # Nothing was asked: nothing is answered, the connection is closed.
        assert await asyncio.wait_for(reader.read(), WAIT) == b""
        assert time.monotonic() - started >= SHORT * 0.9
    finally:
        writer.close()


async def assert_timed_out(answer: Answer, reader: asyncio.StreamReader) -> None:
    """A 408 in the project's error shape, and the connection closed after it."""
    assert answer.status == 408
    assert answer.error_code() == "request_timeout"
    assert answer.headers["connection"] == "close"
    assert await closed(reader)


async def test_a_trickled_head_is_answered_408_after_the_header_timeout(quick: RunningServer) -> None:
    reader, writer = await connect(quick)
    # A byte every 50 ms: progress all along, complete after 25 s.
    slow = asyncio.create_task(trickle(writer, get(extra="X-Slow: " + "a" * 500 + "\r\n")))
    try:
        answer = await read_answer(reader)
        await assert_timed_out(answer, reader)
    finally:
        slow.cancel()
        writer.close()


async def test_a_stalled_body_is_answered_408_and_a_slow_one_is_read(quick: RunningServer) -> None:
    # A body that keeps arriving, slowly, over longer than the timeout, is read whole.
    reader, writer = await connect(quick)
    try:
        request = post_event(quick, 1)
        head, body = request[: request.index(b"\r\n\r\n") + 4], request[len(request) - 30 :]
        writer.write(request[: len(request) - 30])
        for i in range(0, 30, 2):  # 15 pieces, 0.1 s apart: 1.5 s in all
            await asyncio.sleep(BODY_SHORT / 10)
            writer.write(body[i : i + 2])
        answer = await read_answer(reader)
        assert answer.status == 202, answer.body

        # One that stops: the head and a byte of the 100 promised.
        writer.write(head.replace(b"Content-Length: ", b"Content-Length: 100\r\nX-Was: ") + b"{")
        answer = await read_answer(reader)
        await assert_timed_out(answer, reader)
    finally:
        writer.close()
    status, body = await quick.request("GET", "/v1/events?limit=10")
    assert status == 200
    assert [e["payload"]["n"] for e in body["data"]] == [1]


async def test_keep_alive_pipelining_large_bodies_work_then_a_long_head_is_431(srv: RunningServer) -> None:
    reader, writer = await connect(srv)
    try:
        # Reused for one request after another; a body three times the head limit.
        writer.write(post_event(srv, 1, pad=3 * HEAD_LIMIT))
        assert (await read_answer(reader)).status == 202
        writer.write(get(extra="X-Under: " + "a" * (HEAD_LIMIT - 200) + "\r\n"))  # a head just under
        assert (await read_answer(reader)).status == 200
        # Pipelined, in one write: answered in order.
        writer.write(post_event(srv, 2) + get() + post_event(srv, 3, pad=2 * HEAD_LIMIT) + get("/nowhere"))
        assert [(await read_answer(reader)).status for _ in range(4)] == [202, 200, 202, 404]
        await asyncio.sleep(0.2)
        assert (await read_answer_to(reader, writer, get())).status == 200
        # A head past the limit on the same connection, after all that.
        writer.write(get(extra="X-Big: " + "a" * (HEAD_LIMIT + 1000) + "\r\n"))
        answer = await read_answer(reader)
        assert answer.status == 431
        assert await closed(reader)
    finally:
        writer.close()
    status, body = await srv.request("GET", "/v1/events?limit=10")
    assert status == 200
    assert sorted(e["payload"]["n"] for e in body["data"]) == [1, 2, 3]


async def test_other_clients_are_served_while_heads_grow_and_trickle(quick: RunningServer) -> None:
    big_r, big_w = await connect(quick)
    slow_r, slow_w = await connect(quick)
    silent_r, silent_w = await connect(quick)
    big = asyncio.create_task(
        send_until_answered(big_r, big_w, b"GET /healthz HTTP/1.1\r\nX-Big: ", most=32 * 1024 * 1024)
    )
    slow = asyncio.create_task(trickle(slow_w, get(extra="X-Slow: " + "a" * 500 + "\r\n")))
    try:
        for n in range(20):
            status, body = await asyncio.wait_for(quick.ingest("meanwhile", {"n": n}), WAIT)
            assert status == 202, body
        answer, _ = await asyncio.wait_for(big, WAIT)
        assert answer.status == 431
        assert (await read_answer(slow_r)).status == 408
        assert await asyncio.wait_for(silent_r.read(), WAIT) == b""
        status, body = await asyncio.wait_for(quick.ingest("after", {}), WAIT)
        assert status == 202, body
    finally:
        big.cancel()
        slow.cancel()
        for w in (big_w, slow_w, silent_w):
            w.close()


async def test_connections_past_the_limit_are_refused_503(sqlite_url: str) -> None:
    server = await start_server(sqlite_url, http_max_connections=3)
    writers: list[asyncio.StreamWriter] = []
    try:
        held = [await connect(server) for _ in range(3)]
        writers += [w for _, w in held]
        await asyncio.sleep(0.2)  # accepted
        reader, writer = await connect(server)
        writers.append(writer)
        writer.write(get())
        answer = await read_answer(reader)
        assert answer.status == 503
        assert answer.error_code() == "unavailable"
        assert answer.headers["retry-after"] == "1"
        assert await closed(reader)
        writer.close()
        # The connections already open are served.
        for r, w in held:
            assert (await read_answer_to(r, w, get())).status == 200
        # One closed, a new one is served.
        held[0][1].close()
        await asyncio.sleep(0.2)
        reader, writer = await connect(server)
        writers.append(writer)
        assert (await read_answer_to(reader, writer, get())).status == 200
    finally:
        for w in writers:
            w.close()
        await server.stop()


async def test_a_request_that_is_not_http_is_answered_in_json_and_logged_once(
    srv: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn answered such requests in plain text and logged a warning for each: anyone could
    fill the log."""
    for _ in range(5):
        reader, writer = await connect(srv)
        try:
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            answer = await read_answer(reader)
            assert answer.status == 400
            assert answer.error_code() == "bad_request"
            assert answer.headers["connection"] == "close"
        finally:
            writer.close()
    invalid = [r for r in caplog.records if "Invalid HTTP request received" in r.getMessage()]
    assert len(invalid) <= 1


async def test_an_event_from_a_client_that_half_closes_after_sending_is_acknowledged(
    srv: RunningServer,
) -> None:
    """``nc -N`` and some HTTP/1.0 clients end their side once the request is sent: the event is
    answered 202 before the connection closes, not stored and left unacknowledged."""
    reader, writer = await connect(srv)
    writer.write(post_event(srv, 7))
    writer.write_eof()
    answer = await read_answer(reader)
    assert answer.status == 202, answer.body
    assert answer.headers.get("connection") == "close"
    assert await closed(reader)
    event_id = orjson.loads(answer.body)["id"]
    status, stored = await srv.request("GET", f"/v1/events/{event_id}")
    assert status == 200 and stored["payload"] == {"n": 7, "pad": ""}, stored
    writer.close()


async def test_a_body_over_the_limit_is_answered_413_to_a_client_that_sends_it_all_first(
    srv: RunningServer,
) -> None:
    """Python's urllib (and requests) send the whole body before they read the answer. Closed
    at once over the rest of a 6 MiB body, the connection was reset, and such a client got
    ``Connection reset by peer`` instead of the 413: now the server reads on and drops the rest
    (half-closed), and the client reads the answer. Nothing is stored, and the next request is
    served as usual."""
    body = orjson.dumps([{"type": "http.limits", "payload": {"pad": "x" * 1000}}] * 6000)
    assert len(body) > 5 * 1024 * 1024
    request = urllib.request.Request(
        srv.url + "/v1/events",
        data=body,
        headers={"Authorization": f"Bearer {srv.ingest_key}", "Content-Type": "application/json"},
    )

    def post() -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    for _ in range(3):
        status, answer = await asyncio.to_thread(post)
        assert status == 413, answer
        assert orjson.loads(answer)["error"] == {
            "code": "payload_too_large",
            "message": "request body exceeds 5 MiB",
        }
    status, listed = await srv.request("GET", "/v1/events?type=http.limits")
    assert status == 200 and listed["data"] == [], listed
    reader, writer = await connect(srv)
    try:
        assert (await read_answer_to(reader, writer, post_event(srv, 1))).status == 202
    finally:
        writer.close()


async def test_requests_pipelined_behind_an_answer_that_closes_are_not_run(srv: RunningServer) -> None:
    """An answer that closes the connection (here a 400: Authorization sent twice) ends it for
    the requests pipelined behind it too: they are not run (an event stored, its answer lost,
    and the client, told ``connection: close``, sending it again), whatever still arrives."""
    first = post_event(srv, 1).replace(
        b"Authorization: ", b"Authorization: Bearer il_ingest_x\r\nAuthorization: ", 1
    )
    partial = post_event(srv, 3, pad=50_000)[:-20_000]
    reader, writer = await connect(srv)
    try:
        writer.write(first + post_event(srv, 2) + partial)
        answer = await read_answer(reader)
        assert answer.status == 400 and answer.headers["connection"] == "close", answer.body
        assert await closed(reader)  # nothing more: no answer to the pipelined requests
    finally:
        writer.close()
    await asyncio.sleep(0.2)
    status, listed = await srv.request("GET", "/v1/events?type=http.limits")
    assert status == 200 and listed["data"] == [], listed
