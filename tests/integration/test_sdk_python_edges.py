"""The Python SDK in the corners production finds: batches the server refuses as a whole, many
threads, a server that stays down, and shutting down with a backlog.

Each test here failed before the fix it covers; tests/integration/test_sdk_python.py has the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import sys
import threading
import time
from typing import Any

import pytest

from ingestlayer.sdk import AsyncClient, Client, IngestlayerError, QueueFullError
from tests.integration.test_sdk_python import FAST, call, events_of, free_port, make
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, start_server, wait_for

Reported = list[tuple[IngestlayerError, list[dict[str, Any]]]]


def collector() -> tuple[Reported, Any]:
    reported: Reported = []

    def on_error(error: IngestlayerError, events: list[dict[str, Any]]) -> None:
        reported.append((error, events))

    return reported, on_error


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_number_beyond_64_bits_costs_only_its_own_event(sqlite_url: str, kind: str) -> None:
    # The server refuses such a body with a 422 that names no event; the whole batch used to be
    # reported lost, every event of it.
    server = await start_server(sqlite_url)
    reported, on_error = collector()
    try:
        client = make(kind, server.ingest_key, server.url, background=True, on_error=on_error)
        for n in (1, 2, 2**70, 4, 5):
            await call(client, "ingest", "huge.int", {"n": n})
        assert await call(client, "close")
        stored = await events_of(server, "huge.int")
    finally:
        await server.stop()
    assert sorted(e["payload"]["n"] for e in stored) == [1, 2, 4, 5]
    assert [[e["payload"]["n"] for e in events] for _, events in reported] == [[2**70]]
    assert reported[0][0].status == 422


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_smaller_body_limit_than_ours_splits_the_batch(sqlite_url: str, kind: str) -> None:
    # As behind nginx (client_max_body_size 1m by default) or a server configured lower: the 413
    # for the whole request names no event. Before, every event of the batch was dropped.
    server = await start_server(sqlite_url, max_request_bytes=4096)
    reported, on_error = collector()
    try:
        client = make(kind, server.ingest_key, server.url, background=True, on_error=on_error)
        for n in range(20):
            await call(client, "ingest", "split.batch", {"n": n, "pad": "x" * 500})
        await call(client, "ingest", "split.batch", {"n": -1, "pad": "x" * 5000})  # alone too large
        assert await call(client, "close")
        stored = await events_of(server, "split.batch")
    finally:
        await server.stop()
    assert sorted(e["payload"]["n"] for e in stored) == list(range(20))
    assert [[e["payload"]["n"] for e in events] for _, events in reported] == [[-1]]
    assert reported[0][0].status == 413


async def test_threads_that_ended_leave_no_connection_open(srv: RunningServer) -> None:
    # A thread per request (ThreadingHTTPServer, asyncio.to_thread): each thread's keep-alive
    # connection used to stay open until close(), one leaked socket per request.
    client = Client(srv.ingest_key, srv.url, **FAST)

    def one_request() -> None:
        thread = threading.Thread(target=client.ingest, args=("thread.request", {}))
        thread.start()
        thread.join()

    try:
        for _ in range(20):
            await asyncio.to_thread(one_request)
        still_open = len(client._http._open)
    finally:
        client.close()
    assert still_open <= 1, still_open
    assert len(await events_of(srv, "thread.request")) == 20


def test_a_full_queue_does_not_make_threads_wait_for_each_other() -> None:
    # The server is down and the queue full: each ingest() may wait `timeout` for room, but it
    # used to hold a lock meanwhile, so the n-th thread waited n timeouts.
    _, on_error = collector()
    client = Client(
        "il_ingest_k",
        f"http://127.0.0.1:{free_port()}",
        background=True,
        timeout=2,
        max_queue_size=1,
        flush_interval=0,
        # The sender's retry (10-20 s away) frees no room while the four wait.
        backoff_base=20,
        backoff_max=20,
        on_error=on_error,
    )
    try:
        client.ingest("queue.full", {})
        time.sleep(0.2)  # the sender took it and is backing off: it still counts, the queue is full
        waited: list[float] = []

        def one() -> None:
            started = time.monotonic()
            with pytest.raises(QueueFullError):
                client.ingest("queue.full", {})
            waited.append(time.monotonic() - started)

        threads = [threading.Thread(target=one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        client.close(timeout=0.1)
    assert len(waited) == 4
    # Side by side, about 2 s each; one after the other (as before) 2, 4, 6 and 8 s.
    assert max(waited) < 5, waited


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_close_honours_its_timeout_and_reports_the_backlog(kind: str) -> None:
    # The server is down: close(timeout) must return in about that time, and the events it gives
    # up on go to on_error (they were only counted in a log line; a full queue also made the sync
    # close() block through a whole batch's retries before its timeout even started).
    reported, on_error = collector()
    client = make(
        kind,
        "il_ingest_k",
        f"http://127.0.0.1:{free_port()}",
        background=True,
        batch_size=1,
        flush_interval=0,
        max_queue_size=4,
        max_retries=3,
        backoff_base=3,
        backoff_max=3,
        on_error=on_error,
    )
    keys = [f"k{i}" for i in range(4)]
    for key in keys:
        await call(client, "ingest", "backlog.event", {}, idempotency_key=key)
        await asyncio.sleep(0.05)
    started = time.monotonic()
    assert await call(client, "close", 0.5) is False
    elapsed = time.monotonic() - started
    assert elapsed < 3.5, elapsed  # before: a whole batch's retries, 3 x 1.5-3 s
    given_up = [e["idempotency_key"] for _, events in reported for e in events]
    assert sorted(given_up) == keys  # the batch being retried is reported too (sync: it was not)
    assert all("close() gave up" in str(error) for error, _ in reported)


async def test_a_close_that_gives_up_reports_the_batch_in_flight_once(receiver: Receiver) -> None:
    # The sync sender thread kept the batch it was retrying: close(timeout) reported only the
    # events still queued, and at exit the daemon thread died with the rest. Now close() reports
    # them all, and the sender neither retries them again nor reports them a second time.
    receiver.default = Reply(status=503, body=b'{"error":{"code":"unavailable","message":"down"}}')
    reported, on_error = collector()
    client = Client(
        "il_ingest_k",
        receiver.url,
        background=True,
        batch_size=2,
        flush_interval=0,
        max_retries=50,
        backoff_base=0.2,
        backoff_max=0.2,
        on_error=on_error,
    )
    for i in range(4):
        client.ingest("inflight.event", {}, idempotency_key=f"k{i}")

    async def retrying() -> bool:
        return len(receiver.requests) >= 2

    await wait_for(retrying)
    assert await asyncio.to_thread(client.close, 0.3) is False
    requests_at_give_up = len(receiver.requests)
    await asyncio.sleep(1)  # five backoffs: time enough to retry, or to report again
    given_up = [e["idempotency_key"] for _, events in reported for e in events]
    assert given_up == ["k0", "k1", "k2", "k3"]  # the batch in flight first, each event once
    assert len(receiver.requests) <= requests_at_give_up + 1  # at most the attempt under way
    # Everything was sent or reported: a flush has nothing to wait for (the sender that close()
    # gave up on answers no flush, which waited forever).
    assert await asyncio.wait_for(asyncio.to_thread(client.flush), 5) is True


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_max_queue_size_counts_the_events_the_sender_holds(kind: str) -> None:
    # The sender takes up to batch_size events out of the queue; while the server is down they are
    # still waiting to be sent, but they used to free their places: max_queue_size=5 let 10 in.
    reported, on_error = collector()
    client = make(
        kind,
        "il_ingest_k",
        f"http://127.0.0.1:{free_port()}",
        background=True,
        timeout=0.3,
        batch_size=5,
        flush_interval=0,
        max_queue_size=5,
        backoff_base=5,
        backoff_max=5,
        on_error=on_error,
    )
    accepted = 0
    with pytest.raises(QueueFullError):
        for i in range(20):
            await call(client, "ingest", "bounded.queue", {}, idempotency_key=f"k{i}")
            accepted += 1
            await asyncio.sleep(0.05)  # the sender takes what is queued
    assert accepted == 5
    assert await call(client, "close", 0.2) is False
    given_up = [e["idempotency_key"] for _, events in reported for e in events]
    assert given_up == [f"k{i}" for i in range(5)]


async def test_an_async_ingest_waiting_for_room_when_the_client_closes_is_refused_not_lost() -> None:
    """An ingest() waiting for room in a full queue, and close() giving up meanwhile: the event
    was accepted (None) after close had handed its backlog to on_error, and then sat in a queue
    nothing would send (a new sender started after close, the exit hook gone)."""
    reported, on_error = collector()
    client = AsyncClient(
        "il_ingest_k",
        f"http://127.0.0.1:{free_port()}",
        background=True,
        timeout=5,
        batch_size=1,
        flush_interval=0,
        max_queue_size=1,
        backoff_base=5,
        backoff_max=5,
        on_error=on_error,
    )
    await client.ingest("room.wait", {}, idempotency_key="e1")
    waiting = asyncio.create_task(client.ingest("room.wait", {}, idempotency_key="e2"))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    assert await client.close(timeout=0.3) is False
    with pytest.raises(IngestlayerError, match="closed while the event waited for room"):
        await asyncio.wait_for(waiting, 5)
    assert [e["idempotency_key"] for _, events in reported for e in events] == ["e1"]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_timeout_bounds_the_whole_request_against_a_server_that_trickles(kind: str) -> None:
    """A server answering one byte every 0.3 s: the sync client's timeout bounded each read, not
    the request, and a call with timeout=1 took minutes (the async client's bounded it whole)."""

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
            for byte in b"HTTP/1.1 202 Accepted\r\nContent-Length: 40\r\n\r\n" + b" " * 40:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.3)
        writer.close()

    listener = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    client = make(kind, "il_ingest_k", f"http://127.0.0.1:{port}", timeout=1, max_retries=0)
    started = time.monotonic()
    try:
        with pytest.raises(IngestlayerError):
            await call(client, "ingest", "slow.answer", {}, idempotency_key="k")
    finally:
        await call(client, "close", 1)
        listener.close()
    # The answer takes 29 s; the timeout is 1 s.
    assert time.monotonic() - started < 15, time.monotonic() - started


