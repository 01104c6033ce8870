"""A lean aiohttp load generator, run in its own process so it can be measured apart.

Modes:

``closed URL``  ``--connections`` workers each POST ``--body-file`` in a loop on keep-alive
                connections, for ``--warmup`` unmeasured then ``--duration`` measured seconds, or
                until ``--max-requests`` requests have succeeded (then ``--warmup`` is ignored).
``rate URL``    open loop: POST single events at ``--rate`` per second for ``--duration`` seconds,
                each carrying its send time (``payload.sent_at``, epoch seconds) so a receiver
                can measure ingest→delivery latency. At most ``--connections`` are in flight.

The report (JSON, to ``--out``): requests (2xx), errors, elapsed, p50_ms / p99_ms of the HTTP
round trip, and the status codes seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


class Stats:
    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0
        self.status: dict[int, int] = {}
        self.lat: list[float] = []
        self.measuring = False

    def record(self, status: int, seconds: float) -> None:
        if not self.measuring:
            return
        self.status[status] = self.status.get(status, 0) + 1
        if 200 <= status < 300:
            self.ok += 1
            self.lat.append(seconds)
        else:
            self.errors += 1


def session_for(connections: int) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=connections, limit_per_host=0, ttl_dns_cache=None)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=30),
        auto_decompress=False,
        skip_auto_headers=("User-Agent",),
    )


async def closed(args: argparse.Namespace, body: bytes) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **json.loads(args.headers)}
    stats = Stats()
    stop = False
    max_requests = args.max_requests or 0
    if max_requests:
        stats.measuring = True
    async with session_for(args.connections) as session:
        issued = 0

        async def worker() -> None:
            nonlocal stop, issued
            while not stop:
                if max_requests:
                    if issued >= max_requests:
                        break
                    issued += 1  # claimed before sending: never more than --max-requests sent
                t0 = time.perf_counter()
                try:
                    async with session.post(args.url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 599
                stats.record(status, time.perf_counter() - t0)
                if max_requests and stats.ok + stats.errors >= max_requests:
                    stop = True

        tasks = [asyncio.create_task(worker()) for _ in range(args.connections)]
        if not max_requests:
            await asyncio.sleep(args.warmup)
            stats.measuring = True
        t0 = time.perf_counter()
        if max_requests:
            await asyncio.wait(tasks, timeout=args.duration)
        else:
            await asyncio.sleep(args.duration)
        stop = True
        elapsed = time.perf_counter() - t0
        stats.measuring = False
        await asyncio.gather(*tasks, return_exceptions=True)
    return report(stats, elapsed)


async def rate(args: argparse.Namespace) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", **json.loads(args.headers)}
    stats = Stats()
    stats.measuring = True
    total = int(args.rate * args.duration)
    late = 0
    sem = asyncio.Semaphore(args.connections)
    async with session_for(args.connections) as session:

        async def one(seq: int) -> None:
            try:
                sent_at = time.time()
                body = orjson.dumps(
                    {"type": args.event_type, "payload": {"sent_at": sent_at, "seq": seq, "user_id": "u_1"}}
                )
                t0 = time.perf_counter()
                try:
                    async with session.post(args.url, data=body, headers=headers) as resp:
                        await resp.read()
                        status = resp.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 599
                stats.record(status, time.perf_counter() - t0)
            finally:
                sem.release()

        tasks: set[asyncio.Task[None]] = set()
        start = time.perf_counter()
        for seq in range(total):
            due = start + seq / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.01:
                late += 1
            await sem.acquire()
            task = asyncio.create_task(one(seq))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        send_elapsed = time.perf_counter() - start
        if tasks:
            await asyncio.wait(set(tasks), timeout=30)
    out = report(stats, send_elapsed)
    out.update(sent=total, late=late, target_rate=args.rate)
    return out


def report(stats: Stats, elapsed: float) -> dict[str, Any]:
    return {
        "requests": stats.ok,
        "errors": stats.errors,
        "elapsed": elapsed,
        "p50_ms": pct(stats.lat, 50) * 1000,
        "p99_ms": pct(stats.lat, 99) * 1000,
        "status": {str(k): v for k, v in sorted(stats.status.items())},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["closed", "rate"])
    p.add_argument("url")
    p.add_argument("--body-file")
    p.add_argument("--headers", default="{}", help="JSON object of extra request headers")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--max-requests", type=int, default=0)
    p.add_argument("--rate", type=float, default=100.0)
    p.add_argument("--event-type", default="bench.latency")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import uvloop

    result = uvloop.run(
        closed(args, Path(args.body_file).read_bytes()) if args.mode == "closed" else rate(args)
    )
    result["generator"] = "aiohttp"
    Path(args.out).write_text(json.dumps(result))
    print(json.dumps(result), file=sys.stderr)


if __name__ == "__main__":
    main()
