"""A bounded soak of ``ingestlayer serve``: mixed traffic for ``--minutes``, sampled every 10 s.

Everything runs on 127.0.0.1, in four processes:

- the server (``serve``), started through this file (``_server``) so that a probe runs inside its
  event loop: every 10 s it writes the number of asyncio tasks and of blocks Python's allocator
  holds and, every 60 s, the live objects counted by type after a collection, and with
  ``--tracemalloc`` the allocation sites that grew since the warm-up, to a JSON-lines file;
- a receiver (``_receiver``) with one path per behaviour: ``/ok`` answers 200, ``/fail`` 500,
  ``/hang`` never answers (the destination's timeout ends it), ``/r429`` answers every other
  request 429 with ``Retry-After: 1``, ``/slow`` answers 200 after 1.5 s, and a second port closes
  the connection in the middle of its answer;
- the traffic (``_traffic``): single events and batches at a moderate open-loop rate, a bulk replay
  of dead deliveries and a replay of a delivered one every 20 s, the management API listing events
  and deliveries three pages deep by cursor every 2 s, and a signed-in dashboard session loading
  one page a second;
- this process, which samples the server every 10 s: RSS, open file descriptors and threads from
  /proc, the probe's task count, the SQLite ``-wal`` and database sizes, ``GET /healthz`` and
  ``/readyz`` timed on a connection of their own, and the dispatcher's backlog read from the
  database (due deliveries not yet taken, those being attempted, leases already expired).

At the end traffic stops, the backlog drains, and every delivery is checked against its
destination's schedule. The verdict holds the growth of RSS, descriptors and tasks after the
warm-up to bounds that do not scale with time, the WAL to a bound, no lease past its end, every
delivery finished as its destination's behaviour says, and the health check's latency steady.

    .venv/bin/python bench/soak.py --minutes 8 [--backend sqlite|postgres] [--rate 300]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

SAMPLE_SECONDS = 10.0
WARMUP_SECONDS = 120.0
# Failing destinations: four attempts a second or so apart, so events die within the soak.
SCHEDULE = "[0, 1, 2, 4]"
# Event types by behaviour, with each one's share of the events (the rest go to /ok).
SHARES = {"fail": 0.02, "hang": 0.004, "r429": 0.002, "close": 0.01, "slow": 0.01}


# ---- inside the server process -----------------------------------------------------------------


def run_server_with_probe(argv: list[str]) -> None:
    """``ingestlayer <argv>``, with :func:`probe` running in its event loop when it serves."""
    probe_file = os.environ.get("SOAK_PROBE_FILE")
    if probe_file and argv[:1] == ["serve"]:
        original_run = asyncio.run

        def run_with_probe(main: Any, **kwargs: Any) -> Any:
            async def wrapped() -> Any:
                task = asyncio.get_running_loop().create_task(probe(Path(probe_file)))
                try:
                    return await main
                finally:
                    task.cancel()

            return original_run(wrapped(), **kwargs)

        asyncio.run = run_with_probe  # type: ignore[assignment]
    sys.argv = ["ingestlayer", *argv]
    from ingestlayer.entry import main

    main()


async def probe(path: Path) -> None:
    import gc
    import tracemalloc
    from collections import Counter
    from types import MethodType

    traced = bool(os.environ.get("SOAK_TRACEMALLOC"))
    if traced:
        tracemalloc.start(4)
    baseline: Any = None
    started = time.monotonic()
    tick = 0
    with path.open("a") as out:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            tick += 1
            # Blocks held by Python's allocator: flat while RSS grows means the growth is outside
            # Python's objects (SQLite's page cache filling as the database grows, fragmentation).
            doc: dict[str, Any] = {
                "t": time.time(),
                "tasks": len(asyncio.all_tasks()),
                "blocks": sys.getallocatedblocks(),
            }
            if tick % 6 == 0:
                gc.collect()  # count what is alive, not cycles (closed connections) awaiting collection
                objects = gc.get_objects()
                counts = Counter(type(o).__qualname__ for o in objects)
                doc["objects"] = sum(counts.values())
                doc["types"] = dict(counts.most_common(25))
                # Bound methods, by what they call: a callback kept past its use shows here.
                methods = Counter(o.__func__.__qualname__ for o in objects if isinstance(o, MethodType))
                doc["methods"] = dict(methods.most_common(10))
                del objects
                if traced:
                    snap = tracemalloc.take_snapshot()
                    if baseline is None and time.monotonic() - started >= WARMUP_SECONDS:
                        baseline = snap
                    elif baseline is not None:
                        top = snap.compare_to(baseline, "traceback")[:8]
                        doc["grown"] = [
                            {
                                "kib": round(s.size_diff / 1024, 1),
                                "count": s.count_diff,
                                "where": s.traceback.format(),
                            }
                            for s in top
                        ]
            out.write(json.dumps(doc) + "\n")
            out.flush()


# ---- the receiver ------------------------------------------------------------------------------


def run_receiver(port: int, close_port: int) -> None:
    from aiohttp import web

    counts: dict[str, int] = {}
    r429_seen = 0

    async def hook(request: web.Request) -> web.StreamResponse:
        nonlocal r429_seen
        await request.read()
        kind = request.match_info["kind"]
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "fail":
            return web.Response(status=500, text="boom")
        if kind == "hang":
            await asyncio.sleep(3600)
        if kind == "slow":
            await asyncio.sleep(1.5)
        if kind == "r429":
            r429_seen += 1
            if r429_seen % 2:
                return web.Response(status=429, headers={"Retry-After": "1"}, text="slow down")
        return web.Response(text='{"ok":true}', content_type="application/json")

    async def stats(_request: web.Request) -> web.Response:
        return web.json_response(counts)

    class CloseMidAnswer(asyncio.Protocol):
        """Reads a request's head, starts a 200 answer and closes the connection half-way."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            if b"\r\n\r\n" in self.buf:
                counts["close"] = counts.get("close", 0) + 1
                assert isinstance(self.transport, asyncio.Transport)
                self.transport.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"ok":')
                self.transport.close()

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/{kind}", hook)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.get_running_loop().create_server(CloseMidAnswer, "127.0.0.1", close_port)
        await asyncio.Event().wait()

    asyncio.run(main())


