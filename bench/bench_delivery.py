"""End-to-end signed delivery throughput and ingest→delivery latency.

In one run, on 127.0.0.1, with a light aiohttp receiver in its own process (``receiver.py``):

1. baseline: raw aiohttp POSTs/s to the receiver (``loadgen.py closed``) at the dispatcher's
   concurrency (``INGESTLAYER_DELIVERY_CONCURRENCY``, default 128), with a body and headers the
   size of a signed delivery;
2. throughput: ``ingestlayer serve`` (or ``api`` + ``worker``) with one pipeline, ``bench.*`` →
   ``webhook.out`` with ``auth: hmac``; ``--events`` events are ingested in batches of 100 and
   the receiver timestamps every delivery. deliveries/s is taken over the middle 80 % of arrivals
   (steady state) and, for the record, from the first ingest to the last arrival;
3. single-event capacity: single events, closed loop, until every one is delivered;
4. latency: single events at half that capacity, open loop, each carrying its send
   time; the receiver records arrival - send time. The first second is warm-up and left out.

The receiver checks every 100th signature with ``ingestlayer.sdk.webhooks.verify`` and every
delivery id is counted once, so a wrong signature or a duplicate shows in the report.

    .venv/bin/python bench/bench_delivery.py [--backend sqlite|postgres] [--mode serve|split] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import orjson

from harness import (
    HOOK_SECRET,
    PYTHON,
    ROOT,
    BenchError,
    CpuWindow,
    Deployment,
    Proc,
    deadline,
    free_port,
    http_json,
    log,
    percentile,
    pg_transactions,
    query,
    run_load,
    run_loadgen,
    server_cores,
    wait_for_quiet,
    wait_http,
    workdir,
)
from ingestlayer.delivery.signing import ingestlayer_signature

BATCH = 100


def pipeline_yaml(receiver_url: str) -> str:
    return f"""\
pipelines:
  - name: bench-webhook
    source: {{ match: ["bench.*"] }}
    destinations:
      - webhook.out: {{ url: "{receiver_url}/hooks", auth: hmac, secret: "ref:bench-hooks" }}
"""


def delivery_like_request() -> tuple[bytes, dict[str, str]]:
    """A body and headers shaped like one signed delivery (for the raw aiohttp baseline)."""
    body = orjson.dumps(
        {
            "id": "evt_01JBENCH0000000000000000000",
            "type": "bench.throughput",
            "occurred_at": "2026-01-01T00:00:00.000Z",
            "payload": {"user_id": "u_1234", "feature": "csv.export", "count": 1, "plan": "pro"},
        }
    )
    headers = {
        "User-Agent": "ingestlayer/bench",
        "X-Ingestlayer-Event": "bench.throughput",
        "X-Ingestlayer-Delivery": "dlv_01JBENCH0000000000000000000",
        "X-Ingestlayer-Attempt": "1",
        # The baseline sends no signature: the receiver only verifies ingestlayer's (sampled).
        "X-Bench-Signature": ingestlayer_signature([HOOK_SECRET], int(time.time()), body),
    }
    return body, headers


def receiver_stats(url: str) -> dict[str, Any]:
    status, doc = http_json("GET", url + "/stats", timeout=30)
    if status != 200:
        raise BenchError(f"receiver /stats answered {status}")
    result: dict[str, Any] = doc
    return result


def wait_count(url: str, want: int, timeout: float) -> int:
    end = time.monotonic() + timeout
    got = 0
    while time.monotonic() < end:
        _, doc = http_json("GET", url + "/count")
        got = int(doc["count"])
        if got >= want:
            return got
        time.sleep(0.05)
    return got


def single_event_capacity(dep: Deployment, rurl: str, auth: str, wd: Any, seconds: float) -> dict[str, Any]:
    """Closed loop, one event per request, 64 connections, for ``seconds``: events/s from the
    first request to the last delivery, once every accepted event has been delivered."""
    http_json("POST", rurl + "/reset")
    body_file = wd / "single.json"
    body_file.write_bytes(orjson.dumps({"type": "bench.capacity", "payload": {"user_id": "u_1"}}))
    t0 = time.time()
    sent = run_loadgen(
        [
            "closed",
            dep.url + "/v1/events",
            "--body-file",
            str(body_file),
            "--headers",
            auth,
            "--connections",
            "64",
            "--warmup",
            "0",
            "--duration",
            str(seconds),
        ],
        timeout=seconds + 40,
    )
    accepted = int(sent["requests"])
    got = wait_count(rurl, accepted, timeout=60)
    arrivals = sorted(receiver_stats(rurl)["arrivals"])
    last = arrivals[-1] if arrivals else time.time()
    return {
        "events_per_s": got / max(last - t0, 1e-9),
        "ingest_per_s": accepted / max(float(sent["elapsed"]), 1e-9),
        "accepted": accepted,
        "delivered": got,
        "seconds": seconds,
    }


def _xacts(dep: Deployment) -> int | None:
    """PostgreSQL only: transactions so far in the deployment's database."""
    if not dep.db_name:
        return None
    time.sleep(1.0)  # pg_stat_database is flushed about once a second
    return pg_transactions(dep.db_name)


