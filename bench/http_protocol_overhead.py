"""CPU added per request by ingestlayer.http_protocol, in-process: uvicorn's HttpToolsProtocol
and the limited one are fed the same requests through a stub transport, alternately, and the
best of several rounds is compared (a load test on a shared machine could not see 100 ns).

The ASGI task is not started (the cycle is marked answered at once): the two classes start it
the same way, and its cost (microseconds) would only add noise. Also timed: one sweep over
10,000 idle keep-alive connections.

    python bench/http_protocol_overhead.py

Timing on a shared machine is noisy; instructions are not. ``--feed old|new N`` only feeds N
requests, to be counted under callgrind at two N (the difference over the difference in N is
the count per request; PYTHONHASHSEED=0 keeps the runs alike):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        python bench/http_protocol_overhead.py --feed new 22000
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from typing import Any

import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from ingestlayer.config import Settings
from ingestlayer.http_protocol import http_protocol

BODY = b'{"type":"feature.used","payload":{"user":"u_123","feature":"export"}}'
REQUEST = (
    b"POST /v1/events HTTP/1.1\r\n"
    b"Host: ingest.example.com\r\n"
    b"User-Agent: ingestlayer-python/1.0\r\n"
    b"Authorization: Bearer il_ingest_0123456789abcdef0123456789abcdef\r\n"
    b"Content-Type: application/json\r\n"
    b"Accept: */*\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
HEAD, _, _ = REQUEST.partition(b"\r\n\r\n")
BIG_BODY = b"[" + b"1," * 131_000 + b"1]"  # 256 KiB: counted into, then looked at once
BIG = REQUEST.replace(str(len(BODY)).encode(), str(len(BIG_BODY)).encode()).replace(BODY, BIG_BODY)


class StubTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closing = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 8000) if name in ("peername", "sockname") else default

    def write(self, data: Any) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _answered_at_once(self: HttpToolsProtocol, cycle: RequestResponseCycle, app: Any) -> None:
    cycle.response_complete = True


async def _app(scope: Any, receive: Any, send: Any) -> None:  # never run
    pass


def make(
    cls: type[HttpToolsProtocol], loop: asyncio.AbstractEventLoop, state: ServerState
) -> HttpToolsProtocol:
    config = uvicorn.Config(_app, http=cls, lifespan="off", log_config=None, access_log=False)
    config.load()
    bench_cls = type("Bench" + cls.__name__, (cls,), {"_start_asgi_task": _answered_at_once})
    proto: HttpToolsProtocol = bench_cls(config=config, server_state=state, app_state={}, _loop=loop)
    proto.connection_made(StubTransport())
    return proto


def per_request(proto: HttpToolsProtocol, reads: list[bytes], n: int) -> float:
    """CPU time (this thread's: a shared machine's other work is not counted) per request, ns."""
    feed = proto.data_received
    gc.collect()
    gc.disable()
    try:
        start = time.thread_time_ns()
        for _ in range(n):
            for data in reads:
                feed(data)
        return (time.thread_time_ns() - start) / n
    finally:
        gc.enable()


def compare(label: str, reads: list[bytes], n: int, rounds: int) -> None:
    loop = uvloop.new_event_loop()
    old_cls = HttpToolsProtocol
    new_cls = http_protocol(Settings())
    olds, news = [], []
    for i in range(rounds):
        old, new = make(old_cls, loop, ServerState()), make(new_cls, loop, ServerState())
        if i % 2:
            olds.append(per_request(old, reads, n))
            news.append(per_request(new, reads, n))
        else:
            news.append(per_request(new, reads, n))
            olds.append(per_request(old, reads, n))
    diffs = [b - a for a, b in zip(olds, news, strict=True)]
    q1, mid, q3 = statistics.quantiles(diffs, n=4)
    print(
        f"{label:30s} uvicorn {statistics.median(olds):6.0f} ns  limited {statistics.median(news):6.0f} ns  "
        f"added (median of {rounds} paired rounds of {n}) {mid:+4.0f} ns, middle half {q1:+.0f} to {q3:+.0f}"
    )
    loop.close()


def sweep(connections: int) -> None:
    loop = uvloop.new_event_loop()
    state = ServerState()
    cls = http_protocol(Settings())
    protos: list[Any] = [make(cls, loop, state) for _ in range(connections)]
    for proto in protos:
        proto.data_received(REQUEST)  # answered: idle, kept alive
    best = float("inf")
    for _ in range(20):
        now = loop.time()
        start = time.thread_time()
        for proto in protos:
            proto.check_deadlines(now)
        best = min(best, time.thread_time() - start)
    print(f"one sweep over {connections} idle keep-alive connections: {best * 1e3:.2f} ms CPU")
    loop.close()


def main() -> None:
    print(f"request: {len(REQUEST)} bytes ({len(HEAD) + 4}-byte head)")
    compare("one read per request", [REQUEST], 5_000, 201)
    compare("head, then body", [REQUEST[: len(HEAD) + 4], BODY], 5_000, 201)
    compare("head in 3 reads with the body", [HEAD[:40], HEAD[40:120], REQUEST[120:]], 5_000, 201)
    compare("256 KiB body in one read", [BIG], 200, 201)
    sweep(10_000)


def feed_only(which: str, n: int) -> None:
    loop = uvloop.new_event_loop()
    proto = make(HttpToolsProtocol if which == "old" else http_protocol(Settings()), loop, ServerState())
    gc.disable()
    for _ in range(n):
        proto.data_received(REQUEST)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--feed"]:
        feed_only(sys.argv[2], int(sys.argv[3]))
    else:
        main()
