"""What every request is held to before it is read: a body limit on every route (no key needed to
be refused), no compressed bodies read as garbage, connections closed when their body goes
unread, CORS for browsers on the routes an ingest key opens, and why a body is not JSON."""

from __future__ import annotations

import asyncio
import gzip
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import pytest

from tests.support.server import RunningServer, start_server

LIMIT = 4096


@pytest.fixture
async def small(sqlite_url: str) -> AsyncIterator[RunningServer]:
    """A server whose request limit is 4 KiB."""
    s = await start_server(sqlite_url, max_request_bytes=LIMIT)
    yield s
    await s.stop()


class Answer:
    def __init__(self, raw: bytes, closed: bool) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        self.closed = closed  # the server closed the connection after answering

    def json(self) -> dict[str, object]:
        value = orjson.loads(self.body)
        assert isinstance(value, dict)
        return value


async def exchange(
    server: RunningServer, head: bytes, body: bytes = b"", more: bytes = b"", *, wait_close: float = 0.0
) -> Answer:
    """Send ``head`` and ``body``, read the answer; then send ``more`` (the rest of a body the
    server may not read) and see, for up to ``wait_close`` seconds, whether the server closes
    the connection."""
    url = urlsplit(server.url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        writer.write(head + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(Answer(raw, False).headers.get("content-length", "0"))
        raw += await asyncio.wait_for(reader.readexactly(length), 10)
        closed = False
        if not wait_close:
            return Answer(raw, closed)
        try:
            if more:
                writer.write(more)
                await writer.drain()
            closed = await asyncio.wait_for(reader.read(1), wait_close) == b""
        except ConnectionError:  # reset: closed while the rest of the body was sent
            closed = True
        except TimeoutError:  # still open, waiting for more
            closed = False
        return Answer(raw, closed)
    finally:
        writer.close()


def post(path: str, key: str | None, headers: dict[str, str], length: int | None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if key:
        lines.append(f"Authorization: Bearer {key}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def stored(server: RunningServer) -> list[str]:
    status, listed = await server.request("GET", "/v1/events")
    assert status == 200, listed
    return [e["type"] for e in listed["data"]]


async def test_a_body_over_the_limit_is_refused_on_every_route_before_it_is_read(
    small: RunningServer,
) -> None:
    big = 10 * 1024 * 1024
    for path, key in (
        ("/v1/identify", None),  # no key at all: refused for its size all the same
        ("/v1/identify", small.ingest_key),
        ("/v1/pipelines", small.admin_key),
        ("/v1/apply", small.admin_key),
        ("/v1/events", small.ingest_key),
    ):
        answer = await exchange(small, post(path, key, {}, big), b"{", more=b"x" * 65536, wait_close=10)
        assert answer.status == 413, (path, answer.status, answer.body)
        assert answer.json()["error"] == {
            "code": "payload_too_large",
            "message": "request body exceeds 4096 bytes",
        }
        assert answer.headers.get("connection") == "close" and answer.closed, path
    # Announced with Expect: 100-continue, the upload is not invited.
    answer = await exchange(small, post("/v1/identify", None, {"Expect": "100-continue"}, big))
    assert answer.status == 413, answer.body


async def test_a_chunked_body_is_cut_off_at_the_limit(small: RunningServer) -> None:
    def chunked(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    start = chunked(b'{"user_id": "u1", "traits": {"a": "')
    chunks = b"".join(chunked(b"x" * 1000) for _ in range(8))
    head = post("/v1/identify", small.ingest_key, {"Transfer-Encoding": "chunked"}, None)
    answer = await exchange(small, head, start + chunks, more=chunks * 20, wait_close=10)
    assert answer.status == 413, answer.body
    assert answer.headers.get("connection") == "close" and answer.closed
    # The server goes on serving.
    status, body = await small.request("POST", "/v1/identify", json={"user_id": "u1"}, key=small.ingest_key)
    assert status in (200, 202), body


async def test_a_compressed_body_is_refused_naming_its_encoding(srv: RunningServer) -> None:
    event = orjson.dumps({"type": "zipped.event", "payload": {}})
    packed = gzip.compress(event)
    for path, key in (("/v1/events", srv.ingest_key), ("/v1/identify", srv.ingest_key)):
        for encoding in ("gzip", "br", "x-foo"):
            head = post(path, key, {"Content-Encoding": encoding}, len(packed))
            answer = await exchange(srv, head, packed)
            assert answer.status == 415, (path, encoding, answer.body)
            error = answer.json()["error"]
            assert error["code"] == "unsupported_media_type"  # type: ignore[index]
            assert f"Content-Encoding '{encoding}' is not supported" in error["message"]  # type: ignore[index]
    assert await stored(srv) == []
    # identity is no encoding at all.
    head = post("/v1/events", srv.ingest_key, {"Content-Encoding": "identity"}, len(event))
    assert (await exchange(srv, head, event)).status == 202
    assert await stored(srv) == ["zipped.event"]


async def test_answers_before_the_body_is_read_close_the_connection_others_keep_it(
    srv: RunningServer,
) -> None:
    body = orjson.dumps({"type": "a.b", "payload": {}})
    # A wrong key on the ingest route: answered before the body, which is then not taken.
    answer = await exchange(
        srv, post("/v1/events", "il_ingest_wrong", {}, len(body) + 10), body, wait_close=10
    )
    assert answer.status == 401 and answer.headers.get("connection") == "close" and answer.closed
    # A body read whole: the connection stays open for the next request.
    answer = await exchange(srv, post("/v1/events", srv.ingest_key, {}, len(body)), body, wait_close=0.5)
    assert answer.status == 202 and "connection" not in answer.headers and not answer.closed
    head = post("/v1/identify", srv.ingest_key, {}, 16)
    answer = await exchange(srv, head, b'{"user_id": "u"}', wait_close=0.5)
    assert answer.status in (200, 202) and not answer.closed, answer.body


async def test_browsers_may_send_events_with_an_ingest_key(srv: RunningServer) -> None:
    origin = {"Origin": "https://app.example.com"}
    for path in ("/v1/events", "/v1/identify", "/v1/group"):
        async with srv.session.options(
            srv.url + path,
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type, idempotency-key",
            },
        ) as resp:
            assert resp.status == 204, path
            assert resp.headers["Access-Control-Allow-Origin"] == "*"
            assert resp.headers["Access-Control-Allow-Methods"] == "POST"
            allowed = {h.strip() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
            assert {"authorization", "content-type", "idempotency-key"} <= allowed
    for path, payload in (
        ("/v1/events", {"type": "page.viewed", "payload": {}}),
        ("/v1/identify", {"user_id": "u1"}),
        ("/v1/group", {"user_id": "u1", "account_id": "acc_1"}),
    ):
        async with srv.session.post(
            srv.url + path, json=payload, headers={**origin, **srv.auth(srv.ingest_key)}
        ) as resp:
            assert resp.status in (200, 202), (path, await resp.text())
            assert resp.headers["Access-Control-Allow-Origin"] == "*", path
    # Admin routes are not opened to browsers.
    async with srv.session.get(srv.url + "/v1/pipelines", headers={**origin, **srv.auth()}) as resp:
        assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers
    async with srv.session.options(
        srv.url + "/v1/pipelines", headers={**origin, "Access-Control-Request-Method": "POST"}
    ) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_body_that_is_not_json_is_answered_with_the_reason(srv: RunningServer) -> None:
    for body, reason in (
        (b'\xef\xbb\xbf{"type": "a.b"}', "byte order mark"),
        (b'{"type": "a.b", "payload": {"n": NaN}}', "line 1 column 34"),
        (b'{"type": "a.b",}', "trailing comma"),
    ):
        for path in ("/v1/events", "/v1/identify"):
            answer = await exchange(srv, post(path, srv.ingest_key, {}, len(body)), body)
            assert answer.status == 400, (path, answer.body)
            message = answer.json()["error"]["message"]  # type: ignore[index]
            assert message.startswith("the request body is not valid JSON: ") and reason in message, (
                path,
                message,
            )
    answer = await exchange(srv, post("/v1/events", srv.ingest_key, {}, 0))
    assert answer.status == 400
    assert answer.json()["error"]["message"] == "the request body is empty: send a JSON object"  # type: ignore[index]


async def test_a_trailing_slash_is_a_404_not_a_redirect(srv: RunningServer) -> None:
    for method, path in (("POST", "/v1/events/"), ("GET", "/v1/pipelines/"), ("POST", "/v1/identify/")):
        async with srv.session.request(
            method,
            srv.url + path,
            json={},
            headers={**srv.auth(), "Host": "evil.example"},
            allow_redirects=False,
        ) as resp:
            assert resp.status == 404, (path, resp.status, resp.headers.get("Location"))
            assert "Location" not in resp.headers
            assert (await resp.json())["error"]["code"] == "not_found"


async def test_a_client_leaving_mid_body_is_no_error_in_the_log(
    srv: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A signed webhook's route reads its body as a stream; a sender that goes away halfway was
    logged as "Exception in ASGI application" with a traceback."""
    result = await srv.apply({"sources": [{"name": "open", "verify": "none"}]})
    (path,) = [c["ingress_path"] for c in result["changes"] if c["kind"] == "source"]
    for target in (path, "/v1/identify"):
        url = urlsplit(srv.url)
        _, writer = await asyncio.open_connection(url.hostname, url.port)
        head = post(target, srv.ingest_key, {"Transfer-Encoding": "chunked"}, None)
        writer.write(head + b"10\r\n" + b'{"type": "a.b", ' + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.3)  # the route is reading the body
        writer.close()
        await asyncio.sleep(0.3)  # and finds its client gone
    assert [r.getMessage() for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")] == []
    assert await stored(srv) == []


async def test_a_header_that_counts_once_is_refused_when_given_twice(srv: RunningServer) -> None:
    """With two Authorization headers the ingest route took the last and the others the first:
    a wrong key then a right one was a 202 on one route and a 401 on the next."""
    body = orjson.dumps({"type": "twice.sent", "payload": {}})
    for path in ("/v1/events", "/v1/identify"):
        payload = body if path == "/v1/events" else b'{"user_id": "u1"}'
        lines = [
            f"POST {path} HTTP/1.1",
            "Host: 127.0.0.1",
            "Content-Type: application/json",
            "Authorization: Bearer il_ingest_wrong",
            f"Authorization: Bearer {srv.ingest_key}",
            f"Content-Length: {len(payload)}",
        ]
        answer = await exchange(srv, ("\r\n".join(lines) + "\r\n\r\n").encode(), payload)
        assert answer.status == 400, (path, answer.body)
        assert answer.json()["error"] == {
            "code": "bad_request",
            "message": "the Authorization header is given more than once: send it once",
            "field": "Authorization",
        }
    head = post("/v1/events", srv.ingest_key, {"Idempotency-Key": "k1-x"}, len(body))
    head = head.replace(b"\r\n\r\n", b"\r\nIdempotency-Key: k2-x\r\n\r\n")
    answer = await exchange(srv, head, body)
    assert answer.status == 400 and answer.json()["error"]["field"] == "Idempotency-Key"  # type: ignore[index]
    assert await stored(srv) == []


async def test_a_wrong_method_on_the_events_route_names_post(srv: RunningServer) -> None:
    for method in ("PUT", "DELETE", "PATCH"):
        async with srv.session.request(
            method, srv.url + "/v1/events", headers=srv.auth(srv.ingest_key)
        ) as resp:
            assert resp.status == 405, method
            assert resp.headers["Allow"] == "GET, POST"
            assert (await resp.json())["error"]["code"] == "method_not_allowed"


# The headers a page's script may set without a preflight (the Fetch standard's CORS-safelisted
# request headers, for the values the SDK gives them).
SAFELISTED = {"accept", "accept-language", "content-language"}


def typescript_sdk_request_headers() -> list[str]:
    """The header names the TypeScript SDK sets on every request, read from its source."""
    source = (Path(__file__).parents[2] / "sdk/typescript/src/client.ts").read_text()
    block = re.search(r"async #post\(.*?const headers = \{(.*?)\};", source, re.S)
    assert block is not None, "the SDK's request headers moved: update this test"
    return [m.group(1).lower() for m in re.finditer(r'^\s*"?([A-Za-z-]+)"?\s*:', block.group(1), re.M)]


async def test_a_preflight_for_the_typescript_sdks_own_headers_is_allowed(srv: RunningServer) -> None:
    # Firefox and Safari send a User-Agent a script sets (Chromium drops it), so they list it in
    # the preflight; a header missing from the answer blocked every event the SDK sent there.
    sent = typescript_sdk_request_headers()
    assert "user-agent" in sent and "authorization" in sent
    asked = sorted(set(sent) - SAFELISTED)
    for path in ("/v1/events", "/v1/identify", "/v1/group"):
        async with srv.session.options(
            srv.url + path,
            headers={
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": ",".join(asked),  # as Firefox sends it
            },
        ) as resp:
            assert resp.status == 204, path
            allowed = {h.strip().lower() for h in resp.headers["Access-Control-Allow-Headers"].split(",")}
            assert set(asked) <= allowed, (path, set(asked) - allowed)
