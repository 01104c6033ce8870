"""The ``ingestlayer`` command, run as users run it: the installed entry point, in a subprocess.

Subprocesses are started with asyncio so an in-process server keeps routing and serving while a
command runs.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import socket
from pathlib import Path
from typing import Any

from ingestlayer.store.store import Store
from ingestlayer.urlmask import MASK
from tests.support.cli import Run, at_once, cli, ok, one_line_error
from tests.support.receiver import Receiver, Reply
from tests.support.server import RunningServer, start_server, wait_for

SECRET = "whsec_cli-set-secret-value-123"


async def start(database_url: str, **overrides: Any) -> RunningServer:
    """``start_server`` with TCP_NODELAY on the listener (see test_ingest_api.start)."""
    s = await start_server(database_url, **overrides)
    for listener in s._server.servers:
        for sock in listener.sockets:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def pipeline_yaml(url: str, *, expression: str = "n > 0") -> str:
    return f"""
pipelines:
  - name: orders
    source: {{ match: ["order.*"] }}
    steps:
      - filter.match: {expression}
    destinations:
      - webhook.out: {{ url: "{url}", auth: hmac, secret: "ref:acme-hooks" }}
        retry: {{ schedule: [0], jitter: 0 }}
"""


# ---- init --------------------------------------------------------------------------------------------


async def test_init_refuses_a_name_that_is_not_one_line_of_text(tmp_path: Path) -> None:
    cases = (
        ("", "--name must not be empty"),
        ("   ", "--name must not be empty"),
        (" acme", "--name must not start or end with spaces"),
        ("acme\nadmin    il_admin_fake", "U+000A"),
        ("a\x1b[31mred", "U+001B"),
        ("two\u2028lines", "U+2028"),
        ("x" * 101, "is 101 characters; at most 100"),
    )
    # All at once: each is refused before it opens (or makes) the database, so none can see
    # another; one that did make it would still leave the file checked for below.
    runs = await at_once(*(cli("init", "--name", name, cwd=tmp_path) for name, _ in cases))
    for (_, expected), run in zip(cases, runs, strict=True):
        one_line_error(run, expected)
    # Refused before anything was created; a good name then works.
    assert not (tmp_path / "ingestlayer.db").exists()
    run = ok(await cli("init", "--name", "Acme Inc. (staging)", cwd=tmp_path))
    assert "project  Acme Inc. (staging) (prj_" in run.out


async def test_init_prints_both_keys_once(tmp_path: Path) -> None:
    # No database configured: ./ingestlayer.db in the working directory.
    run = ok(await cli("init", "--name", "demo", cwd=tmp_path))
    assert (tmp_path / "ingestlayer.db").exists()
    m = re.search(r"^project\s+demo \((prj_\w+)\)$", run.out, re.M)
    assert m, run.out
    ingest = re.search(r"^ingest\s+(il_ingest_\S+)$", run.out, re.M)
    admin = re.search(r"^admin\s+(il_admin_\S+)$", run.out, re.M)
    assert ingest and admin, run.out
    assert "shown once" in run.err

    # The printed keys are the project's live keys.
    store = Store.from_url(f"sqlite:///{tmp_path}/ingestlayer.db")
    try:
        assert await store.resolve_key(ingest.group(1)) == (m.group(1), "ingest")
        assert await store.resolve_key(admin.group(1)) == (m.group(1), "admin")
    finally:
        await store.close()

    again, events = await asyncio.gather(
        cli("init", "--name", "demo", cwd=tmp_path),
        cli("events", cwd=tmp_path),  # the only project needs no --project
    )
    one_line_error(again, "already exists")
    assert "id" in ok(events).out and "type" in events.out  # an empty table


# ---- the local workflow -------------------------------------------------------------------------------


async def test_local_workflow_apply_send_deliveries_replay(
    tmp_path: Path, sqlite_url: str, receiver: Receiver
) -> None:
    init = ok(await cli("init", "--name", "demo", cwd=tmp_path, db_url=sqlite_url))
    admin_match = re.search(r"(il_admin_\S+)", init.out)
    assert admin_match
    demo_admin = admin_match.group(1)
    # Another project ("acme"), and the worker that routes and delivers (polling less often than
    # the harness's default, to leave the CPU to the commands).
    server = await start(sqlite_url, poll_interval=0.1)
    try:
        pick = ("--project", "demo")  # two projects now: the CLI must be told which

        (tmp_path / "pipes.yaml").write_text(pipeline_yaml(receiver.url + "/orders"))
        secret_run, run = await asyncio.gather(
            cli(
                "secrets", "set", "acme-hooks", *pick, cwd=tmp_path, db_url=sqlite_url, stdin=SECRET.encode()
            ),
            cli("apply", "-f", "pipes.yaml", "--dry-run", *pick, cwd=tmp_path, db_url=sqlite_url),
        )
        assert "acme-hooks" in ok(secret_run).out and "stored" in secret_run.out
        assert SECRET not in secret_run.out + secret_run.err
        ok(run)
        assert re.search(r"create\s+pipeline orders", run.out), run.out
        assert re.search(r"create\s+destination orders/webhook.out", run.out), run.out
        assert "+++ file/orders" in run.out  # the diff
        assert "+    expression: n > 0" in run.out
        assert "dry run: 2 create" in run.out
        _, pipes = await server.request("GET", "/v1/pipelines", key=demo_admin)
        assert pipes["data"] == []  # a dry run changes nothing

        run = ok(await cli("apply", "-f", "pipes.yaml", *pick, cwd=tmp_path, db_url=sqlite_url))
        assert "applied: 2 create" in run.out
        _, pipes = await server.request("GET", "/v1/pipelines", key=demo_admin)
        assert [p["name"] for p in pipes["data"]] == ["orders"]
        _, acme_pipes = await server.request("GET", "/v1/pipelines")
        assert acme_pipes["data"] == []  # the other project is untouched

        # Send: the receiver is down, so the delivery goes dead after its one attempt.
        receiver.default = Reply(status=503)
        again, run = await asyncio.gather(
            cli("apply", "-f", "pipes.yaml", *pick, cwd=tmp_path, db_url=sqlite_url),
            cli("send", "order.placed", '{"n": 3, "who": "Zoë"}', *pick, cwd=tmp_path, db_url=sqlite_url),
        )
        assert "applied: 2 unchanged" in ok(again).out
        event_id = ok(run).out.strip()
        assert re.fullmatch(r"evt_\w+", event_id), run.out

        async def dead() -> str | None:
            _, body = await server.request("GET", "/v1/deliveries?status=dead", key=demo_admin)
            return body["data"][0]["id"] if body["data"] else None

        dlv_id = await wait_for(dead)

        events_run, dels_run, table_run = await asyncio.gather(
            cli("events", "--json", *pick, cwd=tmp_path, db_url=sqlite_url),
            cli("deliveries", "--status", "dead", "--json", *pick, cwd=tmp_path, db_url=sqlite_url),
            cli("deliveries", *pick, cwd=tmp_path, db_url=sqlite_url),
        )
        # The table, piped (no terminal, no COLUMNS), holds the whole ids, to copy into replay.
        assert dlv_id in ok(table_run).out and event_id in table_run.out, table_run.out
        (ev,) = ok(events_run).json()
        assert (ev["id"], ev["type"], ev["payload"], ev["source"]) == (
            event_id,
            "order.placed",
            {"n": 3, "who": "Zoë"},
            "sdk",  # as if sent through the API: a pipeline's `when: event.source = sdk` holds
        )
        (d,) = ok(dels_run).json()
        assert (d["id"], d["event_id"], d["status"], d["attempt_count"]) == (dlv_id, event_id, "dead", 1)
        assert d["destination"] == "orders/webhook.out" and d["last_status_code"] == 503

        # Replay: a new attempt on the same delivery id, signed with the secret set above.
        receiver.default = Reply(status=200)
        run = ok(await cli("replay", dlv_id, *pick, cwd=tmp_path, db_url=sqlite_url))
        assert run.out.strip() == "replayed 1 delivery"

        async def delivered() -> dict[str, Any] | None:
            _, body = await server.request("GET", f"/v1/deliveries/{dlv_id}", key=demo_admin)
            return body if body["status"] == "delivered" else None

        after = await wait_for(delivered)
        assert [a["status_code"] for a in after["attempts"]] == [503, 200]
        last = receiver.requests[-1]
        assert last.headers["X-Ingestlayer-Delivery"] == dlv_id
        assert last.verify(SECRET)["payload"] == {"n": 3, "who": "Zoë"}
    finally:
        await server.stop()


async def test_local_workflow_on_postgres(tmp_path: Path, pg_url: str, receiver: Receiver) -> None:
    """init, apply, send and deliveries with INGESTLAYER_DATABASE_URL naming PostgreSQL."""
    ok(await cli("init", "--name", "demo", cwd=tmp_path, db_url=pg_url))
    server = await start(pg_url, poll_interval=0.1)
    try:
        pick = ("--project", "demo")
        (tmp_path / "pipes.yaml").write_text(
            pipeline_yaml(receiver.url + "/pg").replace('auth: hmac, secret: "ref:acme-hooks"', "auth: none")
        )
        run = ok(await cli("apply", "-f", "pipes.yaml", *pick, cwd=tmp_path, db_url=pg_url))
        assert "applied: 2 create" in run.out
        run = ok(await cli("send", "order.placed", '{"n": 7}', *pick, cwd=tmp_path, db_url=pg_url))
        event_id = run.out.strip()
        await wait_for(lambda: _count(receiver, 1))
        assert receiver.requests[0].json()["id"] == event_id

        async def delivered() -> bool:
            return await demo_delivery_statuses(pg_url) == ["delivered"]

        await wait_for(delivered)
        dels, evs = await asyncio.gather(
            cli("deliveries", "--status", "delivered", "--json", *pick, cwd=tmp_path, db_url=pg_url),
            cli("events", "--json", *pick, cwd=tmp_path, db_url=pg_url),
        )
        assert [(d["event_id"], d["status"]) for d in ok(dels).json()] == [(event_id, "delivered")]
        assert [(e["id"], e["payload"]) for e in ok(evs).json()] == [(event_id, {"n": 7})]
    finally:
        await server.stop()


# ---- remote mode -------------------------------------------------------------------------------------


async def test_remote_mode_against_a_running_server(
    tmp_path: Path, sqlite_url: str, receiver: Receiver
) -> None:
    server = await start(sqlite_url, poll_interval=0.1)
    remote = ("--url", server.url, "--key", server.admin_key)
    try:
        await server.set_secret("acme-hooks", SECRET)
        (tmp_path / "pipes.yaml").write_text(pipeline_yaml(receiver.url + "/remote"))
        # No database configured: everything goes over HTTP.
        run = ok(await cli("apply", "-f", "pipes.yaml", "--dry-run", *remote, cwd=tmp_path))
        assert "dry run: 2 create" in run.out and "+++ file/orders" in run.out
        _, pipes = await server.request("GET", "/v1/pipelines")
        assert pipes["data"] == []
        run = ok(await cli("apply", "-f", "pipes.yaml", *remote, cwd=tmp_path))
        assert "applied: 2 create" in run.out
        _, pipes = await server.request("GET", "/v1/pipelines")
        assert [p["name"] for p in pipes["data"]] == ["orders"]

        _, ev = await server.ingest("order.placed", {"n": 1})

        async def delivered() -> list[dict[str, Any]] | None:
            _, body = await server.request("GET", "/v1/deliveries?status=delivered")
            data: list[dict[str, Any]] = body["data"]
            return data or None

        (dlv,) = await wait_for(delivered)
        events_run, dels_run, send_run = await asyncio.gather(
            cli("events", "--json", "--type", "order.*", *remote, cwd=tmp_path),
            cli("deliveries", "--json", "--status", "delivered", *remote, cwd=tmp_path),
            cli("send", "refund.issued", '{"n": 0}', "--idempotency-key", "k1", *remote, cwd=tmp_path),
        )
        assert [e["id"] for e in ok(events_run).json()] == [ev["id"]]
        (d,) = ok(dels_run).json()
        assert (d["id"], d["event_id"], d["status"]) == (dlv["id"], ev["id"], "delivered")
        sent_id = ok(send_run).out.strip()
        assert sent_id.startswith("evt_")
        _, got = await server.request("GET", f"/v1/events/{sent_id}")
        assert got["payload"] == {"n": 0} and got["idempotency_key"] == "k1"
        assert receiver.requests[0].verify(SECRET)["id"] == ev["id"]

        replay, dup, ingest_key = await asyncio.gather(
            cli("replay", dlv["id"], *remote, cwd=tmp_path),
            cli("send", "refund.issued", '{"n": 0}', "--idempotency-key", "k1", *remote, cwd=tmp_path),
            # Errors from the server are one line too.
            cli("deliveries", "--url", server.url, "--key", server.ingest_key, cwd=tmp_path),
        )
        assert "replayed 1" in ok(replay).out
        assert ok(dup).out.strip() == f"{sent_id} (duplicate)"
        one_line_error(ingest_key, "403", "admin")
        await wait_for(lambda: _count(receiver, 2))
        assert receiver.requests[1].headers["X-Ingestlayer-Delivery"] == dlv["id"]
    finally:
        await server.stop()


async def demo_delivery_statuses(url: str) -> list[str]:
    store = Store.from_url(url)
    try:
        (pid,) = [p["id"] for p in await store.list_projects() if p["name"] == "demo"]
        return [d["status"] for d in await store.list_deliveries(pid)]
    finally:
        await store.close()


async def _count(receiver: Receiver, n: int) -> bool:
    return len(receiver.requests) >= n


# ---- errors: one line, exit 1, no traceback --------------------------------------------------------


async def test_errors_are_one_line_with_exit_code_1(tmp_path: Path, sqlite_url: str) -> None:
    store = Store.from_url(sqlite_url)
    await store.create_project("alpha")
    await store.create_project("beta")
    await store.close()

    (tmp_path / "broken.yaml").write_text("pipelines:\n  - name: x\n    source: {match: [a\n")
    long_expr = "feature in {export, api, webhook, " + ", ".join(f"f{i}" for i in range(30))
    (tmp_path / "badexpr.yaml").write_text(pipeline_yaml("https://h.example/x", expression=long_expr))
    closed = "http://127.0.0.1:9"
    db = {"cwd": tmp_path, "db_url": sqlite_url}

    cases: list[tuple[tuple[str, ...], dict[str, Any], tuple[str, ...]]] = [
        (("apply", "-f", "broken.yaml", "--project", "alpha"), db, ("broken.yaml", "not valid YAML", "line")),
        (
            ("apply", "-f", "badexpr.yaml", "--project", "alpha"),
            db,
            ("pipelines[0].steps[0].filter.match", "position"),
        ),
        (("events", "--project", "nope"), db, ("no project 'nope'",)),
        (("events",), db, ("several projects", "alpha", "beta", "--project")),
        (("send", "a.b", "{x", "--project", "alpha"), db, ("JSON",)),
        (("send", "not a type", "{}", "--project", "alpha"), db, ("is not a valid event name",)),
        (("secrets", "set", "x", "--project", "alpha"), db, ("empty",)),  # stdin is empty
        (("events", "--url", closed, "--key", "il_admin_x"), {"cwd": tmp_path}, ("cannot reach", closed)),
        # A worker started while its database is down names the database, never its password:
        # in the words every command uses (tests/integration/test_cli_edges.py).
        (
            ("worker",),
            {"cwd": tmp_path, "db_url": "postgresql://postgres:hunter2@127.0.0.1:9/jobs"},
            (f"cannot open the database at postgresql://postgres:{MASK}@127.0.0.1:9/jobs: ", "Connect"),
        ),
    ]
    sem = asyncio.Semaphore(3)

    async def one(args: tuple[str, ...], where: dict[str, Any]) -> Run:
        async with sem:
            return await cli(*args, **where)

    runs = await asyncio.gather(*(one(args, where) for args, where, _ in cases))
    for (_, _, words), run in zip(cases, runs, strict=True):
        one_line_error(run, *words)
        assert "hunter2" not in run.err + run.out, run
    # The state is unchanged by all of that.
    store = Store.from_url(sqlite_url)
    try:
        projects = await store.list_projects()
        for p in projects:
            cfg = await store.load_project_config(p["id"])
            assert cfg.pipelines == [] and cfg.destinations == {}
            assert await store.list_events(p["id"]) == []
    finally:
        await store.close()


async def test_usage_errors_are_one_line_with_exit_code_2(tmp_path: Path) -> None:
    cases: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
        (("send",), ("Missing argument 'TYPE'", "ingestlayer send --help")),
        (("nosuch",), ("No such command 'nosuch'", "ingestlayer --help")),
        (("events", "--limit", "0"), ("--limit", "ingestlayer events --help")),
        (
            ("deliveries", "--status", "bogus"),
            ("--status: 'bogus' is not one of", "ingestlayer deliveries --help"),
        ),
        (("replay", "--status", "delivering"), ("--status: 'delivering'", "ingestlayer replay --help")),
        (("apply",), ("--file",)),
    ]
    # Independent of each other (usage errors touch no file): all at once, help among them.
    *runs, help_run = await at_once(
        *(cli(*args, cwd=tmp_path) for args, _ in cases), cli("send", "--help", cwd=tmp_path)
    )
    for (_, words), run in zip(cases, runs, strict=True):
        assert run.rc == 2, run
        lines = run.err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), run.err
        assert all(w in lines[0] for w in words), (words, lines[0])
        assert run.out == "" and "Traceback" not in run.err
    # Help is still help, on stdout, exit 0.
    assert help_run.rc == 0 and "Usage" in help_run.out and help_run.err == "", help_run


async def test_help_paragraphs_wrap_to_the_terminal_not_to_the_source(tmp_path: Path) -> None:
    # Wide: each paragraph on one line. The source wraps its docstrings at 110 columns; those
    # breaks used to come out as they were, mid-sentence, at any width.
    wide, narrow = await asyncio.gather(
        cli("replay", "--help", cwd=tmp_path, COLUMNS="300"),
        cli("tail", "--help", cwd=tmp_path, COLUMNS="60"),
    )
    ok(wide)
    assert (
        " Deliveries to a disabled or deleted destination are left as they are: they would fail at "
        "once. Matches are replayed in pages of 10,000"
    ) in wide.out, wide.out
    # Narrow: wrapped to 60 columns, no line shorter than it need be but the paragraph's last.
    ok(narrow)
    lines = narrow.out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("One line per event"))
    para = lines[start : next(i for i in range(start, len(lines)) if not lines[i].strip())]
    assert len(para) > 3, narrow.out
    for line, after in itertools.pairwise(para):
        assert len(line.rstrip()) + 1 + len(after.split()[0]) > 58, (line, after)


async def test_migrate_reports_each_step_then_nothing_to_do(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    first = ok(await cli("migrate", "--database-url", url, cwd=tmp_path))
    steps = [line for line in first.out.splitlines() if line.startswith("applied ")]
    assert steps and steps[0].startswith("applied 0001: initial schema (")
    (step_0010,) = [line for line in steps if line.startswith("applied 0010:")]
    assert (
        step_0010.startswith("applied 0010: step configurations stored under their YAML names")
        and "``" not in step_0010
    )
    assert first.out.splitlines()[-1] == f"database is up to date ({len(steps)} migrations applied)"
    again = ok(await cli("migrate", "--database-url", url, cwd=tmp_path))
    assert again.out.strip() == "database is up to date"