async def test_an_async_close_that_gives_up_reports_an_event_rejected_alone_only_once(
    receiver: Receiver,
) -> None:
    """One event of a batch refused by name (422 batch[1]), the rest retried against 503s, then
    close(timeout) gives up: the refused event went to on_error a second time with the batch."""
    receiver.plan = [
        Reply(
            status=422,
            body=b'{"error":{"code":"validation_error","message":"bad","field":"batch[1].type"}}',
        )
    ]
    receiver.default = Reply(status=503, body=b'{"error":{"code":"unavailable","message":"down"}}')
    reported, on_error = collector()
    client = AsyncClient(
        "il_ingest_k",
        receiver.url,
        background=True,
        batch_size=4,
        flush_interval=0,
        max_retries=50,
        backoff_base=0.2,
        backoff_max=0.2,
        on_error=on_error,
    )
    for key in ("a", "bad", "c", "d"):
        await client.ingest("one.bad", {}, idempotency_key=key)

    async def retrying() -> bool:
        return len(receiver.requests) >= 2

    await wait_for(retrying)
    assert await client.close(timeout=0.3) is False
    given_up = [(type(error).__name__, e["idempotency_key"]) for error, events in reported for e in events]
    assert sorted(given_up) == [
        ("IngestlayerError", "a"),
        ("IngestlayerError", "c"),
        ("IngestlayerError", "d"),
        ("ValidationError", "bad"),
    ], given_up