# ---- the traffic -------------------------------------------------------------------------------


def event_type(rng: random.Random) -> str:
    roll = rng.random()
    for kind, share in SHARES.items():
        if roll < share:
            return f"soak.{kind}"
        roll -= share
    return "soak.ok"


def run_traffic(base: str, ingest_key: str, admin_key: str, rate: float, seconds: float, out: Path) -> None:
    import re

    import aiohttp

    rng = random.Random(7)
    stats: dict[str, Any] = {
        "accepted": 0,
        "by_type": {},
        "errors": {},
        "replayed": 0,
        "pages": 0,
        "listed": 0,
    }
    ingest_h = {"Authorization": f"Bearer {ingest_key}"}
    admin_h = {"Authorization": f"Bearer {admin_key}"}

    def error(what: str) -> None:
        stats["errors"][what] = stats["errors"].get(what, 0) + 1

    def accepted(kinds: list[str]) -> None:
        stats["accepted"] += len(kinds)
        for k in kinds:
            stats["by_type"][k] = stats["by_type"].get(k, 0) + 1

    async def send(session: aiohttp.ClientSession, events: list[dict[str, Any]]) -> None:
        body: Any = events[0] if len(events) == 1 else {"batch": events}
        try:
            async with session.post(f"{base}/v1/events", json=body, headers=ingest_h) as resp:
                await resp.read()
                if resp.status == 202:
                    accepted([e["type"] for e in events])
                else:
                    error(f"ingest {resp.status}")
        except (TimeoutError, aiohttp.ClientError) as exc:
            error(f"ingest {type(exc).__name__}")

    def new_event() -> dict[str, Any]:
        return {
            "type": event_type(rng),
            "payload": {"user_id": f"u_{rng.randrange(10_000)}", "n": rng.random()},
        }

    async def ingest(session: aiohttp.ClientSession, end: float) -> None:
        # A third as single events (paced), two thirds in batches of 50.
        single_rate, tasks = rate / 3, set()

        def start(request: Any) -> None:
            task = asyncio.create_task(request)
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        next_batch = time.monotonic()
        while time.monotonic() < end:
            t0 = time.monotonic()
            if t0 >= next_batch:
                next_batch += 50 / (rate - single_rate)
                start(send(session, [new_event() for _ in range(50)]))
            if len(tasks) < 64:
                start(send(session, [new_event()]))
            await asyncio.sleep(max(0.0, 1 / single_rate - (time.monotonic() - t0)))
        await asyncio.gather(*tasks)

    async def replays(session: aiohttp.ClientSession, end: float) -> None:
        while time.monotonic() < end - 20:
            await asyncio.sleep(20)
            try:
                async with session.post(
                    f"{base}/v1/deliveries/replay", json={"status": ["dead"], "limit": 25}, headers=admin_h
                ) as resp:
                    doc = await resp.json()
                    stats["replayed"] += int(doc.get("count", 0)) if resp.status == 200 else 0
                    if resp.status != 200:
                        error(f"bulk replay {resp.status}")
                async with session.get(
                    f"{base}/v1/deliveries?status=delivered&limit=1", headers=admin_h
                ) as resp:
                    rows = (await resp.json())["data"]
                for row in rows:
                    async with session.post(
                        f"{base}/v1/deliveries/{row['id']}/replay", headers=admin_h
                    ) as resp:
                        await resp.read()
                        if resp.status in {200, 202}:
                            stats["replayed"] += 1
                        elif resp.status != 409:  # 409: being attempted right now
                            error(f"replay {resp.status}")
            except (TimeoutError, aiohttp.ClientError, KeyError, ValueError) as exc:
                error(f"replay {type(exc).__name__}")

    async def listings(session: aiohttp.ClientSession, end: float) -> None:
        queries = ["/v1/events?limit=50", "/v1/deliveries?limit=50", "/v1/deliveries?status=dead&limit=50"]
        i = 0
        while time.monotonic() < end:
            query = queries[i % len(queries)]
            i += 1
            cursor = ""
            try:
                for _ in range(3):
                    async with session.get(f"{base}{query}{cursor}", headers=admin_h) as resp:
                        if resp.status != 200:
                            error(f"list {resp.status}")
                            break
                        doc = await resp.json()
                    stats["listed"] += len(doc["data"])
                    if not doc.get("next_before"):
                        break
                    cursor = f"&before={doc['next_before']}"
            except (TimeoutError, aiohttp.ClientError, KeyError, ValueError) as exc:
                error(f"list {type(exc).__name__}")
            await asyncio.sleep(2)

    async def dashboard(end: float) -> None:
        pages = ["/", "/webhooks/logs", "/webhooks/dead", "/events", "/pipelines", "/webhooks/endpoints"]
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.get(f"{base}/login") as resp:
                csrf = re.search(r'name="csrf" value="([^"]+)"', await resp.text())
            form = {"key": admin_key, "csrf": csrf.group(1) if csrf else ""}
            async with browser.post(f"{base}/login", data=form, allow_redirects=False) as resp:
                if resp.status != 303:
                    error(f"login {resp.status}")
            i = 0
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    async with browser.get(f"{base}{pages[i % len(pages)]}", allow_redirects=False) as resp:
                        await resp.read()
                        if resp.status == 200:
                            stats["pages"] += 1
                        else:
                            error(f"page {pages[i % len(pages)]} {resp.status}")
                except (TimeoutError, aiohttp.ClientError) as exc:
                    error(f"page {type(exc).__name__}")
                i += 1
                await asyncio.sleep(max(0.0, 1 - (time.monotonic() - t0)))

    async def main() -> None:
        end = time.monotonic() + seconds
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(
            timeout=timeout, connector=aiohttp.TCPConnector(limit=80)
        ) as session:
            await asyncio.gather(
                ingest(session, end), replays(session, end), listings(session, end), dashboard(end)
            )

    asyncio.run(main())
    out.write_text(json.dumps(stats))


