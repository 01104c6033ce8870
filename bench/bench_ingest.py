"""Ingest throughput: ``POST /v1/events`` against a bare ASGI endpoint on the same HTTP stack.

In one run, on 127.0.0.1:

1. the baseline, ``bench/bare_asgi.py`` (uvicorn + httptools + uvloop, one process), takes the
   single small event (from 64, then 16 and 256 connections), then a batch of ``--batch`` of
   them; it parses the JSON and answers 202. It runs twice: on uvicorn's own protocol, and on
   the one ingestlayer serves with (``--stack ingestlayer``: its limits, and answers written
   once per turn of the loop), and the ratios against both are reported;
2. ``ingestlayer serve`` on a fresh database (or ``api`` + ``worker`` with ``--mode split``)
   takes the same two bodies with an ingest key: authenticated, validated and committed durably
   (group commit) before each 202, while its router drains the outbox beside it.

Closed-loop load from one generator process (wrk -t1 if installed, else ``loadgen.py``); the
generator shares the machine's cores with the server, and the report says how much CPU each used.

    .venv/bin/python bench/bench_ingest.py [--backend sqlite|postgres] [--mode serve|split]
                                           [--routed] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from dataclasses import asdict
from typing import Any

import orjson

from harness import (
    PYTHON,
    ROOT,
    SMALL_EVENT,
    BenchError,
    Deployment,
    LoadResult,
    Proc,
    deadline,
    free_port,
    log,
    run_load,
    server_cores,
    wait_http,
    workdir,
)

SINGLE_CONNECTIONS = 64
BATCH_CONNECTIONS = 8
# Single events are also sent from fewer and from more connections, to both servers. A group
# commit makes each request wait for a shared fsync, so at a given number of connections the
# server's rate is bounded by that wait (Little's law), and its groups, with the fixed cost of
# each transaction, grow with the connections; the bare endpoint answers at once and is fastest
# with few. Each one's best rate over these is its capacity, and the two capacities are compared
# beside the rates at the same 64 connections.
SWEEP_CONNECTIONS = (16, SINGLE_CONNECTIONS, 256)

# With --routed: a pipeline takes every event and its filter drops it, so each event is routed
# (route job, routing pass, trace) and none is delivered. Without it no pipeline takes the
# events, and `serve` stores them without a route job (see Runtime._no_route_hint).
ROUTED_PIPELINE = """
pipelines:
  - name: usage-filter
    source: { match: ["feature.*"] }
    steps:
      - filter.match: plan = "enterprise"
    destinations:
      - webhook.out: { url: "http://127.0.0.1:9/never" }