async def test_a_flush_that_a_close_overtakes_returns(srv: RunningServer) -> None:
    """flush() checked the client was open, then close() stopped the sender before flush's
    marker was queued: nothing answered the marker, and flush() without a timeout never returned.
    The interleaving is forced by closing from inside the queue's put."""
    from ingestlayer.sdk._sync_client import _Flush

    client = Client(srv.ingest_key, srv.url, background=True, flush_interval=0.05)
    client.ingest("race.event", {}, idempotency_key="k")
    assert client._queue is not None
    put = client._queue.put

    def put_after_close(item: Any, *args: Any, **kwargs: Any) -> None:
        if isinstance(item, _Flush) and not item.stop:
            client.close(timeout=5)
        put(item, *args, **kwargs)

    client._queue.put = put_after_close  # type: ignore[method-assign]
    assert await asyncio.wait_for(asyncio.to_thread(client.flush), 10) is True
    status, listed = await srv.request("GET", "/v1/events")
    assert status == 200 and len(listed["data"]) == 1, listed


_EXIT_WITH_BACKLOG = """
import atexit, sys, time
from ingestlayer.sdk import Client
lost = []
def report():
    print(sorted(e["idempotency_key"] for e in lost))
    print(time.monotonic() - exiting_at)  # how long the SDK's exit hook took
# Registered first, so it runs after the SDK's own exit hook (atexit is last in, first out).
atexit.register(report)
client = Client("il_ingest_k", sys.argv[1], background=True, flush_interval=0,
                batch_size=int(sys.argv[2]), shutdown_timeout=1, backoff_base=5, backoff_max=5,
                on_error=lambda error, events: lost.extend(events))
for i in range(5):
    client.ingest("exit.backlog", {"n": i}, idempotency_key=f"key-{i}")
time.sleep(0.2)
exiting_at = time.monotonic()
"""