# ---- sampling, in this process -----------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            found[key] = int(value.split()[0])
    return found


def timed_get(conn: http.client.HTTPConnection, path: str, refused: list[str]) -> float:
    """Milliseconds to answer ``path``; an answer other than 200 is noted in ``refused``."""
    t0 = time.perf_counter()
    conn.request("GET", path)
    resp = conn.getresponse()
    resp.read()
    if resp.status != 200:
        refused.append(f"{path} {resp.status}")
    return (time.perf_counter() - t0) * 1000


def backlog(query: Any, db_url: str) -> dict[str, int]:
    now = time.time()
    rows = query(
        db_url,
        "SELECT"
        f" SUM(CASE WHEN status IN ('pending', 'retrying') AND due_at <= {now} THEN 1 ELSE 0 END),"
        " SUM(CASE WHEN status = 'delivering' THEN 1 ELSE 0 END),"
        f" SUM(CASE WHEN status = 'delivering' AND due_at < {now - 1} THEN 1 ELSE 0 END)"
        " FROM deliveries WHERE status IN ('pending', 'retrying', 'delivering')",
    )
    due, leased, expired = (int(v or 0) for v in rows[0])
    (jobs,) = query(db_url, "SELECT COUNT(*) FROM route_jobs")[0]
    return {"due": due, "leased": leased, "expired": expired, "unrouted": int(jobs)}