"""


def time_limit(quick: bool) -> int:
    """Seconds one run may take before it is given up (the alternating rounds included)."""
    return 180 if quick else 320


def _row(name: str, res: LoadResult, events_per_request: int) -> dict[str, Any]:
    row = asdict(res)
    eps = res.rps * events_per_request
    row.update(
        name=name,
        rps=res.rps,
        events_per_request=events_per_request,
        events_per_s=eps,
        # CPU cost per event: steadier than a rate when something else shares the machine.
        server_cpu_us_per_event=server_cores(res.cpu) / eps * 1e6 if eps else None,
    )
    log(
        f"{name}: {res.rps:,.0f} req/s = {res.rps * events_per_request:,.0f} events/s "
        f"(p50 {res.p50_ms:.1f} ms, p99 {res.p99_ms:.1f} ms, errors {res.errors}, "
        f"server {row['server_cpu_us_per_event']:.1f} µs CPU/event, "
        f"cpu {', '.join(f'{k} {v:.0%}' for k, v in res.cpu.items())}) [{res.generator}]"
    )
    return row


def run(
    backend: str = "sqlite", mode: str = "serve", quick: bool = False, batch: int = 100, routed: bool = False
) -> dict[str, Any]:
    duration, warmup = (3.0, 1.0) if quick else (8.0, 2.0)
    alternating_rounds, alternating_window = (3, 2.0) if quick else (6, 3.0)
    single_body = orjson.dumps(SMALL_EVENT)
    batch_body = orjson.dumps({"batch": [SMALL_EVENT] * batch})
    out: dict[str, Any] = {
        "benchmark": "ingest",
        "backend": backend,
        "mode": mode,
        "routed": routed,
        "batch": batch,
        "duration": duration,
        "connections": {"single": SINGLE_CONNECTIONS, "batch": BATCH_CONNECTIONS, "sweep": SWEEP_CONNECTIONS},
    }

    def sweep(
        name: str,
        url: str,
        headers: dict[str, str],
        watch: dict[str, int],
        at_64: dict[str, Any],
        postgres_db: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """Single events at each of SWEEP_CONNECTIONS (the 64-connection window is reused)."""
        rows: dict[str, dict[str, Any]] = {}
        for conns in SWEEP_CONNECTIONS:
            if conns == SINGLE_CONNECTIONS:
                rows[str(conns)] = at_64
                continue
            res = run_load(
                url,
                single_body,
                headers=headers,
                connections=conns,
                duration=duration,
                warmup=warmup,
                watch=watch,
                postgres_db=postgres_db,
            )
            rows[str(conns)] = _row(f"{name}, single, {conns} connections", res, 1)
        return rows

    def alternate(
        targets: dict[str, tuple[str, dict[str, int], dict[str, str]]], postgres_db: str | None
    ) -> dict[str, Any]:
        """Single events at 64 connections to each server in turn, round after round, the order
        turned each round. The VM's speed drifts within a minute (docs/performance.md, Noise):
        the windows above, one server after the other, compare phases as much as servers;
        these compare each round's windows, taken seconds apart."""
        rounds: list[dict[str, float]] = []
        sides = list(targets)
        # Each side in each place, then the same orders reversed: over 6 rounds every server
        # follows each other one as often (a window may pay for what the one before it left
        # behind, such as the server's checkpoint after its load).
        turned = [sides[k:] + sides[:k] for k in range(len(sides))]
        orders = turned + [order[::-1] for order in turned]
        for i in range(alternating_rounds):
            this_round: dict[str, float] = {}
            for side in orders[i % len(orders)]:
                url_, watch, headers = targets[side]
                res = run_load(
                    url_,
                    single_body,
                    headers=headers,
                    connections=SINGLE_CONNECTIONS,
                    duration=alternating_window,
                    warmup=0.5,
                    watch=watch,
                    postgres_db=postgres_db if side == "ingest" else None,
                )
                this_round[side] = res.rps
            rounds.append(this_round)
            log(
                f"alternating round {i + 1}: "
                + ", ".join(f"{side} {rps:,.0f} req/s" for side, rps in this_round.items())
                + f" (ingest/bare {this_round['ingest'] / max(this_round['bare'], 1):.0%}, "
                f"ingest/bare ours {this_round['ingest'] / max(this_round['bare_ours'], 1):.0%})"
            )
        return {"window": alternating_window, "rounds": rounds}

    def start_bare(stack: str, stack_: contextlib.ExitStack, wd: Any) -> tuple[str, Proc]:
        port = free_port()
        cmd = [PYTHON, "bench/bare_asgi.py", "--port", str(port), "--stack", stack]
        proc = Proc(f"bare_asgi_{stack}", cmd, env=None, cwd=ROOT, logdir=wd)
        stack_.callback(proc.stop)
        url = f"http://127.0.0.1:{port}/v1/events"
        wait_http(url, proc)
        return url, proc

    def bare(url: str, proc: Proc, stack: str) -> dict[str, Any]:
        """The bare endpoint's single events (at each of SWEEP_CONNECTIONS) and batches."""
        name = f"bare ASGI ({stack} protocol)"
        rows: dict[str, Any] = {}
        watch = {"server": proc.pid}
        rows["single"] = _row(
            f"{name}, single",
            run_load(
                url,
                single_body,
                headers={},
                connections=SINGLE_CONNECTIONS,
                duration=duration,
                warmup=warmup,
                watch=watch,
            ),
            1,
        )
        rows["sweep"] = sweep(name, url, {}, watch, rows["single"])
        rows["batch"] = _row(
            f"{name}, batch of {batch}",
            run_load(
                url,
                batch_body,
                headers={},
                connections=BATCH_CONNECTIONS,
                duration=duration,
                warmup=warmup,
                watch=watch,
            ),
            batch,
        )
        return rows

    with workdir() as wd, contextlib.ExitStack() as servers:
        # The baseline: uvicorn's own protocol, the stack as it comes. The same endpoint on
        # the protocol ingestlayer serves with (its limits, and its responses written in one
        # write at the end of the loop's turn) is measured beside it, and the ratios against
        # both are reported. Both stay up (idle) for the alternating runs at the end.
        bare_servers = {
            side: (stack, *start_bare(stack, servers, wd))
            for side, stack in (("bare", "uvicorn"), ("bare_ours", "ingestlayer"))
        }
        for side, (stack, url, proc) in bare_servers.items():
            for what, row in bare(url, proc, stack).items():
                out[f"{side}_{what}"] = row

        dep = Deployment(
            backend=backend, mode=mode, workdir=wd, pipeline_yaml=ROUTED_PIPELINE if routed else None
        )
        with dep.run():
            url = dep.url + "/v1/events"
            auth = {"Authorization": f"Bearer {dep.ingest_key}"}
            with dep.profiled("ingest-single"):
                single = run_load(
                    url,
                    single_body,
                    headers=auth,
                    connections=SINGLE_CONNECTIONS,
                    duration=duration,
                    warmup=warmup,
                    watch=dep.server_pids,
                    postgres_db=dep.db_name,
                )
            label = f"ingest ({mode}, {backend}{', routed' if routed else ''})"
            out["ingest_single"] = _row(f"{label}, single", single, 1)
            with dep.profiled("ingest-sweep"):
                out["ingest_sweep"] = sweep(
                    label, url, auth, dep.server_pids, out["ingest_single"], dep.db_name
                )
            with dep.profiled("ingest-batch"):
                batched = run_load(
                    url,
                    batch_body,
                    headers=auth,
                    connections=BATCH_CONNECTIONS,
                    duration=duration,
                    warmup=warmup,
                    watch=dep.server_pids,
                    postgres_db=dep.db_name,
                )
            out["ingest_batch"] = _row(f"{label}, batch of {batch}", batched, batch)
            stored = dep.metric("ingestlayer_events_ingested_total")
            measured = (
                sum(row["requests"] for row in out["ingest_sweep"].values())
                + out["ingest_batch"]["requests"] * batch
            )
            if stored < measured:
                raise BenchError(
                    f"server counted {stored:.0f} stored events, fewer than {measured} 2xx answers"
                )
            out["events_stored"] = stored
            out["alternating"] = alternate(
                {side: (url_, {"server": proc.pid}, {}) for side, (_, url_, proc) in bare_servers.items()}
                | {"ingest": (url, dep.server_pids, auth)},
                dep.db_name,
            )
    for side in ("bare", "bare_ours"):
        ratios = [r["ingest"] / r[side] for r in out["alternating"]["rounds"] if r[side]]
        out["alternating"][f"ratio_vs_{side}"] = statistics.median(ratios) if ratios else 0.0
    out["ratio_single_vs_bare"] = out["ingest_single"]["rps"] / out["bare_single"]["rps"]
    out["ratio_single_vs_bare_ours"] = out["ingest_single"]["rps"] / out["bare_ours_single"]["rps"]
    for side in ("bare", "bare_ours", "ingest"):
        best = max(out[f"{side}_sweep"].items(), key=lambda kv: kv[1]["rps"])
        out[f"{side}_capacity"] = {"connections": int(best[0]), "rps": best[1]["rps"]}
    out["ratio_single_capacity"] = out["ingest_capacity"]["rps"] / out["bare_capacity"]["rps"]
    out["ratio_single_capacity_ours"] = out["ingest_capacity"]["rps"] / out["bare_ours_capacity"]["rps"]
    out["ratio_batch_vs_bare"] = out["ingest_batch"]["events_per_s"] / out["bare_batch"]["events_per_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--mode", choices=["serve", "split", "api"], default="serve")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--routed", action="store_true", help="a pipeline takes (and filters out) every event")
    args = p.parse_args()
    with deadline(time_limit(args.quick), "the ingest benchmark"):
        result = run(args.backend, args.mode, args.quick, args.batch, args.routed)
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
