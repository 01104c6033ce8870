"""``ingestlayer tail``, run as users run it (the installed entry point, in a subprocess), against a
running server over REST and on the database directly.

What it must do: print every event that arrives after it starts, once and in order, even when
more arrive between two polls than one page holds; print delivery outcomes (delivered, failed,
dead) as they happen, once each; print nothing from before the start unless asked (``--last``);
stop with exit 0 on Ctrl-C or after ``--for``; and fail in one line with exit 1.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from rich.text import Text

from ingestlayer.cli_tail import Tail, TailOptions, floor_id
from ingestlayer.ids import encode_ulid
from tests.integration.test_cli import start
from tests.support.cli import CLI, cli, ok, one_line_error
from tests.support.receiver import Receiver
from tests.support.server import TEST_SECRET_KEY, RunningServer, wait_for

CLOSED = "http://127.0.0.1:9"  # nothing listens there: every attempt fails to connect
EVENT_LINE = re.compile(r"^(\S+)  event      (evt_\w+)  (\S+)  from (\S+)$")
DELIVERY_LINE = re.compile(
    r"^(\S+)  (delivered|failed   |dead     )  (dlv_\w+)  (\S+) -> (\S+)  attempt (\d+)  (.+?)"
    r"(?:  retry at \S+)?  event (evt_\w+)$"
)


def document(receiver: Receiver, retry_after: float = 1) -> dict[str, Any]:
    """order.* goes to a receiver that answers 200; alert.* to a closed port, tried twice,
    ``retry_after`` seconds apart (a tail following them needs the time to see the failed one)."""
    return {
        "destinations": [
            {"name": "good-hook", "webhook.out": {"url": receiver.url + "/good", "auth": "none"}},
            {
                "name": "down-hook",
                "webhook.out": {"url": CLOSED + "/down", "auth": "none"},
                "retry": {"schedule": [0, retry_after], "jitter": 0},
            },
        ],
        "pipelines": [
            {"name": "orders", "source": {"match": ["order.*"]}, "destinations": [{"ref": "good-hook"}]},
            {"name": "alerts", "source": {"match": ["alert.*"]}, "destinations": [{"ref": "down-hook"}]},
        ],
    }


async def ingest(server: RunningServer, type_: str) -> str:
    status, body = await server.ingest(type_, {"n": 1})
    assert status == 202, body
    event_id: str = body["id"]
    return event_id


async def finished(server: RunningServer, *event_ids: str) -> None:
    """Wait until every delivery of these events is delivered or dead."""

    async def done() -> bool:
        for event_id in event_ids:
            _, body = await server.request("GET", f"/v1/events/{event_id}")
            dels = body["deliveries"]
            if not dels or any(d["status"] not in ("delivered", "dead") for d in dels):
                return False
        return True

    await wait_for(done, timeout=15)


class Tailing:
    """A running ``ingestlayer tail``: its stdout lines as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode().rstrip("\n"))

    async def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; the exit code and what else it wrote on stderr."""
        assert self.proc.stderr is not None
        self.proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(self.proc.wait(), 10)
        await self._reader
        return rc, (await self.proc.stderr.read()).decode()


async def start_tail(*args: str, cwd: Path) -> Tailing:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTLAYER_") and k != "COLUMNS"}
    env["INGESTLAYER_SECRET_KEY"] = TEST_SECRET_KEY
    # --for bounds it should the test fail before its Ctrl-C; well past what the slowest test
    # here waits (events to finish, then their lines), so a loaded machine does not end it early.
    proc = await asyncio.create_subprocess_exec(
        CLI,
        "tail",
        *args,
        "--for",
        "90",
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    # It says so on stderr once it knows where it starts from.
    first = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
    assert first.startswith("following events and deliveries on http://127.0.0.1:"), first
    assert "Ctrl-C" in first
    return Tailing(proc)


def parse(lines: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, ...]]]:
    """(event id, type) per event line, and per delivery line (outcome, delivery id, type,
    destination, attempt, result, event id); any other line fails the test."""
    events: list[tuple[str, str]] = []
    deliveries: list[tuple[str, ...]] = []
    for line in lines:
        if m := EVENT_LINE.match(line):
            events.append((m.group(2), m.group(3)))
        elif m := DELIVERY_LINE.match(line):
            deliveries.append((m.group(2).strip(), *m.group(3, 4, 5, 6, 7, 8)))
        else:
            raise AssertionError(f"not an event or delivery line: {line!r}")
    return events, deliveries


async def test_tail_follows_new_events_and_outcomes_once_each_in_order(
    tmp_path: Path, sqlite_url: str, receiver: Receiver
) -> None:
    server = await start(sqlite_url, poll_interval=0.05)
    try:
        await server.apply(document(receiver))
        # Before the start: an event delivered, and one whose delivery went dead.
        before = [await ingest(server, "order.before"), await ingest(server, "alert.before")]
        await finished(server, *before)
        _, old = await server.request("GET", "/v1/deliveries")
        old_ids = {d["id"] for d in old["data"]}
        assert len(old_ids) == 2

        tail = await start_tail(
            "--url", server.url, "--key", server.admin_key, "--interval", "0.2", cwd=tmp_path
        )
        sent = [await ingest(server, "order.one"), await ingest(server, "alert.one")]
        # More in one request than a page of the listing (500) holds, so between two polls.
        status, body = await server.request(
            "POST",
            "/v1/events",
            key=server.ingest_key,
            json={"batch": [{"type": "bulk.item", "payload": {"i": i}} for i in range(700)]},
        )
        assert status == 202, body
        sent += [item["id"] for item in body["items"]]
        sent += [await ingest(server, "order.two"), await ingest(server, "order.three")]
        await finished(server, *sent[:2], *sent[-2:])

        shown = (0, 0)

        async def everything_shown() -> bool:
            nonlocal shown
            events, deliveries = parse(tail.lines)
            shown = (len(events), len(deliveries))
            # 3 delivered, and the alert's failed attempt then its dead one.
            return len(events) >= len(sent) and len(deliveries) >= 5

        try:
            await wait_for(everything_shown, timeout=15)
        except AssertionError:
            raise AssertionError(
                f"tail showed {shown[0]} of {len(sent)} events and {shown[1]} of 5 outcomes "
                f"(tail's exit code: {tail.proc.returncode})"
            ) from None
        await asyncio.sleep(0.5)  # a few more polls: nothing more may come
        rc, err = await tail.interrupt()
        assert rc == 0, (rc, err)
        assert err == "", err  # no "Aborted!", no traceback
        _, dead_delivery = await server.request("GET", "/v1/deliveries?status=dead&event_id=" + sent[1])
    finally:
        await server.stop()

    events, deliveries = parse(tail.lines)
    # Every event sent after the start, once, in the order sent; none from before.
    assert [e for e, _ in events] == sent
    assert events[0][1] == "order.one" and events[2][1] == "bulk.item" and events[-1][1] == "order.three"
    # Every outcome once: one delivered per order, and the alert's two attempts.
    by_event = {event_id: [d[:-1] for d in deliveries if d[-1] == event_id] for event_id in sent}
    assert len(deliveries) == 5, deliveries
    for event_id, type_ in [(sent[0], "order.one"), (sent[-2], "order.two"), (sent[-1], "order.three")]:
        ((outcome, _, t, dest, attempt, result),) = by_event[event_id]
        assert (outcome, t, dest, attempt, result) == ("delivered", type_, "good-hook", "1", "200")
    (failed, dead) = by_event[sent[1]]
    assert failed[0] == "failed" and dead[0] == "dead" and failed[1] == dead[1]
    assert (failed[2], failed[3], failed[4], dead[4]) == ("alert.one", "down-hook", "1", "2")
    ((alert,),) = [dead_delivery["data"]]
    assert alert["id"] == dead[1] and alert["last_error"] in dead[5]  # the error, as the API gives it
    # Nothing from before the start, and never the key.
    output = "\n".join(tail.lines)
    assert not any(i in output for i in [*before, *old_ids])
    assert server.admin_key not in output + err


async def test_tail_errors_are_one_line(tmp_path: Path, srv: RunningServer) -> None:
    remote = ("--url", srv.url, "--for", "5")
    bad_key, ingest_key, closed, bad_status, bad_type, no_dest, nothing = await asyncio.gather(
        cli("tail", *remote, "--key", "il_admin_not-a-real-key", cwd=tmp_path),
        cli("tail", *remote, "--key", srv.ingest_key, cwd=tmp_path),
        cli("tail", "--url", CLOSED, "--key", "il_admin_x", cwd=tmp_path),
        cli("tail", *remote, "--key", srv.admin_key, "--status", "retrying", cwd=tmp_path),
        cli("tail", *remote, "--key", srv.admin_key, "--type", "not a type", cwd=tmp_path),
        cli("tail", *remote, "--key", srv.admin_key, "--destination", "nope", cwd=tmp_path),
        cli("tail", *remote, "--key", srv.admin_key, "--no-events", "--no-deliveries", cwd=tmp_path),
    )
    one_line_error(bad_key, "401")
    one_line_error(ingest_key, "403")
    one_line_error(closed, "cannot reach", CLOSED)
    # Values an option cannot take are usage errors, as click's own (exit 2, the command's --help).
    one_line_error(bad_status, "--status: 'retrying'", "delivered, failed, dead", "tail --help", rc=2)
    one_line_error(bad_type, "--type 'not a type'")
    one_line_error(no_dest, "404", "no destination 'nope'")
    one_line_error(nothing, "nothing to show", "tail --help", rc=2)
    for run in (bad_key, ingest_key):
        assert "il_admin_not-a-real-key" not in run.err and srv.ingest_key not in run.err
        assert run.out == ""


async def test_tail_on_the_database_with_last_and_filters(
    tmp_path: Path, db_url: str, receiver: Receiver
) -> None:
    server = await start(db_url, poll_interval=0.05)
    try:
        # Tail starts once they are all finished: nothing to see between the alert's two attempts.
        await server.apply(document(receiver, retry_after=0.05))
        first, alert, second = [await ingest(server, t) for t in ("order.a", "alert.a", "order.b")]
        await finished(server, first, alert, second)
    finally:
        await server.stop()

    # No server now: the database, read directly; --for ends it (exit 0).
    db = {"cwd": tmp_path, "db_url": db_url}
    orders, dead_only, quiet = await asyncio.gather(
        cli("tail", "--last", "2", "--type", "order.*", "--for", "0.3", "--interval", "0.1", **db),
        cli(
            "tail",
            "-n",
            "5",
            "--no-events",
            "--destination",
            "down-hook",
            "--status",
            "dead",
            "--for",
            "0",
            **db,
        ),
        cli("tail", "--for", "0.3", "--interval", "0.1", **db),
    )
    events, deliveries = parse(ok(orders).out.splitlines())
    assert events == [(first, "order.a"), (second, "order.b")]
    # Shown by when they were delivered, which may be either way round.
    assert sorted((d[0], d[3], d[6]) for d in deliveries) == sorted(
        [("delivered", "good-hook", first), ("delivered", "good-hook", second)]
    )
    assert "following events and deliveries on the database" in orders.err

    events, deliveries = parse(ok(dead_only).out.splitlines())
    assert events == []
    assert [(d[0], d[2], d[3], d[4], d[6]) for d in deliveries] == [
        ("dead", "alert.a", "down-hook", "2", alert)
    ]
    assert ok(quiet).out == ""  # nothing new, and nothing old unless asked


# ---- the cursor, in process: what 60 s of real time would take -------------------------------------


class FakeSource:
    """The two listings over lists of rows, as the API pages them (newest first, ``before``)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.rows: dict[str, dict[str, Any]] = {}
        self.reads: list[str | None] = []

    async def events(self, type_: str | None, before: str | None, limit: int) -> list[dict[str, Any]]:
        return []

    async def deliveries(
        self,
        *,
        destination: str | None,
        status: tuple[str, ...] = (),
        event_id: str | None = None,
        before: str | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        self.reads.append(event_id)
        found = sorted(
            (
                r
                for r in self.rows.values()
                if (before is None or r["id"] < before)
                and (not status or r["status"] in status)
                and (event_id is None or r["event_id"] == event_id)
            ),
            key=lambda r: r["id"],
            reverse=True,
        )
        return found[:limit]

    def delivery(self, ms: int, status: str, attempts: int, next_at: str | None = None) -> str:
        did = f"dlv_{encode_ulid(ms << 80)}"
        self.rows[did] = {
            "id": did,
            "status": status,
            "event_id": f"evt_{encode_ulid(ms << 80)}",
            "event_type": "order.placed",
            "destination": "good-hook",
            "attempt_count": attempts,
            "last_status_code": 500 if attempts else None,
            "last_error": None,
            "next_attempt_at": next_at,
            "updated_at": "2026-01-01T00:00:00.000Z",
        }
        return did


async def test_deliveries_below_the_floor_are_followed_to_their_outcome() -> None:
    source = FakeSource()
    now_ms = int(time.time() * 1000)
    # In flight at the start, made two minutes before the newest delivery: below the floor.
    early = source.delivery(now_ms - 120_000, "retrying", 1, next_at="2000-01-01T00:00:00Z")
    later = source.delivery(now_ms - 119_000, "retrying", 1, next_at="2999-01-01T00:00:00Z")
    source.delivery(now_ms, "delivered", 1)
    lines: list[str] = []
    tail = Tail(source, TailOptions(events=False), lines.append)  # type: ignore[arg-type]
    await tail.start()
    assert lines == []
    assert floor_id(f"dlv_{encode_ulid(now_ms << 80)}", 60) == f"dlv_{encode_ulid((now_ms - 60_000) << 80)}"

    source.rows[early] |= {"status": "dead", "attempt_count": 2, "next_attempt_at": None}
    source.rows[later] |= {"status": "dead", "attempt_count": 2, "next_attempt_at": None}
    source.reads.clear()
    await tail.poll()
    await tail.poll()
    # The due one was looked up (by its event) and its outcome shown once; the other is not due
    # yet (its retry is in the future), so it was not asked for.
    assert len(lines) == 1, lines
    assert (
        f"  dead       {early}  order.placed -> good-hook  attempt 2  500  "
        in Text.from_markup(lines[0]).plain
    )
    assert source.reads.count(source.rows[early]["event_id"]) == 1
    assert source.rows[later]["event_id"] not in source.reads
    assert early not in tail.deliveries and later in tail.deliveries  # finished: forgotten


async def test_last_shows_the_latest_outcomes_by_when_they_happened_then_each_change_once() -> None:
    source = FakeSource()
    now_ms = int(time.time() * 1000)

    def made(ago_ms: int, status: str, attempts: int, at: str, next_at: str | None = None) -> str:
        did = source.delivery(now_ms - ago_ms, status, attempts, next_at)
        source.rows[did]["updated_at"] = f"2026-01-01T00:{at}.000Z"
        return did

    # Made oldest, but its outcome is the latest: a retry that succeeded minutes after it was made.
    late = made(300_000, "delivered", 3, "10:00")
    retried = made(250_000, "retrying", 1, "08:00", next_at="2000-01-01T00:00:00Z")
    made(200_000, "delivered", 1, "05:00")
    made(100_000, "dead", 2, "06:00")
    newest = made(0, "delivered", 1, "07:00")
    lines: list[str] = []
    tail = Tail(source, TailOptions(events=False, last=3), lines.append)  # type: ignore[arg-type]
    await tail.start()
    # The three latest outcomes, not the outcomes of the three deliveries made last; by time.
    shown = [Text.from_markup(line).plain.split() for line in lines]
    assert [(s[0], s[1], s[2]) for s in shown] == [
        ("2026-01-01T00:07:00.000Z", "delivered", newest),
        ("2026-01-01T00:08:00.000Z", "failed", retried),
        ("2026-01-01T00:10:00.000Z", "delivered", late),
    ], lines

    # Polling shows none of them again, and the failed one's next outcome once.
    await tail.poll()
    assert len(lines) == 3, lines
    source.rows[retried] |= {"status": "dead", "attempt_count": 2, "next_attempt_at": None}
    source.rows[retried]["updated_at"] = "2026-01-01T00:11:00.000Z"
    await tail.poll()
    await tail.poll()
    assert len(lines) == 4, lines
    assert Text.from_markup(lines[3]).plain.split()[1:4] == ["dead", retried, "order.placed"]
