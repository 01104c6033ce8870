"""A/B: single-event ingest of two versions of the server, in alternating short runs.

The VM's speed drifts within minutes (see docs/performance.md, Noise), so two versions measured
one after the other compare phases, not code. Here both run side by side, each on a fresh
database of its own, and take turns: A, B, A, B, … at the same number of connections; the report
gives each run and the medians.

    git archive HEAD~1 src | tar -x -C /tmp/old
    .venv/bin/python bench/ab_ingest.py \\
        --a "env PYTHONPATH=/tmp/old/src .venv/bin/python -m ingestlayer.cli" [--b COMMAND] \\
        [--backend sqlite|postgres] [--rounds 6] [--duration 4] [--connections 64] [--routed]

Without ``--b`` the B side is the checkout's ``ingestlayer``. Like the other benchmarks it
asserts nothing about times; it exits non-zero only when a server could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import statistics
import sys
from typing import Any

import orjson

from bench_ingest import ROUTED_PIPELINE
from harness import INGESTLAYER, SMALL_EVENT, BenchError, Deployment, log, run_load, workdir


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="command that starts version A's server roles")
    p.add_argument("--b", default=INGESTLAYER, help="command for version B (default: ingestlayer)")
    p.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--routed", action="store_true", help="a pipeline takes (and filters out) every event")
    args = p.parse_args()
    body = orjson.dumps(SMALL_EVENT)
    runs: dict[str, list[float]] = {"a": [], "b": []}
    try:
        with workdir() as wd, contextlib.ExitStack() as stack:
            sides: dict[str, Deployment] = {}
            for side, command in (("a", args.a), ("b", args.b)):
                (wd / side).mkdir()
                dep = Deployment(
                    backend=args.backend,
                    mode="serve",
                    workdir=wd / side,
                    command=shlex.split(command),
                    pipeline_yaml=ROUTED_PIPELINE if args.routed else None,
                )
                sides[side] = stack.enter_context(dep.run())
            for i in range(args.rounds):
                # Alternate which side goes first, so neither always follows the other's load.
                for side in ("a", "b") if i % 2 == 0 else ("b", "a"):
                    dep = sides[side]
                    res = run_load(
                        dep.url + "/v1/events",
                        body,
                        headers={
                            "Authorization": f"Bearer {dep.ingest_key}",
                            "Content-Type": "application/json",
                        },
                        connections=args.connections,
                        duration=args.duration,
                        warmup=1.0,
                        watch=dep.server_pids,
                    )
                    if res.errors:
                        raise BenchError(f"side {side}: {res.errors} errors")
                    runs[side].append(res.rps)
                    log(f"round {i + 1} {side}: {res.rps:,.0f} requests/s")
    except BenchError as exc:
        print(f"ab_ingest: {exc}", file=sys.stderr)
        return 1
    out: dict[str, Any] = {
        "backend": args.backend,
        "connections": args.connections,
        "a": {"command": args.a, "rps": runs["a"], "median": statistics.median(runs["a"])},
        "b": {"command": args.b, "rps": runs["b"], "median": statistics.median(runs["b"])},
    }
    out["b_over_a"] = out["b"]["median"] / out["a"]["median"]
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
