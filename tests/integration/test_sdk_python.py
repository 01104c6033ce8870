"""The Python SDK (``Client`` and ``AsyncClient``) against a real server, and against local fakes.

The real server (both databases, from the shared harness) checks what is *stored*: one event per
idempotency key, every batched event exactly once, server-side validation and auth errors, real 429s.
A local fake HTTP server (tests.support.receiver, or a bare aiohttp app) injects what a healthy
server never does on cue: 503 streaks, Retry-After, slow answers, refused connections; it also
stands in for ``/v1/identify`` and ``/v1/group``, which the server does not serve yet.
"""

from __future__ import annotations

import asyncio
import builtins
import doctest
import json
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

import ingestlayer.sdk
from ingestlayer.sdk import (
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    ConnectionError,
    IngestlayerError,
    IngestResult,
    RateLimitError,
    ServerError,
    ValidationError,
    _sync_client,
    _transport,
)
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, start_server, wait_for

# Retries in tests: milliseconds, not the production half-second base.
FAST: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05}
ACCEPTED = Reply(status=202, body=b'{"id":"evt_fake","duplicate":false}')

AnyClient = Client | AsyncClient


# --- helpers -----------------------------------------------------------------------------------------


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    """Run the test once with the blocking Client and once with the AsyncClient."""
    param: str = request.param
    return param


def make(kind: str, api_key: str, base_url: str, **options: Any) -> AnyClient:
    cls = Client if kind == "sync" else AsyncClient
    return cls(api_key, base_url, **{**FAST, **options})


