"""CPU per webhook POST: aiohttp's client vs ``ingestlayer.delivery.http_client.HttpClient``.

A minimal receiver (raw asyncio + httptools on uvloop, answering ``200`` with a small body) runs in
a subprocess; this process, also on uvloop, POSTs ``--requests`` bodies of ~400 bytes with
``--concurrency`` in flight, first through one ``aiohttp.ClientSession`` (connector limit 128, a
per-request ``ClientTimeout``, ``read(1024)`` of the body, as the webhook destination does), then
through ``HttpClient``; ``--rounds`` alternates them again. For each run it prints requests/s and
this process's CPU µs per request (``time.process_time``); the CPU figure is the one to compare,
since the machine (2 cores, shared with the receiver) may be busy with other work.

    .venv/bin/python bench/http_client.py [--requests 20000] [--concurrency 96] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import cast

RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n"
    b"Date: Thu, 01 Jan 2026 00:00:00 GMT\r\nServer: bench\r\n\r\n"
    b'{"ok":true}'
)


# -- receiver (subprocess) ----------------------------------------------------------------------


def serve() -> None:
    import httptools
    import uvloop

    class Receiver(asyncio.Protocol):
        def __init__(self) -> None:
            self.parser = httptools.HttpRequestParser(self)
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                assert self.transport is not None
                self.transport.close()

        def on_message_complete(self) -> None:
            assert self.transport is not None
            self.transport.write(RESPONSE)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Receiver, "127.0.0.1", 0, backlog=1024)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()

    uvloop.run(main())


# -- load ---------------------------------------------------------------------------------------

BODY = (
    b'{"id":"evt_01JBENCHMARK0000000000000000","type":"order.created","created_at":'
    b'"2026-01-01T00:00:00Z","project":"prj_bench","data":{"order_id":"ord_123456","amount":4200,'
    b'"currency":"EUR","customer":{"id":"cus_987654","email":"someone@example.com","name":"Some One"},'
    b'"items":[{"sku":"SKU-1","qty":2,"price":1500},{"sku":"SKU-2","qty":1,"price":1200}],'
    b'"note":"benchmark payload of about four hundred bytes, similar to a small webhook event"}}'
)
HEADERS = {
    "Content-Type": "application/json",
    "User-Agent": "ingestlayer/0.1.0",
    "X-Ingestlayer-Event": "order.created",
    "X-Ingestlayer-Delivery": "dlv_01JBENCHMARK0000000000000000",
    "X-Ingestlayer-Attempt": "1",
    "X-Ingestlayer-Signature": "t=1767225600,v1=" + "ab" * 32,
}


async def drive(post: Callable[[], Awaitable[int]], requests: int, concurrency: int) -> tuple[float, float]:
    """Run ``requests`` posts with ``concurrency`` in flight; returns (wall s, CPU s)."""
    remaining = requests
    bad = 0

    async def worker() -> None:
        nonlocal remaining, bad
        while remaining > 0:
            remaining -= 1
            if await post() != 200:
                bad += 1

    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if bad:
        raise SystemExit(f"{bad} requests did not get 200")
    return wall, cpu


async def run(port: int, requests: int, concurrency: int, rounds: int) -> None:
    import aiohttp
    import yarl

    from ingestlayer.delivery.http_client import HttpClient

    url = yarl.URL(f"http://127.0.0.1:{port}/hooks")
    timeout = aiohttp.ClientTimeout(total=10)

    async def resolve(host: str, port: int) -> list[str]:
        return [host]

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=128))
    client = HttpClient(resolve=resolve, limit_per_host=128)

    async def aiohttp_post() -> int:
        async with session.post(
            url, data=BODY, headers=HEADERS, timeout=timeout, allow_redirects=False
        ) as resp:
            await resp.content.read(1024)
            return resp.status

    async def ours_post() -> int:
        resp = await client.post(url, BODY, HEADERS, timeout=10.0)
        return resp.status

    contenders = [("aiohttp", aiohttp_post), ("HttpClient", ours_post)]
    for _, post in contenders:  # warm up: connections, caches, code paths
        await drive(post, min(2000, requests), concurrency)
    results: dict[str, list[float]] = {name: [] for name, _ in contenders}
    print(f"{requests} POSTs of {len(BODY)} bytes, {concurrency} in flight, uvloop, pid {os.getpid()}")
    for round_no in range(1, rounds + 1):
        for name, post in contenders:
            wall, cpu = await drive(post, requests, concurrency)
            us = cpu / requests * 1e6
            results[name].append(us)
            print(f"  round {round_no} {name:>10}: {requests / wall:8.0f} req/s  {us:6.1f} CPU µs/request")
        ratio = results["HttpClient"][-1] / results["aiohttp"][-1]
        print(f"  round {round_no}      ratio: HttpClient / aiohttp CPU = {ratio:.2f}")
    await session.close()
    await client.close()
    a, o = min(results["aiohttp"]), min(results["HttpClient"])
    print(f"best CPU µs/request: aiohttp {a:.1f}, HttpClient {o:.1f}; ratio {o / a:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return

    import uvloop

    receiver = subprocess.Popen(
        [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True, bufsize=1
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        uvloop.run(run(port, args.requests, args.concurrency, args.rounds))
    finally:
        receiver.terminate()
        receiver.wait(timeout=10)


if __name__ == "__main__":
    main()
