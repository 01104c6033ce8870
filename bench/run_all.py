"""Run every benchmark and print one table of results, baselines, ratios and targets.

    .venv/bin/python bench/run_all.py            # full: about 20 minutes on 2 cores
    .venv/bin/python bench/run_all.py --quick    # shorter windows: about 3 minutes
    .venv/bin/python bench/run_all.py --backend sqlite --only ingest --json out.json

Benchmarks (each bounded to a few minutes, everything on 127.0.0.1, stopping by itself):

* ``bench_ingest.py``: ``POST /v1/events`` single and batched, beside a bare ASGI endpoint on the
  same HTTP stack (uvicorn + httptools + uvloop, one process); single events from 16, 64 and
  256 connections, compared at 64 and each at its best (capacity);
* ``bench_delivery.py``: end-to-end HMAC-signed deliveries/s beside raw aiohttp POSTs/s to the
  same receiver; the most single events/s the server ingests and delivers (closed loop); then
  ingest→delivery latency at half that rate (open loop).

Each runs on SQLite, and on PostgreSQL when one answers at ``BENCH_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/postgres``; a fresh database is created and dropped).
Without ``--quick`` PostgreSQL is also measured with ``ingestlayer api`` + ``ingestlayer worker``
as separate processes, ingest on each backend with a pipeline that takes (and filters out)
every event ("routed": the ingest benchmark's own events match no pipeline, and ``serve``
stores such events without a route job), and ingest on SQLite with ``ingestlayer api`` alone
(no router beside it). The load generator is ``wrk`` when installed (``BENCH_NO_WRK=1`` forces
the aiohttp one)
and always shares the machine with the server: see docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import bench_delivery
import bench_ingest
from harness import (
    NCPU,
    BenchError,
    background_cores,
    deadline,
    log,
    pg_available,
    server_cores,
    wrk_path,
)

TARGET_SINGLE_RATIO = 0.5
TARGET_BATCH_EPS = 50_000
TARGET_DELIVERIES = 3_000
TARGET_P99_MS = 50.0
QUIET_CORES = 0.3
GENERATOR_BOUND = 0.9  # cores


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    system = f"{platform.system()} {platform.release()}"
    return f"{NCPU} cores ({model}), {system}, Python {platform.python_version()}"


def code_version() -> str:
    try:
        res = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    version = res.stdout.strip() or "unknown"
    custom = os.environ.get("BENCH_SERVER_CMD")
    return f"{version} (server started with BENCH_SERVER_CMD={custom!r})" if custom else version


def generator() -> str:
    wrk = wrk_path()
    if not wrk:
        return "aiohttp (bench/loadgen.py; wrk not installed)"
    res = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False, timeout=10)
    first = (res.stdout or res.stderr).strip().splitlines()
    return f"{first[0].split(' [')[0] if first else 'wrk'} -t1 (ingest); aiohttp (delivery baseline, latency)"


def bound(row: dict[str, Any]) -> str:
    """Flag a baseline the load generator could not saturate (its process used a whole core)."""
    return " [generator-bound]" if row["cpu"].get("generator", 0.0) >= GENERATOR_BOUND else ""


def us(value: float | None) -> str:
    return f"{value:,.0f} µs" if value else ""


def cpu_note(cpu: dict[str, float]) -> str:
    server = server_cores(cpu)
    parts = [f"server {server:.0%}"]
    if "postgres" in cpu:
        parts.append(f"pg {cpu['postgres']:.0%}")
    if "machine" in cpu:
        parts.append(f"all {cpu['machine']:.0%}")
    return ", ".join(parts)


def rows_for(result: dict[str, Any]) -> list[list[str]]:
    be, mode = result["backend"], result["mode"]
    rows: list[list[str]] = []
    if result["benchmark"] == "ingest":
        how = ", routed" if result.get("routed") else ""

        def single(measure: str, result_: str, baseline: str, ratio: float, row: dict[str, Any]) -> None:
            verdict = "ok" if ratio >= TARGET_SINGLE_RATIO else "MISS"
            target = f">= {TARGET_SINGLE_RATIO:.0%}"
            cost = us(row.get("server_cpu_us_per_event"))
            rows.append(
                [
                    be,
                    mode,
                    measure,
                    result_,
                    baseline,
                    f"{ratio:.0%}",
                    target,
                    verdict,
                    cost,
                    cpu_note(row["cpu"]),
                ]
            )

        s, bs = result["ingest_single"], result["bare_single"]
        single(
            f"ingest{how}, 1 event/request, 64 conn.",
            f"{s['events_per_s']:,.0f} ev/s",
            f"{bs['rps']:,.0f} req/s (bare){bound(bs)}",
            result["ratio_single_vs_bare"],
            s,
        )
        if "bare_ours_single" in result:
            bo = result["bare_ours_single"]
            single(
                f"ingest{how}, 1 event/request, 64 conn.",
                f"{s['events_per_s']:,.0f} ev/s",
                f"{bo['rps']:,.0f} req/s (bare, our protocol){bound(bo)}",
                result["ratio_single_vs_bare_ours"],
                s,
            )
        alt = result.get("alternating")
        if alt:
            for side, label in (("bare", "bare"), ("bare_ours", "bare, our protocol")):
                base_rates = [r[side] for r in alt["rounds"]]
                single(
                    f"ingest{how}, 1 event/request, 64 conn., alternating",
                    f"{statistics.median(r['ingest'] for r in alt['rounds']):,.0f} ev/s (median)",
                    f"{statistics.median(base_rates):,.0f} req/s ({label}); median of "
                    f"{len(base_rates)} rounds' ratios",
                    alt[f"ratio_vs_{side}"],
                    s,
                )
        cap = result.get("ingest_capacity")
        for side, label, ratio in (
            ("bare", "bare", "ratio_single_capacity"),
            ("bare_ours", "bare, our protocol", "ratio_single_capacity_ours"),
        ):
            bcap = result.get(f"{side}_capacity")
            if cap and bcap:
                single(
                    f"ingest{how}, 1 event/request, capacity",
                    f"{cap['rps']:,.0f} ev/s @{cap['connections']}",
                    f"{bcap['rps']:,.0f} req/s @{bcap['connections']} ({label})",
                    result[ratio],
                    result["ingest_sweep"][str(cap["connections"])],
                )
        b, bb = result["ingest_batch"], result["bare_batch"]
        rows.append(
            [
                be,
                mode,
                f"ingest{how}, {result['batch']} events/request",
                f"{b['events_per_s']:,.0f} ev/s",
                f"{bb['events_per_s']:,.0f} ev/s (bare){bound(bb)}",
                f"{result['ratio_batch_vs_bare']:.1%}",
                f">= {TARGET_BATCH_EPS:,} ev/s",
                "ok" if b["events_per_s"] >= TARGET_BATCH_EPS else "MISS",
                us(b.get("server_cpu_us_per_event")),
                cpu_note(b["cpu"]),
            ]
        )
    else:
        t, base = result["throughput"], result["baseline"]
        rows.append(
            [
                be,
                mode,
                f"signed deliveries (hmac), {result['concurrency']} conc.",
                f"{t['deliveries_per_s']:,.0f} /s",
                f"{base['rps']:,.0f} POST/s (aiohttp)",
                f"{result['ratio_vs_baseline']:.0%}",
                f">= {TARGET_DELIVERIES:,} /s",
                "ok" if t["deliveries_per_s"] >= TARGET_DELIVERIES and t["complete"] else "MISS",
                us(t.get("server_cpu_us_per_delivery")),
                cpu_note(t["cpu"]),
            ]
        )
        cap = result.get("single_event_capacity")
        if cap:
            rows.append(
                [
                    be,
                    mode,
                    "single events, ingested and delivered",
                    f"{cap['events_per_s']:,.0f} ev/s",
                    "",
                    "",
                    "(max for latency)",
                    "",
                    "",
                    "",
                ]
            )
        lat = result["latency"]
        rows.append(
            [
                be,
                mode,
                f"ingest→delivery p50 / p99 @ {lat['rate']:,.0f} ev/s",
                f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms",
                "",
                "",
                f"p99 < {TARGET_P99_MS:.0f} ms",
                "ok" if lat["p99_ms"] < TARGET_P99_MS else "MISS",
                us(lat.get("server_cpu_us_per_event")),
                cpu_note(lat["cpu"]),
            ]
        )
    return rows


def print_table(results: list[dict[str, Any]], header: str) -> None:
    head = [
        "backend",
        "mode",
        "measure",
        "result",
        "baseline (same run)",
        "ratio",
        "target",
        "",
        "server CPU/event",
        "CPU (cores)",
    ]
    rows = [head]
    for r in results:
        if "error" in r:
            rows.append(
                [r["backend"], r["mode"], r["benchmark"], "FAILED", r["error"][:60], "", "", "", "", ""]
            )
        else:
            rows.extend(rows_for(r))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    print()
    print(header)
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    capped = [r[k] for r in results for k in ("bare_single", "bare_batch") if k in r and bound(r[k])]
    if capped:
        print(
            f"note: {len(capped)} bare-endpoint baseline(s) were limited by the load generator, not "
            "the server, so the ratios beside them are too kind; install wrk (apt-get install wrk)."
        )
    busy = [b for r in results for b in background(r)]
    if busy and max(busy) > QUIET_CORES:
        print(
            f"warning: {sum(b > QUIET_CORES for b in busy)} of {len(busy)} measured windows began with "
            f"up to {max(busy):.2f} cores busy with other work; those figures are low. "
            "Run again on an idle machine."
        )
    print()


def background(result: dict[str, Any]) -> list[float]:
    """The other load seen just before each measured window of a result."""
    found: list[float] = []
    for key in ("bare_single", "bare_batch", "ingest_single", "ingest_batch"):
        if key in result:
            found.append(result[key]["extra"].get("background_cores", 0.0))
    for key in ("bare_sweep", "ingest_sweep"):
        for row in result.get(key, {}).values():
            found.append(row["extra"].get("background_cores", 0.0))
    for key in ("background_cores", "latency_background_cores"):
        if key in result:
            found.append(result[key])
    return found


def wait_until_idle(timeout: float) -> None:
    """Wait (bounded) until three one-second samples in a row see the machine idle."""
    end = time.monotonic() + timeout
    calm = 0
    while calm < 3 and time.monotonic() < end:
        calm = calm + 1 if background_cores(1.0) < 0.2 else 0
    if calm < 3:
        log(f"the machine stayed busy for {timeout:.0f} s; measuring anyway")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter measuring windows, no api+worker split")
    p.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    p.add_argument("--only", choices=["ingest", "delivery"], help="run one benchmark")
    p.add_argument("--split", action=argparse.BooleanOptionalAction, default=None, help="PG api + worker")
    p.add_argument("--json", type=Path, help="also write the raw results here")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each benchmark, wait up to SECONDS for other work on the machine to stop",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="sample the servers with py-spy (if installed) into DIR during each measured window",
    )
    args = p.parse_args()
    if args.profile:
        os.environ["BENCH_PROFILE_DIR"] = str(args.profile.resolve())

    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    if "postgres" in backends:
        why = pg_available()
        if why is not None:
            log(f"PostgreSQL skipped: {why}")
            backends.remove("postgres")
    split = (not args.quick) if args.split is None else args.split
    kinds = [args.only] if args.only else ["ingest", "delivery"]
    plan: list[tuple[str, str, str]] = []  # (backend, mode, benchmark)
    for be in backends:
        plan += [(be, "serve", kind) for kind in kinds]
        if not args.quick and "ingest" in kinds:
            # Events a pipeline takes (and filters out): what routing adds to the ingest path.
            plan.append((be, "serve", "ingest-routed"))
        if be == "sqlite" and not args.quick and "ingest" in kinds:
            # The API alone (no router beside it): shows what routing costs the ingest path.
            plan.append((be, "api", "ingest"))
        if be == "postgres" and split:
            plan += [(be, "split", kind) for kind in kinds]

    started = time.strftime("%Y-%m-%d %H:%M %Z")
    header = (
        f"ingestlayer benchmarks, {started}, code {code_version()}\n{machine()}\n"
        f"load generator: {generator()}" + ("  [--quick]" if args.quick else "")
    )
    results: list[dict[str, Any]] = []
    for be, mode, kind in plan:
        if args.wait_idle > 0:
            wait_until_idle(args.wait_idle)
        log(f"running {kind} on {be} ({mode})")
        try:
            ingest = kind.startswith("ingest")
            limit = bench_ingest.time_limit(args.quick) if ingest else (120 if args.quick else 180)
            with deadline(limit, f"{kind} on {be} ({mode})"):
                if kind.startswith("ingest"):
                    results.append(bench_ingest.run(be, mode, args.quick, routed=kind == "ingest-routed"))
                else:
                    results.append(bench_delivery.run(be, mode, args.quick))
        except (BenchError, OSError, KeyError, ValueError, subprocess.SubprocessError) as exc:
            traceback.print_exc()
            results.append({"benchmark": kind, "backend": be, "mode": mode, "error": str(exc)})
    print_table(results, header)
    if args.json:
        args.json.write_text(json.dumps({"header": header, "results": results}, indent=2))
        log(f"raw results written to {args.json}")
    if any("error" in r for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