def _per(before: int | None, after: int | None, events: int) -> float | None:
    if before is None or after is None or not events:
        return None
    return (after - before) / events


STAGE_SQL = """
SELECT e.payload, e.received_at, d.created_at, a.started_at, a.duration_ms
FROM events e
JOIN deliveries d ON d.event_id = e.id
JOIN attempts a ON a.delivery_id = d.id AND a.n = 1
WHERE e.type = 'bench.latency'
"""


def stage_breakdown(db_url: str, skip_before: float) -> dict[str, dict[str, float]]:
    """Where an event's ingest→delivery time goes, from the timestamps the server stores:
    sent → received by the API → delivery row made (by ingest itself where it routes, by the
    router otherwise) → attempt started by the dispatcher → attempt finished (the receiver's 200
    read). Where ingest routes, the delivery's time is taken before the insert commits, so the
    commit and its fsync fall in the third stage."""
    stages: dict[str, list[float]] = {
        "client → API (request read)": [],
        "API → routed (ingest group, pipelines)": [],
        "routed → attempt starts (commit, hand-over)": [],
        "attempt (HTTP to receiver)": [],
    }
    for payload, received, routed, started, duration_ms in query(db_url, STAGE_SQL):
        sent = orjson.loads(payload).get("sent_at")
        if not isinstance(sent, float | int) or sent < skip_before:
            continue
        parts = (received - sent, routed - received, started - routed, duration_ms / 1000)
        for values, value in zip(stages.values(), parts, strict=True):
            values.append(value * 1000)
    return {
        name: {"p50_ms": percentile(v, 50), "p99_ms": percentile(v, 99), "n": len(v)}
        for name, v in stages.items()
    }


def _tx_note(part: dict[str, Any]) -> str:
    tx = part.get("db_transactions_per_event")
    return f", {tx:.2f} PG transactions/event" if tx is not None else ""