async def run_script(script: str, *args: str) -> tuple[str, str]:
    """Run ``script`` in a fresh interpreter; its stdout and stderr (killed after 30 s)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        script,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()


# batch_size 1: key-0 is in the sender's hands (retrying), four are queued; 100: all five in its hands.
@pytest.mark.parametrize("batch_size", [1, 100])
async def test_exit_with_the_server_down_hands_the_backlog_to_on_error(batch_size: int) -> None:
    out, _ = await run_script(_EXIT_WITH_BACKLOG, f"http://127.0.0.1:{free_port()}", str(batch_size))
    reported, exit_seconds = out.splitlines()
    # shutdown_timeout=1; timed in the child, so a slow interpreter start does not count.
    assert float(exit_seconds) < 4, exit_seconds
    # Every event reaches on_error once, those the sender was retrying too (they used to die with it).
    assert reported == str([f"key-{i}" for i in range(5)])


_ASYNC_EXIT_WITH_BACKLOG = """
import asyncio, atexit, sys, time
from ingestlayer.sdk import AsyncClient
lost = []
def report():
    print(sorted(e["idempotency_key"] for e in lost))
    print(time.monotonic() - exiting_at)  # how long the SDK's exit hook took
atexit.register(report)  # runs after the SDK's exit hook, registered later
async def main():
    client = AsyncClient("il_ingest_k", sys.argv[1], background=True, flush_interval=0,
                         shutdown_timeout=1, max_retries=30, backoff_base=0.5, backoff_max=0.5,
                         on_error=lambda error, events: lost.extend(events))
    for i in range(5):
        await client.ingest("exit.backlog", {"n": i}, idempotency_key=f"key-{i}")
    await asyncio.sleep(0.2)
    # no close(): asyncio.run cancels the sender task and the exit hook gets the backlog
asyncio.run(main())
exiting_at = time.monotonic()
"""


@pytest.mark.parametrize("server", ["refusing", "silent"])
async def test_async_exit_with_the_server_down_keeps_to_shutdown_timeout(server: str) -> None:
    # The AsyncClient's exit hook sent the leftovers with every retry and no deadline: 30 retries
    # took ~11 s against a refusing port, and each request to a silent server waited `timeout`.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # connections complete in the backlog; nothing ever answers
        port = silent.getsockname()[1] if server == "silent" else free_port()
        out, _ = await run_script(_ASYNC_EXIT_WITH_BACKLOG, f"http://127.0.0.1:{port}")
    reported, exit_seconds = out.splitlines()
    assert float(exit_seconds) < 4, exit_seconds  # shutdown_timeout=1
    assert reported == str([f"key-{i}" for i in range(5)])


@pytest.mark.parametrize(
    ("base_url", "says"),
    [
        ("ftp://events.example.com?token=sekrit-token", "must be an http:// or https:// URL with a host"),
        (
            "https://events.example.com/?token=sekrit-token",
            "must not carry a query or fragment (host events.example.com)",
        ),
        ("https://events.example.com/#sekrit-token", "must not carry a query or fragment"),
        ("https://ingest:sekrit-token@events.example.com", "must not carry a user name or password"),
        ("https://sekrit-token@events.example.com", "must not carry a user name or password"),
        ("https://ingest:sekrit-token/v1", "must have a port from 0 to 65535"),
        ("sekrit-token", "must be an http:// or https:// URL"),
    ],
)
@pytest.mark.parametrize("kind", [Client, AsyncClient])
def test_a_refused_base_url_is_not_repeated_in_the_error(
    base_url: str, says: str, kind: type[Client] | type[AsyncClient]
) -> None:
    """Errors end up in logs, and a base_url may hold a credential: the error names the problem
    (and the host at most). A user name and password used to be dropped without a word, so the
    credential the caller meant to send was never sent."""
    with pytest.raises(ValueError, match=re.escape(says)) as refused:
        kind("il_ingest_k", base_url=base_url)
    assert "sekrit" not in str(refused.value)