def last_probe(path: Path) -> dict[str, Any]:
    lines = path.read_text().splitlines() if path.exists() else []
    return json.loads(lines[-1]) if lines else {}


def slope_per_minute(xs: list[float], ys: list[float]) -> float:
    if len(xs) < 3:
        return 0.0
    return statistics.linear_regression(xs, ys).slope * 60


def verdict(
    samples: list[dict[str, Any]], checks: dict[str, Any], minutes: float
) -> list[tuple[str, bool, str]]:
    warm = [s for s in samples if s["t"] >= WARMUP_SECONDS] or samples
    ts = [s["t"] for s in warm]
    third = max(1, len(warm) // 3)
    out: list[tuple[str, bool, str]] = []

    def flat(name: str, key: str, allowed: float, unit: str) -> None:
        values = [float(s[key]) for s in warm if s.get(key) is not None]
        if not values:
            out.append((name, False, "no samples"))
            return
        # Medians of the first and last thirds: one busy moment is no growth.
        grown = statistics.median(values[-third:]) - statistics.median(values[:third])
        slope = slope_per_minute(ts[: len(values)], values)
        ok = grown <= allowed
        out.append(
            (
                name,
                ok,
                f"{values[0]:.0f} -> {values[-1]:.0f} {unit}, last third over first {grown:+.1f}"
                f" (allowed {allowed:g}), slope {slope:+.2f}/min",
            )
        )

    flat("RSS flat", "rss_mb", 16.0, "MB")
    # Connection pools (the database's, the receiver's keep-alive ones) fill to the busiest
    # moment of the last half minute or so: a few more after warm-up is not a leak.
    flat("fds flat", "fds", 16.0, "fds")
    flat("threads flat", "threads", 2.0, "threads")
    flat("tasks flat", "tasks", 20.0, "tasks")
    flat("Python's blocks flat", "kblocks", 50.0, "thousand blocks")
    wal = [s["wal_mb"] for s in samples if s.get("wal_mb") is not None]
    if wal:
        out.append(("WAL bounded", max(wal) < 64, f"max {max(wal):.1f} MB, last {wal[-1]:.1f} MB"))
    out.append(
        (
            "no lease past its end",
            max(s["expired"] for s in samples) == 0,
            f"max expired leases seen {max(s['expired'] for s in samples)}",
        )
    )
    first, last = [s["healthz_ms"] for s in warm[:third]], [s["healthz_ms"] for s in warm[-third:]]
    ok = statistics.median(last) <= 3 * statistics.median(first) + 5
    out.append(
        (
            "health latency steady",
            ok,
            f"median {statistics.median(first):.1f} ms first third, {statistics.median(last):.1f} ms last",
        )
    )
    refused = sum(s["refused"] for s in samples)
    out.append(("health checks answered 200", refused == 0, f"{refused} of {6 * len(samples)} were not"))
    out.append(
        (
            "every delivery finished per schedule",
            not checks["problems"],
            "; ".join(checks["problems"]) or "yes",
        )
    )
    return out


def settle_and_check(query: Any, db_url: str, sent: dict[str, Any], deadline_s: float) -> dict[str, Any]:
    """Wait until nothing is owed, then hold each destination's deliveries to its behaviour."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        (owed,) = query(
            db_url, "SELECT COUNT(*) FROM deliveries WHERE status IN ('pending','retrying','delivering')"
        )[0]
        (jobs,) = query(db_url, "SELECT COUNT(*) FROM route_jobs")[0]
        if owed == 0 and jobs == 0:
            break
        time.sleep(2)
    rows = query(
        db_url,
        "SELECT event_type, status, attempts - retry_base, COUNT(*) FROM deliveries"
        " WHERE event_type LIKE 'soak.%' GROUP BY event_type, status, attempts - retry_base",
    )
    by_type: dict[str, dict[str, int]] = {}
    problems: list[str] = []
    for etype, status, tries, n in rows:
        kind = etype.split(".", 1)[1]
        by_type.setdefault(kind, {})
        by_type[kind][status] = by_type[kind].get(status, 0) + int(n)
        if status in ("pending", "retrying", "delivering"):
            problems.append(f"{n} {etype} still {status}")
        elif kind in ("ok", "slow") and status != "delivered":
            problems.append(f"{n} {etype} {status} after {tries} attempts")
        elif kind in ("fail", "hang", "close") and (status != "dead" or tries != 4):
            problems.append(f"{n} {etype} {status} after {tries} attempts (want dead after 4)")
        elif kind == "r429" and status == "dead" and tries != 4:
            problems.append(f"{n} {etype} dead after {tries} attempts")
    for kind_type, n in sent["by_type"].items():
        kind = kind_type.split(".", 1)[1]
        got = sum(by_type.get(kind, {}).values())
        if got != n:
            problems.append(f"{kind_type}: {n} accepted, {got} deliveries")
    return {"by_type": by_type, "problems": problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rate", type=float, default=300.0, help="events per second, singles and batches")
    parser.add_argument("--tracemalloc", action="store_true", help="record what grew, in the probe's file")
    parser.add_argument("--pg-prefix", default="il_soak_", help="start of the PostgreSQL database's name")
    parser.add_argument("--keep", action="store_true", help="keep the working directory")
    parser.add_argument(
        "--port-base",
        type=int,
        default=0,
        help="listen on this port and the next two (default: any free ports)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harness import PYTHON, Deployment, Proc, free_port, log, query, wait_http, workdir

    here = str(Path(__file__).resolve())
    with workdir(keep=args.keep) as wd:
        if args.port_base:
            port, close_port, server_port = args.port_base, args.port_base + 1, args.port_base + 2
        else:
            port, close_port, server_port = free_port(), free_port(), free_port()
        rurl = f"http://127.0.0.1:{port}"
        dests = {kind: f"{rurl}/{kind}" for kind in ("ok", "fail", "hang", "r429", "slow")}
        dests["close"] = f"http://127.0.0.1:{close_port}/close"
        timeouts = {"hang": 2, "slow": 5}
        yaml = "pipelines:\n" + "".join(
            f"  - name: soak-{kind}\n"
            f'    source: {{ match: ["soak.{kind}"] }}\n'
            "    destinations:\n"
            f'      - webhook.out: {{ url: "{url}", auth: hmac, secret: "ref:bench-hooks",'
            f" timeout: {timeouts.get(kind, 5)} }}\n"
            f"        retry: {{ schedule: {SCHEDULE} }}\n"
            for kind, url in dests.items()
        )
        probe_file = wd / "probe.jsonl"
        receiver = Proc(
            "receiver", [PYTHON, here, "_receiver", str(port), str(close_port)], env=None, cwd=wd, logdir=wd
        )
        dep = Deployment(
            args.backend,
            "serve",
            wd,
            pipeline_yaml=yaml,
            command=[PYTHON, here, "_server"],
            extra_env={
                "SOAK_PROBE_FILE": str(probe_file),
                **({"SOAK_TRACEMALLOC": "1"} if args.tracemalloc else {}),
            },
            port=server_port,
            pg_prefix=args.pg_prefix,
        )
        samples: list[dict[str, Any]] = []
        traffic: Proc | None = None
        try:
            wait_http(f"{rurl}/stats", receiver)
            with dep.run():
                pid = dep.server_pids["serve"]
                db_file = Path(dep.db_url.split(":///", 1)[1]) if args.backend == "sqlite" else None
                seconds = args.minutes * 60
                traffic_out = wd / "traffic.json"
                traffic = Proc(
                    "traffic",
                    [
                        PYTHON,
                        here,
                        "_traffic",
                        dep.url,
                        dep.ingest_key,
                        dep.admin_key,
                        str(args.rate),
                        str(seconds),
                        str(traffic_out),
                    ],
                    env=None,
                    cwd=wd,
                    logdir=wd,
                )
                log(f"soak: {args.minutes:g} min at {args.rate:g} events/s on {args.backend}, pid {pid}")
                t_start = time.monotonic()
                next_at = t_start + SAMPLE_SECONDS
                while traffic.alive():
                    time.sleep(max(0.0, min(next_at, t_start + seconds + 60) - time.monotonic()))
                    next_at += SAMPLE_SECONDS
                    st = proc_status(pid)
                    probed = last_probe(probe_file)
                    # A connection of its own each time: the server closes idle ones after 5 s.
                    conn = http.client.HTTPConnection("127.0.0.1", int(dep.url.rsplit(":", 1)[1]), timeout=30)
                    refused: list[str] = []
                    lag = sorted(timed_get(conn, "/healthz", refused) for _ in range(5))
                    sample: dict[str, Any] = {
                        "t": round(time.monotonic() - t_start),
                        "rss_mb": st["VmRSS"] / 1024,
                        "fds": len(os.listdir(f"/proc/{pid}/fd")),
                        "threads": st["Threads"],
                        "tasks": probed.get("tasks"),
                        "kblocks": probed["blocks"] / 1000 if "blocks" in probed else None,
                        "healthz_ms": lag[2],
                        "healthz_max_ms": lag[-1],
                        "readyz_ms": timed_get(conn, "/readyz", refused),
                        "refused": len(refused),
                        **backlog(query, dep.db_url),
                    }
                    conn.close()
                    if db_file is not None:
                        wal = db_file.with_name(db_file.name + "-wal")
                        sample["wal_mb"] = wal.stat().st_size / 2**20 if wal.exists() else 0.0
                        sample["db_mb"] = db_file.stat().st_size / 2**20
                    samples.append(sample)
                    print(row(sample), flush=True) if len(samples) > 1 else print(
                        header(sample) + "\n" + row(sample), flush=True
                    )
                traffic.stop()
                sent = json.loads(traffic_out.read_text())
                log(f"traffic: {json.dumps(sent)}")
                checks = settle_and_check(query, dep.db_url, sent, 120)
                final = {
                    "rss_mb": proc_status(pid)["VmRSS"] / 1024,
                    "fds": len(os.listdir(f"/proc/{pid}/fd")),
                }
                log(f"after draining: {json.dumps(final)}")
                log(f"deliveries by type and status: {json.dumps(checks['by_type'])}")
                census = [json.loads(line) for line in probe_file.read_text().splitlines() if "types" in line]
                if len(census) >= 2:
                    a, b = census[1], census[-1]
                    grown = sorted(
                        ((b["types"].get(k, 0) - a["types"].get(k, 0), k) for k in b["types"]), reverse=True
                    )
                    log(f"objects {a['objects']} -> {b['objects']}; grew most: {grown[:8]}")
                    log(f"bound methods, first and last census: {a['methods']} / {b['methods']}")
                    if "grown" in b:
                        for g in b["grown"][:5]:
                            log(f"  +{g['kib']} KiB ({g['count']:+d}) at {' / '.join(g['where'][-4:])}")
        finally:
            if traffic is not None:
                traffic.stop()
            receiver.stop()
        results = verdict(samples, checks, args.minutes)
        print()
        for name, ok, detail in results:
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        print(
            f"events accepted {sent['accepted']}, errors {sent['errors']}, replayed {sent['replayed']},"
            f" dashboard pages {sent['pages']}, rows listed {sent['listed']}"
        )
        return 0 if all(ok for _, ok, _ in results) else 1


COLUMNS = [
    ("t", "t(s)", "{:>5}"),
    ("rss_mb", "rss MB", "{:>7.1f}"),
    ("fds", "fds", "{:>4}"),
    ("threads", "thr", "{:>4}"),
    ("tasks", "tasks", "{:>5}"),
    ("kblocks", "kblocks", "{:>7.1f}"),
    ("wal_mb", "wal MB", "{:>7.2f}"),
    ("db_mb", "db MB", "{:>7.1f}"),
    ("healthz_ms", "hz ms", "{:>6.1f}"),
    ("healthz_max_ms", "hz max", "{:>6.1f}"),
    ("readyz_ms", "rz ms", "{:>6.1f}"),
    ("due", "due", "{:>5}"),
    ("leased", "leased", "{:>6}"),
    ("expired", "expd", "{:>4}"),
    ("unrouted", "unrtd", "{:>5}"),
    ("refused", "5xx", "{:>3}"),
]


def header(sample: dict[str, Any]) -> str:
    return " ".join(f"{title:>{len(fmt.format(0))}}" for key, title, fmt in COLUMNS if key in sample)


def row(sample: dict[str, Any]) -> str:
    return " ".join(
        fmt.format(sample[key]) if sample[key] is not None else f"{'-':>{len(fmt.format(0))}}"
        for key, _title, fmt in COLUMNS
        if key in sample
    )


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role == "_server":
        run_server_with_probe(sys.argv[2:])
    elif role == "_receiver":
        run_receiver(int(sys.argv[2]), int(sys.argv[3]))
    elif role == "_traffic":
        b, ik, ak, r, s, o = sys.argv[2:8]
        run_traffic(b, ik, ak, float(r), float(s), Path(o))
    else:
        sys.exit(main())