def run(
    backend: str = "sqlite", mode: str = "serve", quick: bool = False, latency_rate: float | None = None
) -> dict[str, Any]:
    concurrency = int(os.environ.get("INGESTLAYER_DELIVERY_CONCURRENCY") or 128)
    duration, warmup = (3.0, 1.0) if quick else (8.0, 2.0)
    n_events = 6_000 if quick else 20_000
    latency_seconds = 5.0 if quick else 10.0
    out: dict[str, Any] = {
        "benchmark": "delivery",
        "backend": backend,
        "mode": mode,
        "concurrency": concurrency,
        "events": n_events,
    }
    with workdir() as wd:
        rport = free_port()
        rurl = f"http://127.0.0.1:{rport}"
        receiver = Proc(
            "receiver",
            [PYTHON, "bench/receiver.py", "--port", str(rport), "--secret", HOOK_SECRET],
            env={"PYTHONPATH": str(ROOT / "src")},
            cwd=ROOT,
            logdir=wd,
        )
        try:
            wait_http(rurl + "/healthz", receiver)

            # 1. raw aiohttp to the receiver, same concurrency.
            body, headers = delivery_like_request()
            base = run_load(
                rurl + "/hooks",
                body,
                headers=headers,
                connections=concurrency,
                duration=duration,
                warmup=warmup,
                watch={"receiver": receiver.pid},
                prefer_wrk=False,
            )
            out["baseline"] = {
                "rps": base.rps,
                "p50_ms": base.p50_ms,
                "p99_ms": base.p99_ms,
                "errors": base.errors,
                "cpu": base.cpu,
                "generator": base.generator,
            }
            log(
                f"baseline raw aiohttp → receiver: {base.rps:,.0f} POST/s at {concurrency} concurrent "
                f"(cpu {', '.join(f'{k} {v:.0%}' for k, v in base.cpu.items())})"
            )
            http_json("POST", rurl + "/reset")

            # 2. throughput through ingestlayer.
            dep = Deployment(backend=backend, mode=mode, workdir=wd, pipeline_yaml=pipeline_yaml(rurl))
            with dep.run():
                auth = json.dumps({"Authorization": f"Bearer {dep.ingest_key}"})
                body_file = wd / "batch.json"
                batch = [
                    {"type": "bench.throughput", "payload": {"user_id": f"u_{i}", "feature": "csv.export"}}
                    for i in range(BATCH)
                ]
                body_file.write_bytes(orjson.dumps({"batch": batch}))
                out["background_cores"] = wait_for_quiet()
                watch = {**dep.server_pids, "receiver": receiver.pid}
                xacts0 = _xacts(dep)
                t_start = time.time()
                with (
                    dep.profiled("deliver"),
                    CpuWindow(watch, postgres_db=dep.db_name) as win,
                ):
                    ingest = run_loadgen(
                        [
                            "closed",
                            dep.url + "/v1/events",
                            "--body-file",
                            str(body_file),
                            "--headers",
                            auth,
                            "--connections",
                            "4",
                            "--max-requests",
                            str(n_events // BATCH),
                            "--duration",
                            "30",
                        ],
                        timeout=60,
                    )
                    t_ingested = time.time()
                    got = wait_count(rurl, n_events, timeout=50 if not quick else 25)
                stats = receiver_stats(rurl)
                xacts1 = _xacts(dep)
                arrivals = sorted(stats["arrivals"])
                if not arrivals:
                    raise BenchError("no delivery reached the receiver")
                lo, hi = arrivals[len(arrivals) // 10], arrivals[(len(arrivals) * 9) // 10 - 1]
                steady = (len(arrivals) * 8 // 10) / max(hi - lo, 1e-9)
                overall = len(arrivals) / max(arrivals[-1] - t_start, 1e-9)
                # While the batched ingest still ran (it shares the CPU) and after it finished.
                during = [a for a in arrivals if a <= t_ingested]
                after = [a for a in arrivals if a > t_ingested]
                rate_during = len(during) / max(t_ingested - t_start, 1e-9)
                rate_after = len(after) / max(arrivals[-1] - t_ingested, 1e-9) if after else 0.0
                delivered = dep.metric("ingestlayer_delivery_attempts_total", 'result="delivered"')
                out["throughput"] = {
                    "deliveries_per_s": steady,
                    "overall_per_s": overall,
                    "per_s_while_ingesting": rate_during,
                    "per_s_after_ingest": rate_after,
                    "ingest_seconds": t_ingested - t_start,
                    "ingest_events_per_s": n_events / max(t_ingested - t_start, 1e-9),
                    "received": got,
                    "complete": got >= n_events,
                    "unique_deliveries": stats["unique_deliveries"],
                    "tcp_connections": stats["connections"],
                    "duplicates": stats["count"] - stats["unique_deliveries"],
                    "signatures_verified": stats["verified"],
                    "bad_signatures": stats["bad_signatures"],
                    "delivered_metric": delivered,
                    "ingest_errors": ingest["errors"],
                    "cpu": win.result,
                    "db_transactions_per_event": _per(xacts0, xacts1, got),
                    # All server CPU (ingest + route + deliver) per delivered event.
                    "server_cpu_us_per_delivery": server_cores(win.result) * win.wall / max(got, 1) * 1e6,
                }
                log(
                    f"e2e signed deliveries ({mode}, {backend}): {steady:,.0f}/s steady, "
                    f"{overall:,.0f}/s first ingest→last arrival ({rate_during:,.0f}/s while ingesting, "
                    f"{rate_after:,.0f}/s after); received {got}/{n_events}, "
                    f"{stats['verified']} signatures verified, {stats['bad_signatures']} bad, "
                    f"{stats['count'] - stats['unique_deliveries']} duplicates, "
                    f"{stats['connections']} TCP connections, "
                    f"server {out['throughput']['server_cpu_us_per_delivery']:.0f} µs CPU/delivery"
                    f"{_tx_note(out['throughput'])} "
                    f"(cpu {', '.join(f'{k} {v:.0%}' for k, v in win.result.items())})"
                )
                if stats["bad_signatures"]:
                    raise BenchError(f"{stats['bad_signatures']} deliveries failed signature verification")

                # 3. what the same server sustains when events come one per request, as in the
                # latency run: each costs an HTTP request, and every stage works in small groups,
                # so this is the maximum that "half load" is half of.
                out["single_event_capacity"] = single_event_capacity(
                    dep, rurl, auth, wd, seconds=3.0 if quick else 6.0
                )
                capacity = out["single_event_capacity"]["events_per_s"]
                log(
                    f"single events, closed loop ({mode}, {backend}): {capacity:,.0f} events/s ingested "
                    f"and delivered (ingest {out['single_event_capacity']['ingest_per_s']:,.0f}/s, "
                    f"all {out['single_event_capacity']['delivered']} delivered)"
                )

                # 4. latency at half that maximum.
                rate = latency_rate or max(10.0, round(capacity / 2))
                http_json("POST", rurl + "/reset")
                xacts0 = _xacts(dep)
                out["latency_background_cores"] = wait_for_quiet()
                with (
                    dep.profiled("latency"),
                    CpuWindow(watch, postgres_db=dep.db_name) as lwin,
                ):
                    sent = run_loadgen(
                        [
                            "rate",
                            dep.url + "/v1/events",
                            "--headers",
                            auth,
                            "--rate",
                            str(rate),
                            "--duration",
                            str(latency_seconds),
                            "--connections",
                            "256",
                            "--event-type",
                            "bench.latency",
                        ],
                        timeout=latency_seconds + 40,
                    )
                    wait_count(rurl, int(sent["requests"]), timeout=20)
                lstats = receiver_stats(rurl)
                xacts1 = _xacts(dep)
                t0 = min((s for s, _ in lstats["latencies"]), default=0.0)
                lat = [d * 1000 for s, d in lstats["latencies"] if s >= t0 + 1.0]
                out["latency"] = {
                    "rate": rate,
                    "sent": sent["sent"],
                    "accepted": sent["requests"],
                    "late_sends": sent["late"],
                    "received": lstats["count"],
                    "measured": len(lat),
                    "p50_ms": percentile(lat, 50),
                    "p99_ms": percentile(lat, 99),
                    "max_ms": max(lat, default=float("nan")),
                    "db_transactions_per_event": _per(xacts0, xacts1, lstats["count"]),
                    # Trickle load makes every stage run small transactions: compare with throughput.
                    "server_cpu_us_per_event": server_cores(lwin.result)
                    * lwin.wall
                    / max(lstats["count"], 1)
                    * 1e6,
                    "stages": stage_breakdown(dep.db_url, t0 + 1.0),
                    "ingest_http_p50_ms": sent["p50_ms"],
                    "ingest_http_p99_ms": sent["p99_ms"],
                    "cpu": lwin.result,
                }
                log(
                    f"latency at {rate:,.0f} events/s ({mode}, {backend}): ingest→delivery "
                    f"p50 {out['latency']['p50_ms']:.1f} ms, p99 {out['latency']['p99_ms']:.1f} ms, "
                    f"max {out['latency']['max_ms']:.1f} ms over {len(lat)} events "
                    f"(ingest HTTP p99 {sent['p99_ms']:.1f} ms; {sent['late']} late sends; "
                    f"server {out['latency']['server_cpu_us_per_event']:.0f} µs CPU/event"
                    f"{_tx_note(out['latency'])})"
                )
                for name, st in out["latency"]["stages"].items():
                    log(f"    {name:50s} p50 {st['p50_ms']:7.1f} ms   p99 {st['p99_ms']:7.1f} ms")
        finally:
            receiver.stop()
    out["ratio_vs_baseline"] = out["throughput"]["deliveries_per_s"] / out["baseline"]["rps"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--mode", choices=["serve", "split"], default="serve")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--latency-rate", type=float, help="events/s for the latency phase (default: half the max)"
    )
    args = p.parse_args()
    with deadline(120 if args.quick else 180, "the delivery benchmark"):
        result = run(args.backend, args.mode, args.quick, args.latency_rate)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
