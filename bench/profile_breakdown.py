"""Sum py-spy profiles (``run_all.py --profile DIR``) into the server's stages.

Each sample (a stack taken while the thread held the GIL) is charged to one stage (see STAGES);
within the dispatcher's sends, the aiohttp client, signing and logging are shown apart.

    .venv/bin/python bench/profile_breakdown.py DIR [--top 8]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

# (stage, pattern on a frame "function (file)"), in priority order: a sample goes to the first
# stage any frame of its stack matches, so "router" includes the SQL the router runs, and the
# ingest stages win over the HTTP server frames below which they run.
STAGES: list[tuple[str, re.Pattern[str]]] = [
    ("ingest: group commit (SQL)", re.compile(r"^GroupCommitter\._run ")),
    ("ingest: response write", re.compile(r"^send_json \(ingestlayer/api/ingest")),
    ("ingest: parse, validate, ids", re.compile(r"^IngestHandler\.")),
    (
        "router (lease, route, write deliveries)",
        re.compile(r"^Router\.|^route_event \(|\(ingestlayer/pipeline/"),
    ),
    ("dispatcher: record attempts (SQL)", re.compile(r"^Dispatcher\._writer ")),
    ("dispatcher: send", re.compile(r"^Dispatcher\._run_one ")),
    ("dispatcher: lease + destinations (SQL)", re.compile(r"^Dispatcher\.run ")),
    ("SQLite driver thread (aiosqlite)", re.compile(r"^_connection_worker_thread ")),
    ("other API routes (FastAPI)", re.compile(r"^FastAPI\.__call__|^Starlette\.__call__")),
    ("HTTP server (uvicorn + httptools)", re.compile(r"\(uvicorn/")),
    # Below: stacks whose caller py-spy cannot see (a greenlet or a task started elsewhere).
    ("dispatcher: send, aiohttp client", re.compile(r"\(aiohttp/")),
    ("SQL statements, caller not on the stack", re.compile(r"\((sqlalchemy|aiosqlite|asyncpg)/")),
    ("ids (python-ulid)", re.compile(r"\(ulid/")),
]
# Parts of a dispatcher send, looked for below Dispatcher._run_one.
SEND_PARTS: list[tuple[str, re.Pattern[str]]] = [
    ("dispatcher: send, aiohttp client", re.compile(r"^ClientSession\.|^_BaseRequestContextManager")),
    ("dispatcher: send, signing + headers", re.compile(r"^WebhookOut\.build_headers ")),
    ("dispatcher: send, attempt log line", re.compile(r"^Logger\.")),
]
FRAME = re.compile(r"^(.*?) \((?:.*/site-packages/|.*/src/|.*/lib/python3\.\d+/)?(.*?)(?::\d+)?\)$")


def normalise(frame: str) -> str:
    m = FRAME.match(frame)
    return f"{m.group(1)} ({m.group(2)})" if m else frame


def stage_of(frames: list[str]) -> str:
    for name, pattern in STAGES:
        for i, frame in enumerate(frames):
            if not pattern.search(frame):
                continue
            if name == "dispatcher: send":
                for part, part_pattern in SEND_PARTS:
                    if any(part_pattern.search(below) for below in frames[i + 1 :]):
                        return part
                return "dispatcher: send, other"
            return name
    return "event loop (uvloop) and other"


def breakdown(folded: Path) -> tuple[int, dict[str, int]]:
    shares: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        stage = stage_of([normalise(f) for f in stack.split(";")])
        shares[stage] = shares.get(stage, 0) + n
    return total, shares


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", type=Path)
    p.add_argument("--top", type=int, default=8)
    args = p.parse_args()
    for folded in sorted(args.dir.glob("*.folded")):
        total, shares = breakdown(folded)
        if not total:
            continue
        print(f"{folded.stem}: {total} GIL samples")
        for stage, n in sorted(shares.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {n / total:6.1%}  {stage}")
        print()


if __name__ == "__main__":
    main()