async def call(client: AnyClient, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call a client method; the blocking client runs in a thread so the in-loop servers keep serving."""
    fn = getattr(client, method)
    if isinstance(client, AsyncClient):
        return await fn(*args, **kwargs)
    return await asyncio.to_thread(fn, *args, **kwargs)


async def events_of(server: RunningServer, type_: str) -> list[dict[str, Any]]:
    """Every stored event of ``type_`` (all pages)."""
    found: list[dict[str, Any]] = []
    before: str | None = None
    while True:
        path = f"/v1/events?type={type_}&limit=500" + (f"&before={before}" if before else "")
        status, body = await server.request("GET", path)
        assert status == 200, body
        found += body["data"]
        before = body["next_before"]
        if not before:
            return found


def sent(receiver: Receiver) -> list[dict[str, Any]]:
    return [r.json() for r in receiver.requests]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
async def fake(receiver: Receiver) -> AsyncIterator[Receiver]:
    """The shared receiver as a fake ingestlayer: answers 202 with an event id unless told otherwise."""
    receiver.default = ACCEPTED
    yield receiver


@pytest.fixture
async def sqlite_server(sqlite_url: str) -> AsyncIterator[RunningServer]:
    """A real server on SQLite only, for tests whose subject is the client, not the database."""
    s = await start_server(sqlite_url)
    yield s
    await s.stop()


# --- against the real server -------------------------------------------------------------------------


async def test_ingest_stores_the_event_and_returns_its_id(server: RunningServer, kind: str) -> None:
    client = make(kind, server.ingest_key, server.url)
    when = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    payload = {"user_id": "u_1", "feature": "csv.export", "count": 1, "plan": "pro"}
    result = await call(client, "ingest", "feature.used", payload, occurred_at=when)
    await call(client, "close")

    assert isinstance(result, IngestResult)
    assert result.id.startswith("evt_") and result.duplicate is False
    uuid.UUID(result.idempotency_key)  # generated, so a retry could never duplicate the event
    status, event = await server.request("GET", f"/v1/events/{result.id}")
    assert status == 200
    assert event["type"] == "feature.used"
    assert event["payload"] == payload
    assert event["idempotency_key"] == result.idempotency_key
    assert event["occurred_at"] == "2026-03-01T12:30:00.000Z"


async def test_a_repeated_idempotency_key_is_stored_once(server: RunningServer, kind: str) -> None:
    client = make(kind, server.ingest_key, server.url)
    payload = {"user_id": "u_7", "email": "ada@acme.com", "plan": "pro", "source": "marketing-site"}
    first = await call(client, "ingest", "user.signed_up", payload, idempotency_key="u_7")
    second = await call(client, "ingest", "user.signed_up", payload, idempotency_key="u_7")
    await call(client, "close")

    assert first == IngestResult(first.id, False, "u_7")
    assert second == IngestResult(first.id, True, "u_7")
    assert [e["id"] for e in await events_of(server, "user.signed_up")] == [first.id]


async def test_server_validation_errors_name_the_field(sqlite_server: RunningServer, kind: str) -> None:
    server = sqlite_server
    client = make(kind, server.ingest_key, server.url)
    with pytest.raises(ValidationError) as bad_type:
        await call(client, "ingest", "feature used", {"x": 1})
    with pytest.raises(ValidationError) as too_big:
        await call(client, "ingest", "feature.used", {"blob": "x" * (300 * 1024)})
    await call(client, "close")

    assert (bad_type.value.status, bad_type.value.code, bad_type.value.field) == (
        422,
        "validation_error",
        "type",
    )
    assert bad_type.value.attempts == 1  # 4xx is never retried
    assert "not a valid event name" in str(bad_type.value)
    assert (too_big.value.status, too_big.value.field) == (413, "payload")
    assert await events_of(server, "feature.*") == []


async def test_a_wrong_key_raises_authentication_error_at_once(
    sqlite_server: RunningServer, kind: str
) -> None:
    server = sqlite_server
    client = make(kind, "il_ingest_not-a-real-key", server.url)
    with pytest.raises(AuthenticationError) as exc:
        await call(client, "ingest", "feature.used", {})
    await call(client, "close")
    assert exc.value.status == 401 and exc.value.attempts == 1


async def test_background_batching_delivers_every_event_exactly_once(
    server: RunningServer, kind: str
) -> None:
    errors: list[Any] = []
    client = make(
        kind,
        server.ingest_key,
        server.url,
        background=True,
        batch_size=40,
        flush_interval=0.05,
        on_error=lambda err, events: errors.append((err, events)),
    )
    for i in range(250):
        key = f"bg-{i}" if i % 2 else None  # half with keys of ours, half generated
        assert await call(client, "ingest", "batch.item", {"n": i}, idempotency_key=key) is None
    assert await call(client, "flush") is True
    assert len(await events_of(server, "batch.item")) == 250  # flush() means sent, not just queued
    for i in range(250, 260):
        await call(client, "ingest", "batch.item", {"n": i})
    assert await call(client, "close") is True  # close() flushes the rest

    stored = await events_of(server, "batch.item")
    assert sorted(e["payload"]["n"] for e in stored) == list(range(260))
    assert len({e["idempotency_key"] for e in stored}) == 260
    assert errors == []
    with pytest.raises(IngestlayerError, match="closed"):
        await call(client, "ingest", "batch.item", {"n": -1})


async def test_a_background_batch_over_5_mib_is_sent_in_parts_and_none_is_lost(
    sqlite_server: RunningServer, kind: str
) -> None:
    """30 events of 200 KB make one batch of 6 MB, sent as two requests under the 5 MiB limit.
    The async client lost the second part: sliced from the batch in hand after the first part had
    left it, the slice came back empty."""
    server = sqlite_server
    errors: list[Any] = []
    client = make(
        kind,
        server.ingest_key,
        server.url,
        background=True,
        batch_size=100,
        flush_interval=10,
        on_error=lambda err, events: errors.append((err, events)),
    )
    for i in range(30):
        await call(client, "ingest", "big.item", {"n": i, "pad": "x" * 200_000})
    assert await call(client, "close") is True
    assert sorted(e["payload"]["n"] for e in await events_of(server, "big.item")) == list(range(30))
    assert errors == []


async def test_a_rejected_event_goes_to_on_error_and_its_batch_is_still_delivered(
    sqlite_server: RunningServer, kind: str
) -> None:
    server = sqlite_server
    errors: list[tuple[IngestlayerError, list[dict[str, Any]]]] = []
    client = make(
        kind,
        server.ingest_key,
        server.url,
        background=True,
        flush_interval=10,
        on_error=lambda err, events: errors.append((err, events)),
    )
    await call(client, "ingest", "mixed.ok", {"n": 0})
    await call(client, "ingest", "mixed bad", {"n": 1})  # not a valid event name: the server says 422
    await call(client, "ingest", "mixed.ok", {"n": 2})
    await call(client, "close")

    assert sorted(e["payload"]["n"] for e in await events_of(server, "mixed.ok")) == [0, 2]
    assert len(errors) == 1
    error, events = errors[0]
    assert isinstance(error, ValidationError) and error.field == "batch[1].type"
    assert [e["type"] for e in events] == ["mixed bad"]


async def test_real_429s_are_waited_out_and_nothing_is_lost(sqlite_url: str) -> None:
    # One event per second, burst of one: of three concurrent events one passes, two get 429 with
    # Retry-After: 2 (whatever the load, the requests arrive well within that second).
    server = await start_server(sqlite_url, ingest_rate_limit=1.0)
    try:
        async with AsyncClient(server.ingest_key, server.url, **FAST) as client:
            started = time.monotonic()
            results = await asyncio.gather(*(client.ingest("limited.event", {"n": i}) for i in range(3)))
            elapsed = time.monotonic() - started
        async with AsyncClient(server.ingest_key, server.url, max_retries=0) as impatient:
            outcomes = await asyncio.gather(
                *(impatient.ingest("limited.event", {"n": -1}) for _ in range(3)), return_exceptions=True
            )
        stored = await events_of(server, "limited.event")
    finally:
        await server.stop()
    assert elapsed >= 1.9  # the Retry-After was waited out; the backoff alone is ~10 ms
    assert all(isinstance(r, IngestResult) and not r.duplicate for r in results)
    assert sorted(e["payload"]["n"] for e in stored if e["payload"]["n"] >= 0) == [0, 1, 2]
    limited = [o for o in outcomes if isinstance(o, RateLimitError)]
    assert limited, outcomes
    assert all(e.status == 429 and e.attempts == 1 and (e.retry_after or 0) >= 1 for e in limited)


_EXIT_SCRIPTS = {
    "sync": """
import sys
from ingestlayer.sdk import Client
client = Client(sys.argv[1], sys.argv[2], background=True, flush_interval=60, batch_size=20)
for i in range(50):
    client.ingest("exit.flush", {"n": i})
# no close(): two full batches are on their way, the atexit hook must send the other 10
""",
    "async": """
import asyncio, sys
from ingestlayer.sdk import AsyncClient
async def main():
    client = AsyncClient(sys.argv[1], sys.argv[2], background=True, flush_interval=60, batch_size=20)
    for i in range(50):
        await client.ingest("exit.flush", {"n": i})
    await asyncio.sleep(0.2)  # two full batches go out from the loop
    # no close(): asyncio.run cancels the sender task; the atexit hook must send the last 10
asyncio.run(main())
""",
}


async def test_queued_events_are_flushed_when_the_interpreter_exits(
    sqlite_server: RunningServer, kind: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "always",  # ResourceWarnings too: nothing may be left unclosed
        "-c",
        _EXIT_SCRIPTS[kind],
        sqlite_server.ingest_key,
        sqlite_server.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert err == b"", err.decode()
    stored = await events_of(sqlite_server, "exit.flush")
    assert sorted(e["payload"]["n"] for e in stored) == list(range(50))


_FORK_SCRIPT = """
import os, sys
from ingestlayer.sdk import Client
# Made before the fork, as gunicorn's preload or a multiprocessing parent would.
client = Client(sys.argv[1], sys.argv[2], background=True, flush_interval=60, batch_size=20)
client.ingest("fork.parent", {"n": 0})
assert client.flush(10)
pid = os.fork()
if pid == 0:
    for i in range(5):
        client.ingest("fork.child", {"n": i})
    sys.exit(0)  # the child's atexit hook sends its queue with its own sender thread
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, status
client.ingest("fork.parent", {"n": 1})
client.close()
"""


async def test_a_forked_child_sends_what_it_queued(sqlite_server: RunningServer) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _FORK_SCRIPT,
        sqlite_server.ingest_key,
        sqlite_server.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    child = await events_of(sqlite_server, "fork.child")
    assert sorted(e["payload"]["n"] for e in child) == list(range(5))
    parent = await events_of(sqlite_server, "fork.parent")
    assert sorted(e["payload"]["n"] for e in parent) == [0, 1]  # each sent once, by its owner


# --- failure injection against a fake server ---------------------------------------------------------


async def test_503s_then_202_store_one_event_under_one_key(fake: Receiver, kind: str) -> None:
    fake.fail_times(3, status=503)
    client = make(kind, "il_ingest_k", fake.url)
    generated = await call(client, "ingest", "feature.used", {"n": 1})
    fake.fail_times(2, status=502)
    explicit = await call(client, "ingest", "feature.used", {"n": 2}, idempotency_key="mine-1")
    await call(client, "close")

    assert generated == IngestResult("evt_fake", False, generated.idempotency_key)
    bodies = sent(fake)
    assert len(bodies) == 4 + 3
    assert {b["idempotency_key"] for b in bodies[:4]} == {generated.idempotency_key}
    assert {b["idempotency_key"] for b in bodies[4:]} == {"mine-1"}
    assert explicit.idempotency_key == "mine-1"
    first = fake.requests[0]
    assert first.path == "/v1/events"
    assert first.headers["Authorization"] == "Bearer il_ingest_k"
    assert first.headers["Content-Type"] == "application/json"
    assert first.headers["User-Agent"].startswith("ingestlayer-python/")


async def test_retry_after_is_honoured(fake: Receiver, kind: str) -> None:
    fake.plan = [Reply(status=429, headers={"Retry-After": "1"}, body=b'{"error":{"code":"rate_limited"}}')]
    client = make(kind, "il_ingest_k", fake.url)
    started = time.monotonic()
    result = await call(client, "ingest", "feature.used", {})
    elapsed = time.monotonic() - started
    await call(client, "close")
    assert result.id == "evt_fake"
    assert len(fake.requests) == 2
    assert elapsed >= 0.95  # the backoff alone would have been ~10 ms
    assert fake.requests[1].at - fake.requests[0].at >= 0.95


async def test_a_retry_after_beyond_max_retry_wait_raises_at_once(fake: Receiver) -> None:
    fake.default = Reply(status=503, headers={"Retry-After": "120"}, body=b"busy")
    client = make("async", "il_ingest_k", fake.url, max_retry_wait=5)
    with pytest.raises(ServerError) as exc:
        await call(client, "ingest", "feature.used", {})
    await call(client, "close")
    assert exc.value.retry_after == 120 and exc.value.attempts == 1
    assert "busy" in str(exc.value)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, ValidationError),
        (401, AuthenticationError),
        (403, AuthenticationError),
        (404, APIError),
        (409, APIError),
        (413, ValidationError),
        (422, ValidationError),
    ],
)
async def test_4xx_other_than_429_is_never_retried(
    fake: Receiver, kind: str, status: int, error_class: type[APIError]
) -> None:
    body = {"error": {"code": "nope", "message": "refused on purpose", "field": "payload.email"}}
    fake.default = Reply(status=status, body=json.dumps(body).encode())
    client = make(kind, "il_ingest_k", fake.url)
    with pytest.raises(error_class) as exc:
        await call(client, "ingest", "feature.used", {})
    await call(client, "close")
    assert type(exc.value) is error_class
    assert (exc.value.status, exc.value.code, exc.value.field) == (status, "nope", "payload.email")
    assert exc.value.message == "refused on purpose" and exc.value.attempts == 1
    assert len(fake.requests) == 1


async def test_exhausted_retries_raise_server_error(fake: Receiver, kind: str) -> None:
    fake.default = Reply(status=503, body=b'{"error":{"code":"unavailable","message":"db down"}}')
    client = make(kind, "il_ingest_k", fake.url, max_retries=2)
    with pytest.raises(ServerError) as exc:
        await call(client, "ingest", "feature.used", {})
    await call(client, "close")
    assert exc.value.status == 503 and exc.value.attempts == 3
    assert len(fake.requests) == 3
    assert len({r.json()["idempotency_key"] for r in fake.requests}) == 1


async def test_connection_refused_is_retried_then_raises_connection_error(kind: str) -> None:
    client = make(kind, "il_ingest_k", f"http://127.0.0.1:{free_port()}", max_retries=3)
    with pytest.raises(ConnectionError) as exc:
        await call(client, "ingest", "feature.used", {})
    await call(client, "close")
    assert exc.value.attempts == 4 and exc.value.status is None
    assert isinstance(exc.value, builtins.ConnectionError)  # generic network handlers catch it too
    assert "could not reach http://127.0.0.1:" in str(exc.value)


async def test_a_server_that_comes_up_during_the_retries_gets_the_event(kind: str) -> None:
    # Bound but not listening: connections are refused, and no other process can take the port
    # before the server below listens on this very socket.
    held = socket.socket()
    held.bind(("127.0.0.1", 0))
    port = held.getsockname()[1]
    bodies: list[dict[str, Any]] = []

    async def accept(request: web.Request) -> web.Response:
        bodies.append(await request.json())
        return web.json_response({"id": "evt_late", "duplicate": False}, status=202)

    # Retries enough to outlast a slow start of the server below (~10 s at 0.025-0.05 s each).
    client = make(kind, "il_ingest_k", f"http://127.0.0.1:{port}", max_retries=300, backoff_max=0.05)
    pending = asyncio.ensure_future(call(client, "ingest", "feature.used", {"n": 1}))
    await asyncio.sleep(0.3)  # a few refused attempts
    app = web.Application()
    app.router.add_post("/v1/events", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    held.listen(128)
    await web.SockSite(runner, held).start()
    try:
        result = await asyncio.wait_for(pending, 10)
    finally:
        await call(client, "close")
        await runner.cleanup()
        held.close()
    assert result.id == "evt_late"
    assert len(bodies) == 1 and bodies[0]["idempotency_key"] == result.idempotency_key


async def test_a_timed_out_request_is_resent_with_the_same_key(fake: Receiver, kind: str) -> None:
    stored = b'{"id":"evt_slow","duplicate":false}'
    again = b'{"id":"evt_slow","duplicate":true}'
    # The first answer comes after the timeout; the resent one, at once, well within it.
    fake.plan = [Reply(status=202, body=stored, delay=2.0), Reply(status=200, body=again)]
    client = make(kind, "il_ingest_k", fake.url, timeout=1.0)
    result = await call(client, "ingest", "feature.used", {"n": 1})
    fake.plan = [Reply(status=202, body=stored, delay=2.0), Reply(status=200, body=again)]
    explicit = await call(client, "ingest", "feature.used", {"n": 1}, idempotency_key="order-9")
    await call(client, "close")

    keys = [b["idempotency_key"] for b in sent(fake)]
    assert keys == [result.idempotency_key] * 2 + ["order-9"] * 2
    # Our generated key is unique to that call: the server's "duplicate" is our own lost attempt.
    assert result == IngestResult("evt_slow", False, result.idempotency_key)
    # With the caller's key we cannot tell, so the server's answer stands.
    assert explicit == IngestResult("evt_slow", True, "order-9")


async def test_identify_and_group_post_the_documented_bodies(fake: Receiver, kind: str) -> None:
    fake.default = Reply(status=200, body=b'{"ok":true}')
    fake.fail_times(1, status=503)  # retried like events
    client = make(kind, "il_ingest_k", fake.url + "/")
    identified = await call(client, "identify", "u_1", {"email": "ada@acme.com", "plan": "pro"})
    grouped = await call(client, "group", "u_1", "acct_acme", {"name": "Acme", "seats": 12})
    with pytest.raises(ValidationError) as exc:
        await call(client, "group", "u_1", "", {})
    await call(client, "close")

    assert identified == {"ok": True} and grouped == {"ok": True}
    assert exc.value.field == "account_id" and exc.value.status is None
    assert [r.path for r in fake.requests] == ["/v1/identify", "/v1/identify", "/v1/group"]
    assert sent(fake)[1] == {"user_id": "u_1", "traits": {"email": "ada@acme.com", "plan": "pro"}}
    assert sent(fake)[2] == {
        "user_id": "u_1",
        "account_id": "acct_acme",
        "traits": {"name": "Acme", "seats": 12},
    }
    assert all(r.headers["Authorization"] == "Bearer il_ingest_k" for r in fake.requests)


async def test_background_batches_by_size_then_by_interval(fake: Receiver, kind: str) -> None:
    # An interval long enough that a full batch sent "at once" cannot be mistaken for one sent
    # by the interval, however slowly a loaded machine runs the sender.
    client = make(kind, "il_ingest_k", fake.url, background=True, batch_size=10, flush_interval=2.0)
    for i in range(20):
        await call(client, "ingest", "feature.used", {"n": i})
    queued_20th = time.time()
    for i in range(20, 25):
        await call(client, "ingest", "feature.used", {"n": i})

    async def requests(n: int) -> bool:
        return len(fake.requests) >= n

    await wait_for(lambda: requests(3), timeout=10)
    await call(client, "close")

    assert [len(b["batch"]) for b in sent(fake)] == [10, 10, 5]
    # Full batches leave at once; the remainder only when flush_interval has passed.
    assert fake.requests[1].at - queued_20th < 1.5
    assert fake.requests[2].at - queued_20th >= 1.95  # the 21st was queued after the 20th
    items = [item for b in sent(fake) for item in b["batch"]]
    assert [item["payload"]["n"] for item in items] == list(range(25))
    assert len({item["idempotency_key"] for item in items}) == 25


async def test_a_failed_batch_is_retried_with_the_same_keys(fake: Receiver, kind: str) -> None:
    errors: list[Any] = []
    fake.fail_times(2, status=500)
    client = make(kind, "il_ingest_k", fake.url, background=True, on_error=lambda *a: errors.append(a))
    for i in range(5):
        await call(client, "ingest", "feature.used", {"n": i})
    assert await call(client, "flush") is True
    await call(client, "close")
    bodies = sent(fake)
    assert len(bodies) == 3 and errors == []
    assert bodies[0] == bodies[1] == bodies[2]


async def test_a_batch_that_cannot_be_sent_is_reported_to_on_error(fake: Receiver, kind: str) -> None:
    errors: list[tuple[IngestlayerError, list[dict[str, Any]]]] = []
    fake.default = Reply(status=401, body=b'{"error":{"code":"unauthorized","message":"revoked"}}')
    client = make(
        kind, "il_ingest_k", fake.url, background=True, on_error=lambda e, ev: errors.append((e, ev))
    )
    for i in range(3):
        await call(client, "ingest", "feature.used", {"n": i}, idempotency_key=f"k{i}")
    await call(client, "close")
    assert len(errors) == 1
    assert isinstance(errors[0][0], AuthenticationError)
    assert [e["idempotency_key"] for e in errors[0][1]] == ["k0", "k1", "k2"]


async def test_the_default_on_error_logs_the_lost_events(
    fake: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    fake.default = Reply(status=403, body=b'{"error":{"code":"forbidden","message":"no"}}')
    client = AsyncClient("il_ingest_k", fake.url, background=True, **FAST)
    await client.ingest("feature.used", {}, idempotency_key="lost-1")
    await client.close()
    assert "1 event(s) not sent" in caplog.text and "lost-1" in caplog.text


# --- local validation, encoding and misc -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "field"),
    [
        (("", {}), {}, "type"),
        (("feature.used", ["not", "a", "dict"]), {}, "payload"),
        (("feature.used", {"f": object()}), {}, "payload"),
        (("feature.used", {"f": float("nan")}), {}, "payload"),
        (("feature.used", {}), {"idempotency_key": ""}, "idempotency_key"),
        (("feature.used", {}), {"idempotency_key": "k" * 256}, "idempotency_key"),
        (("feature.used", {}), {"occurred_at": object()}, "occurred_at"),
    ],
)
def test_bad_arguments_are_rejected_before_sending(
    args: tuple[Any, ...], kwargs: dict[str, Any], field: str
) -> None:
    with (
        Client("il_ingest_k", "http://127.0.0.1:9", max_retries=0) as client,
        pytest.raises(ValidationError) as exc,
    ):
        client.ingest(*args, **kwargs)
    assert exc.value.field == field and exc.value.status is None and exc.value.attempts == 0


async def test_payloads_with_dates_uuids_and_decimals_are_encoded(fake: Receiver) -> None:
    from decimal import Decimal

    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    async with AsyncClient("il_ingest_k", fake.url) as client:
        await client.ingest(
            "invoice.paid",
            {
                "at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
                "id": ident,
                "amount": Decimal("12.30"),
                "ü": "ß",
            },
            occurred_at=1717000000,
        )
    assert sent(fake)[0]["payload"] == {
        "at": "2026-01-02T03:04:05+00:00",
        "id": str(ident),
        "amount": "12.30",
        "ü": "ß",
    }
    assert sent(fake)[0]["occurred_at"] == 1717000000.0


def test_constructor_rejects_bad_settings() -> None:
    for kwargs in ({"batch_size": 0}, {"batch_size": 1001}, {"timeout": 0}, {"max_retries": -1}):
        with pytest.raises(ValueError):
            Client("il_ingest_k", **kwargs)
    with pytest.raises(ValueError, match="api_key"):
        Client("")
    with pytest.raises(ValueError, match="base_url"):
        AsyncClient("il_ingest_k", "ftp://example.com")


def test_backoff_grows_exponentially_with_jitter_and_a_cap() -> None:
    for retry in range(1, 12):
        step = min(30.0, 0.5 * 2 ** (retry - 1))
        delays = [_transport.backoff_delay(retry, 0.5, 30.0) for _ in range(50)]
        assert all(step / 2 <= d <= step for d in delays)
        assert len(set(delays)) > 1


def test_retry_after_parsing() -> None:
    parse = _transport.parse_retry_after
    assert parse("3") == 3.0 and parse(" 0 ") == 0.0 and parse(None) is None and parse("soon") is None
    assert parse("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse("nan") is None and parse("-5") == 0.0


def test_public_names_are_exported() -> None:
    assert set(ingestlayer.sdk.__all__) >= {
        "Client",
        "AsyncClient",
        "IngestlayerError",
        "AuthenticationError",
        "ValidationError",
        "RateLimitError",
        "ServerError",
        "ConnectionError",
        "verify",
        "WebhookVerificationError",
    }
    for name in ingestlayer.sdk.__all__:
        assert getattr(ingestlayer.sdk, name) is not None
    for cls in (AuthenticationError, ValidationError, RateLimitError, ServerError):
        assert issubclass(cls, APIError) and issubclass(cls, IngestlayerError)
    assert issubclass(ConnectionError, IngestlayerError)


@pytest.mark.parametrize("module", [_sync_client])  # the SDK's modules that hold examples
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
