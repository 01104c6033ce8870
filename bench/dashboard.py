"""Dashboard page timings on a large SQLite database: queries alone and whole pages.

    .venv/bin/python bench/dashboard.py                       # 100,000 events, 300,000 attempts
    .venv/bin/python bench/dashboard.py --events 20000 --attempts 60000 --runs 10
    .venv/bin/python bench/dashboard.py --db /tmp/dash.db     # keep (and reuse) the database

It applies the seed recipes (examples/recipes/) and two webhook endpoints to a fresh project,
writes a week of history straight into the tables (bulk inserts: events with their traces,
deliveries fanned out to the recipes' destinations, and attempts with realistic latencies,
failures, retries and dead letters), then times:

* each page's queries, called as the page calls them (``DashboardStats`` and ``Store``);
* each whole page through the ASGI app (session check, queries, Jinja rendering), in process;

and prints median / p95 milliseconds per page, then ``EXPLAIN QUERY PLAN`` for every distinct
statement the pages ran, so it is visible which index each one uses. Nothing leaves the
process: no server socket, no network. See docs/dashboard.md for the figures.

:func:`backfill` is also used by the browser test to give its screenshots a realistic history.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import yaml
from sqlalchemy import event, insert
from ulid import ULID

from ingestlayer.config import Settings
from ingestlayer.pipeline.matching import TypeMatcher
from ingestlayer.records import ProjectConfig
from ingestlayer.store.db import Engines
from ingestlayer.store.schema import attempts, deliveries, events
from ingestlayer.timefmt import iso

ROOT = Path(__file__).resolve().parents[1]

DAY = 86400.0
SCHEDULE = (0, 60, 300, 1800, 7200, 18000, 36000)
FIRST = ["ada", "grace", "alan", "edsger", "barbara", "ken", "linus", "margaret", "donald", "frances"]
LAST = ["lovelace", "hopper", "turing", "dijkstra", "liskov", "thompson", "torvalds", "hamilton", "knuth"]
DOMAINS = ["acme.com", "globex.io", "initech.com", "umbrella.co", "hooli.xyz", "gmail.com", "stark.dev"]
FEATURES = ["csv.export", "api", "webhook", "dashboard.share", "sso", "reports.schedule", "dark-mode"]
PLANS = ["free", "free", "pro", "pro", "pro", "team", "enterprise"]
SUBJECTS = [
    "Cannot export invoices to CSV",
    "Webhook deliveries failing since this morning",
    "Question about annual billing",
    "SSO login loops back to the sign-in page",
    "Production API returns 500 for every request",
    "How do I add a teammate?",
]


# ---- synthetic history -----------------------------------------------------------------------


def _payload(rng: random.Random, type_: str, ts: float) -> dict[str, Any]:
    user = f"usr_{rng.randint(1000, 9999)}"
    if type_ == "feature.used":
        return {
            "user_id": user,
            "feature": rng.choice(FEATURES),
            "count": rng.randint(1, 20),
            "plan": rng.choice(PLANS),
        }
    if type_ == "user.signed_up":
        first, last = rng.choice(FIRST), rng.choice(LAST)
        return {
            "user_id": user,
            "email": f"{first}.{last}@{rng.choice(DOMAINS)}",
            "plan": rng.choice(PLANS),
            "source": rng.choice(["marketing-site", "invite", "api"]),
        }
    if type_.startswith("invoice."):
        start = time.strftime("%Y-%m-01T00:00:00.000Z", time.gmtime(ts))
        return {
            "invoiceId": f"inv_{rng.randint(10000, 99999)}",
            "amount": rng.choice([29, 49, 120, 299, 990, 4200]),
            "currency": "usd",
            "customer": f"cus_{rng.randint(100, 999)}",
            "periodStart": start,
        }
    if type_ == "subscription.suspended":
        return {
            "subscriptionId": f"sub_{rng.randint(1000, 9999)}",
            "customer": f"cus_{rng.randint(100, 999)}",
            "reason": "payment_failed",
        }
    if type_ == "support.ticket.created":
        return {
            "ticket_id": f"T-{rng.randint(10000, 99999)}",
            "subject": rng.choice(SUBJECTS),
            "channel": rng.choice(["email", "chat", "web"]),
            "customer_tier": rng.choice(["free", "pro", "enterprise"]),
        }
    return {"user_id": user, "path": rng.choice(["/", "/pricing", "/docs", "/blog/webhooks"])}


TYPE_MIX: list[tuple[str, float]] = [
    ("feature.used", 0.38),
    ("page.viewed", 0.12),
    ("user.signed_up", 0.12),
    ("invoice.created", 0.1),
    ("invoice.paid", 0.09),
    ("invoice.failed", 0.04),
    ("subscription.suspended", 0.02),
    ("support.ticket.created", 0.13),
]


@dataclass
class Route:
    pipeline_id: str
    pipeline: str
    destination_id: str
    destination: str
    matcher: TypeMatcher
    steps: list[dict[str, Any]]


def routes_of(cfg: ProjectConfig) -> list[Route]:
    out: list[Route] = []
    for p in cfg.pipelines:
        for r in p.config.get("destinations", []):
            d = cfg.destinations.get(r["destination_id"])
            if d is None:
                continue
            out.append(
                Route(
                    pipeline_id=p.id,
                    pipeline=p.name,
                    destination_id=d.id,
                    destination=d.name,
                    matcher=TypeMatcher(p.config["source"]["match"]),
                    steps=p.config.get("steps", []),
                )
            )
    return out


def _trace(route: Route, rng: random.Random) -> dict[str, Any]:
    steps = []
    for s in route.steps:
        name = s["name"]
        if name == "filter.match":
            steps.append({"step": name, "outcome": "kept"})
        elif name.startswith(("enrich.", "classify")):
            added = s["config"].get("attach") or [s["config"].get("field", "label")]
            steps.append({"step": name, "outcome": "changed", "added": list(added)})
        else:
            steps.append({"step": name, "outcome": "changed", "changed": ["email"]})
    return {
        "pipeline": route.pipeline,
        "pipeline_id": route.pipeline_id,
        "steps": steps,
        "outcome": "routed",
        "destinations": [route.destination],
    }


def _latency(rng: random.Random, hour: float) -> float:
    # Log-normal around ~70 ms, slower in the (UTC) afternoon peak, with a long tail.
    peak = 1.0 + 0.6 * max(0.0, math.sin((hour - 9) / 24 * 2 * math.pi))
    return min(9_500.0, math.exp(rng.gauss(math.log(65 * peak), 0.7)))


def _failure(rng: random.Random) -> tuple[int | None, str | None, str | None, float]:
    roll = rng.random()
    if roll < 0.5:
        return 500, "HTTP 500", '{"error":"internal server error"}', 0.0
    if roll < 0.7:
        return 503, "HTTP 503", "upstream unavailable", 0.0
    if roll < 0.8:
        return 429, "HTTP 429", '{"error":"rate limited"}', 0.0
    if roll < 0.92:
        return None, "timeout after 10s", None, 10_000.0
    return None, "connection refused", None, 1.5


def _weekly_times(rng: random.Random, n: int, start: float, end: float) -> list[float]:
    """``n`` times in [start, end), denser in UTC working hours (rejection sampling)."""
    out: list[float] = []
    while len(out) < n:
        t = rng.uniform(start, end)
        hour = (t % DAY) / 3600
        weight = 0.35 + 0.65 * max(0.0, math.sin((hour - 6) / 16 * math.pi)) if 6 <= hour <= 22 else 0.35
        if rng.random() < weight:
            out.append(t)
    out.sort()
    return out


def _ulid(prefix: str, ts: float, rng: random.Random) -> str:
    ms = int(ts * 1000)
    return f"{prefix}_{ULID.from_bytes(ms.to_bytes(6, 'big') + rng.randbytes(10))}"


@dataclass
class Backfill:
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


async def backfill(
    engines: Engines,
    project_id: str,
    routes: list[Route],
    *,
    n_events: int,
    n_attempts: int | None = None,
    fail_rate: float = 0.05,
    dead_rate: float = 0.15,
    span: float = 7 * DAY,
    now: float | None = None,
    seed: int = 7,
    chunk: int = 5000,
    progress: Callable[[str], None] | None = None,
) -> Backfill:
    """Write ``n_events`` events over the ``span`` before ``now``, each delivered to every route
    that matches its type. A share ``fail_rate`` of deliveries fail at first (``dead_rate`` of
    those never recover); given ``n_attempts``, the fail rate is chosen to make about that many.
    """
    rng = random.Random(seed)
    now = time.time() if now is None else now
    types, weights = zip(*TYPE_MIX, strict=True)
    times = _weekly_times(rng, n_events, now - span, now - 30)
    chosen_types = rng.choices(types, weights, k=n_events)
    matched = {t: [r for r in routes if r.matcher(t)] for t in types}
    if n_attempts is not None:
        # Attempts per delivery: 1, plus for a failing one 6 more (dead) or 1.5 (recovers).
        expected = sum(len(matched[t]) for t in chosen_types)
        extra = dead_rate * 6 + (1 - dead_rate) * 1.5
        fail_rate = min(0.6, max(0.005, (n_attempts / max(1, expected) - 1) / extra))
    out = Backfill()
    ev_rows: list[dict[str, Any]] = []
    dl_rows: list[dict[str, Any]] = []
    at_rows: list[dict[str, Any]] = []

    async def flush(final: bool = False) -> None:
        if not final and len(ev_rows) < chunk:
            return
        async with engines.write.begin() as conn:
            if ev_rows:
                await conn.execute(insert(events), ev_rows)
            if dl_rows:
                await conn.execute(insert(deliveries), dl_rows)
            if at_rows:
                await conn.execute(insert(attempts), at_rows)
        ev_rows.clear()
        dl_rows.clear()
        at_rows.clear()
        if progress:
            progress(f"{out.events:,} events, {out.deliveries:,} deliveries, {out.attempts:,} attempts")

    for ts, type_ in zip(times, chosen_types, strict=True):
        payload = _payload(rng, type_, ts)
        eid = _ulid("evt", ts, rng)
        chosen = matched[type_]
        ev_rows.append(
            {
                "id": eid,
                "project_id": project_id,
                "type": type_,
                "payload": orjson.dumps(payload).decode(),
                "idempotency_key": None,
                "source": "sdk",
                "occurred_at": ts - rng.uniform(0, 2),
                "received_at": ts,
                "trace": orjson.dumps([_trace(r, rng) for r in chosen]).decode() if chosen else None,
            }
        )
        out.events += 1
        body = orjson.dumps({"id": eid, "type": type_, "occurred_at": iso(ts), "payload": payload}).decode()
        for route in chosen:
            did = _ulid("dlv", ts + 0.01, rng)
            fails = rng.random() < fail_rate
            dead = fails and rng.random() < dead_rate
            recover_at = 7 if dead else (rng.randint(2, 3) if fails else 1)
            t = ts + rng.uniform(0.02, 0.4)
            status, due, finished = "delivered", None, None
            last_code: int | None = None
            last_error: str | None = None
            n = 0
            for n in range(1, 8):
                ok = n >= recover_at and not dead
                hour = (t % DAY) / 3600
                if ok:
                    code, error, excerpt, dur = (
                        rng.choice([200, 200, 200, 202, 204]),
                        None,
                        '{"received":true}',
                        0.0,
                    )
                else:
                    code, error, excerpt, dur = _failure(rng)
                duration = dur or _latency(rng, hour)
                next_at = None
                if not ok and n < len(SCHEDULE):
                    next_at = t + duration / 1000 + SCHEDULE[n] * rng.uniform(0.9, 1.1)
                at_rows.append(
                    {
                        "delivery_id": did,
                        "project_id": project_id,
                        "n": n,
                        "started_at": t,
                        "duration_ms": round(duration, 2),
                        "status_code": code,
                        "error": error,
                        "response_excerpt": excerpt,
                        "next_retry_at": next_at,
                        "worker": "bench:1",
                    }
                )
                out.attempts += 1
                last_code, last_error = code, error
                if ok:
                    status, finished = "delivered", t + duration / 1000
                    break
                if next_at is None:
                    status, finished = "dead", t + duration / 1000
                    break
                if next_at > now:
                    status, due = "retrying", next_at
                    break
                t = next_at
            out.by_status[status] = out.by_status.get(status, 0) + 1
            dl_rows.append(
                {
                    "id": did,
                    "project_id": project_id,
                    "event_id": eid,
                    "event_type": type_,
                    "pipeline_id": route.pipeline_id,
                    "destination_id": route.destination_id,
                    "status": status,
                    "attempts": n,
                    "retry_base": 0,
                    "due_at": due,
                    "lease_token": None,
                    "body": body,
                    "last_status_code": last_code,
                    "last_error": last_error,
                    "created_at": ts + 0.01,
                    "updated_at": finished or t,
                    "finished_at": finished,
                }
            )
            out.deliveries += 1
        await flush()
    await flush(final=True)
    return out


# ---- the benchmark ---------------------------------------------------------------------------


def recipes_document(url_base: str = "https://api.acme.com") -> dict[str, Any]:
    """Every seed recipe in one document, their URLs under ``url_base``."""
    pipelines: list[Any] = []
    for path in sorted((ROOT / "examples" / "recipes").glob("*.yaml")):
        text = path.read_text()
        text = text.replace("https://api.acme.com", url_base).replace("https://api.yourapp.com", url_base)
        doc = yaml.safe_load(text)
        pipelines.extend(doc.get("pipelines") or [])
    # A catch-all, as most projects have: everything to the warehouse loader.
    pipelines.append(
        {
            "name": "everything-to-warehouse",
            "description": "Every product and billing event, for the warehouse loader.",
            "source": {
                "match": ["feature.*", "user.*", "invoice.*", "subscription.*", "support.*.*", "page.*"]
            },
            "destinations": [
                {"webhook.out": {"url": url_base + "/warehouse/ingest", "format": "ingestlayer"}}
            ],
        }
    )
    return {"pipelines": pipelines}


@dataclass
class Timing:
    name: str
    kind: str  # "queries" | "page"
    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        s = sorted(self.samples)
        return s[min(len(s) - 1, math.ceil(0.95 * len(s)) - 1)]


async def _time(
    fn: Callable[[], Awaitable[Any]], runs: int, before: Callable[[], None] | None = None
) -> list[float]:
    for _ in range(2):  # warm-up: connections, compiled templates, the OS page cache
        if before:
            before()
        await fn()
    out = []
    for _ in range(runs):
        if before:
            before()
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def asgi_get(app: Any, path: str, cookie: str) -> tuple[int, bytes]:
    """One GET through the ASGI app, in process."""
    parts = urlsplit(path)
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": parts.path,
        "raw_path": parts.path.encode(),
        "query_string": parts.query.encode(),
        "root_path": "",
        "headers": [(b"host", b"bench.local"), (b"cookie", cookie.encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    status = 0
    body = bytearray()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope, receive, send)
    return status, bytes(body)


class StatementLog:
    """Every SELECT the read engine runs, with its parameters (for EXPLAIN QUERY PLAN)."""

    def __init__(self, engines: Engines) -> None:
        self.seen: dict[str, tuple[str, Any, set[str]]] = {}
        self.page = ""
        event.listen(engines.read.sync_engine, "before_cursor_execute", self._record)

    def _record(
        self, conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if not statement.lstrip().upper().startswith("SELECT"):
            return
        key = " ".join(statement.split())
        entry = self.seen.setdefault(key, (statement, parameters, set()))
        entry[2].add(self.page)


def explain(db_path: str, log: StatementLog) -> list[tuple[list[str], str, list[str]]]:
    con = sqlite3.connect(db_path)
    out = []
    try:
        for statement, params, pages in log.seen.values():
            rows = con.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
            out.append((sorted(pages), " ".join(statement.split()), [r[-1] for r in rows]))
    finally:
        con.close()
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from ingestlayer.api import dashboard_session
    from ingestlayer.api import endpoints as endpoints_api
    from ingestlayer.api.auth import Principal
    from ingestlayer.api.manage import run_apply
    from ingestlayer.app import build_fastapi
    from ingestlayer.runtime import Runtime
    from ingestlayer.store.migrate import upgrade
    from ingestlayer.store.stats import DashboardStats

    workdir = Path(args.db).parent if args.db else Path(tempfile.mkdtemp(prefix="il-dash-bench-"))
    db = Path(args.db) if args.db else workdir / "dashboard.db"
    fresh = not db.exists()
    url = f"sqlite:///{db}"
    if fresh:
        await asyncio.to_thread(upgrade, url)  # alembic runs its own event loop
    settings = Settings(database_url=url, secret_key="bench-master-key-not-for-production")
    rt = Runtime(settings, api=True, worker=False)
    meta = workdir / "dashboard-bench.json"
    try:
        if fresh:
            project_id, _, admin_key = await rt.store.create_project("bench")
            await run_apply(rt, project_id, recipes_document(), dry_run=False, prune=False)
            principal = Principal(project_id, "admin")
            for path, types in (
                ("/usageflow/webhook", ["invoice.*", "subscription.suspended"]),
                ("/crm", ["user.signed_up"]),
            ):
                await endpoints_api.create_endpoint(
                    endpoints_api.EndpointIn(url="https://api.yourapp.com" + path, events=types),
                    principal,
                    rt,
                )
            cfg = await rt.store.load_project_config(project_id)
            t0 = time.perf_counter()
            filled = await backfill(
                rt.store.engines,
                project_id,
                routes_of(cfg),
                n_events=args.events,
                n_attempts=args.attempts,
                progress=lambda m: print(f"\r  seeding: {m}", end="", file=sys.stderr, flush=True),
            )
            print(file=sys.stderr)
            seeded = {
                "project_id": project_id,
                "admin_key": admin_key,
                "events": filled.events,
                "deliveries": filled.deliveries,
                "attempts": filled.attempts,
                "by_status": filled.by_status,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            meta.write_text(json.dumps(seeded))
        else:
            seeded = json.loads(meta.read_text())
        project_id, admin_key = seeded["project_id"], seeded["admin_key"]
        print(
            f"database {db}: {seeded['events']:,} events, {seeded['deliveries']:,} deliveries, "
            f"{seeded['attempts']:,} attempts {seeded['by_status']}",
            file=sys.stderr,
        )

        app = build_fastapi(rt)
        stats = DashboardStats(rt.store.engines)
        app.state.dashboard_stats = stats
        cookie = "il_session=" + dashboard_session.seal(
            rt, {"k": admin_key, "exp": time.time() + 3600, "csrf": "bench"}
        )
        cfg = await rt.store.load_project_config(project_id)
        principal = Principal(project_id, "admin")
        endpoint = next(p for p in cfg.pipelines if p.endpoint)
        busy_dest = max(cfg.destinations.values(), key=lambda d: d.name.startswith("feature-usage"))
        newest = await stats.search_events(project_id, limit=50)
        some_event = newest[len(newest) // 2].id
        dead = await rt.store.list_deliveries(project_id, status=["dead"], limit=1)
        some_delivery = dead[0]["id"]
        first_page = await stats.list_attempts(project_id, limit=50)
        day_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - DAY))
        two_days_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 2 * DAY))

        def cold() -> None:
            stats.cache.clear()

        queries: dict[str, Callable[[], Awaitable[Any]]] = {
            "overview 1h": lambda: stats.series(project_id, "1h"),
            "overview 24h": lambda: stats.series(project_id, "24h"),
            "overview 7d": lambda: stats.series(project_id, "7d"),
            "counts by status, 24 h": lambda: stats.status_counts(project_id, since=time.time() - DAY),
            "counts by status, all": lambda: stats.status_counts(project_id),
            "counts, logs filter": lambda: stats.status_counts(
                project_id, statuses=("pending", "delivering", "retrying", "dead")
            ),
            "pipelines": lambda: rt.store.load_project_config(project_id),
            "endpoints": lambda: endpoints_api.list_endpoints(principal, rt),
            "logs": lambda: stats.list_attempts(project_id, limit=50),
            "logs, older page": lambda: stats.list_attempts(project_id, before=first_page[-1].id, limit=50),
            "logs status=dead": lambda: stats.list_attempts(project_id, status=["dead"], limit=50),
            "logs status=retrying": lambda: stats.list_attempts(project_id, status=["retrying"], limit=50),
            "logs by destination": lambda: stats.list_attempts(
                project_id, destination_id=busy_dest.id, limit=50
            ),
            "dead letters": lambda: rt.store.list_deliveries(project_id, status=["dead"], limit=50),
            "events": lambda: stats.search_events(project_id, limit=50),
            "events type=invoice.paid": lambda: stats.search_events(
                project_id, type_="invoice.paid", limit=50
            ),
            "events type=invoice.*": lambda: stats.search_events(project_id, type_="invoice.*", limit=50),
            "events, a past day": lambda: stats.search_events(
                project_id, since=time.time() - 2 * DAY, until=time.time() - DAY, limit=50
            ),
            "event": lambda: rt.store.get_event(project_id, some_event),
            "delivery": lambda: rt.store.get_delivery(project_id, some_delivery),
        }
        pages = {
            "overview 1h": "/?range=1h",
            "overview 24h": "/?range=24h",
            "overview 7d": "/?range=7d",
            "pipelines": "/pipelines",
            "endpoints": "/webhooks/endpoints",
            "endpoint": f"/webhooks/endpoints/{endpoint.id}",
            "logs": "/webhooks/logs",
            "logs, older page": f"/webhooks/logs?before={first_page[-1].id}",
            "logs status=dead": "/webhooks/logs?status=dead",
            "logs by destination": f"/webhooks/logs?destination={busy_dest.id}",
            "dead letters": "/webhooks/dead",
            "events": "/events",
            "events type=invoice.*": "/events?type=invoice.*",
            "events, a past day": f"/events?since={two_days_ago}&until={day_ago}",
            "event": f"/events/{some_event}",
            "delivery": f"/deliveries/{some_delivery}",
        }
        log = StatementLog(rt.store.engines)
        results: list[Timing] = []
        for name, fn in queries.items():
            log.page = name
            results.append(
                Timing(name, "queries", await _time(fn, args.runs, cold if "overview" in name else None))
            )
            if name.startswith("overview"):
                results.append(Timing(name + " (cached)", "queries", await _time(fn, args.runs)))
        for name, path in pages.items():
            log.page = "page " + name

            async def get(path: str = path) -> None:
                status, body = await asgi_get(app, path, cookie)
                assert status == 200, (path, status, body[:300])

            results.append(
                Timing(name, "page", await _time(get, args.runs, cold if "overview" in name else None))
            )
            if name.startswith("overview"):
                results.append(Timing(name + " (cached)", "page", await _time(get, args.runs)))

        print(f"\n{'what':44} {'median ms':>10} {'p95 ms':>8}")
        for kind in ("queries", "page"):
            print(f"-- {'queries only' if kind == 'queries' else 'whole page (ASGI, session, render)'}")
            for t in results:
                if t.kind == kind:
                    print(f"{t.name:44} {t.median:10.1f} {t.p95:8.1f}")
        plans = explain(str(db), log)
        if args.plans:
            print("\n-- EXPLAIN QUERY PLAN for each distinct statement")
            for used_by, sql, plan in plans:
                print(f"\n[{', '.join(used_by)[:100]}]\n  {sql[:240]}")
                for step in plan:
                    print(f"    {step}")
        return {
            "seeded": seeded,
            "results": [
                {"name": t.name, "kind": t.kind, "median_ms": round(t.median, 2), "p95_ms": round(t.p95, 2)}
                for t in results
            ],
            "plans": [{"pages": p, "sql": s, "plan": q} for p, s, q in plans],
        }
    finally:
        await rt.store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--attempts", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per page (after 2 warm-ups)")
    parser.add_argument("--db", help="SQLite file to create, or to reuse when it exists")
    parser.add_argument("--no-plans", dest="plans", action="store_false", help="skip EXPLAIN QUERY PLAN")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    out = asyncio.run(run(args))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
