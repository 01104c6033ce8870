"""The CLI at its edges, as an operator meets them: odd addresses, servers that are not ingestlayer
(or not answering), files and names one mode used to take and the other refuse, databases that
cannot be reached, and Ctrl-C in the middle of a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from importlib.metadata import entry_points
from pathlib import Path

from ingestlayer.urlmask import MASK
from tests.integration.test_cli import start
from tests.support.cli import CLI, at_once, cli, cli_env, ok, one_line_error


def free_port() -> int:
    """A port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def http_stub(status: int, content_type: str, body: bytes) -> AsyncIterator[str]:
    """A server that answers every request with the same response: a proxy's error page, some
    other program on the port."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (
                int(line.split(b":", 1)[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ),
            0,
        )
        await reader.readexactly(length)
        writer.write(
            f"HTTP/1.1 {status} Whatever\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


# ---- --url -------------------------------------------------------------------------------------


async def test_a_password_in_the_url_is_never_shown(tmp_path: Path, sqlite_url: str) -> None:
    dead = f"http://ops:hunter2@127.0.0.1:{free_port()}"
    server = await start(sqlite_url)
    try:
        live = server.url.replace("http://", "http://ops:hunter2@")
        (tmp_path / "sources.yaml").write_text("sources:\n  - { name: open, verify: none }\n")
        unreached, listed, run = await at_once(
            cli("events", "--url", dead, "--key", "il_admin_x", cwd=tmp_path),
            cli("events", "--url", live, "--key", server.admin_key, cwd=tmp_path),
            cli("apply", "-f", "sources.yaml", "--url", live, "--key", server.admin_key, cwd=tmp_path),
        )
        line = one_line_error(unreached, "cannot reach http://127.0.0.1:")
        assert "hunter2" not in unreached.err + unreached.out, line
        # And against a live server the user part is ignored, not taken for the host.
        ok(listed)
        # A source's ingress address is printed on the server's address, without the password.
        ok(run)
        assert f"ingress: {server.url}/v1/ingress/src_" in run.out, run
        assert "hunter2" not in run.out + run.err, run
    finally:
        await server.stop()


async def test_a_key_with_a_line_break_is_used_or_refused_never_shown(
    tmp_path: Path, sqlite_url: str
) -> None:
    server = await start(sqlite_url)
    try:
        key = server.admin_key
        broken = (f"{key[:12]}\n{key[12:]}", f"{key}\x1b", f"{key[:12]} {key[12:]}", f"{key}\u200b")
        listed, sent, *refused, blank = await at_once(
            # Read from a file or a secret store, with the line break it ends in: used as the key.
            cli("events", "--url", server.url, cwd=tmp_path, INGESTLAYER_ADMIN_KEY=key + "\n"),
            cli("send", "a.b", "{}", "--url", server.url, "--key", f" {key}\r\n", cwd=tmp_path),
            *(cli("events", "--url", server.url, cwd=tmp_path, INGESTLAYER_ADMIN_KEY=b) for b in broken),
            cli("events", "--url", server.url, cwd=tmp_path, INGESTLAYER_ADMIN_KEY=" \n"),
        )
        ok(listed)
        ok(sent)
        # A line break or a control character inside it: refused, without quoting the key.
        for run in refused:
            one_line_error(run, "the key (--key or INGESTLAYER_ADMIN_KEY) holds a character no key has")
            assert key[12:] not in run.out + run.err, run
        # Blank once its spaces and line breaks are gone: no key at all, not a 401.
        one_line_error(blank, "--url needs a key: --key or INGESTLAYER_ADMIN_KEY is blank")
    finally:
        await server.stop()


async def test_an_address_without_http_says_what_one_looks_like(tmp_path: Path) -> None:
    for run in await at_once(
        *(
            cli("events", "--url", url, "--key", "il_admin_x", cwd=tmp_path)
            for url in ("127.0.0.1:8000", "ftp://example.com")
        )
    ):
        one_line_error(run, "is not a server address such as http://")


async def test_a_server_that_is_not_ingestlayer_is_one_clear_line(tmp_path: Path) -> None:
    html = b"<html><body><h1>Welcome to nginx</h1></body></html>"
    async with (
        http_stub(200, "text/html", html) as page,
        http_stub(200, "application/json", b'{"hello": "world"}') as json_url,
        http_stub(502, "text/html", html) as bad_gateway,
    ):
        cases = [
            (args, page, "did not answer as an ingestlayer server")
            for args in (("events",), ("deliveries",), ("send", "a.b", "{}"), ("replay",))
        ]
        cases.append((("events",), json_url, "did not answer as an ingestlayer server"))
        cases.append((("events",), bad_gateway, f"{bad_gateway} answered 502"))
        runs = await at_once(
            *(cli(*args, "--url", url, "--key", "il_admin_x", cwd=tmp_path) for args, url, _ in cases)
        )
    for (_, url, words), run in zip(cases, runs, strict=True):
        one_line_error(run, url, words)


async def test_ctrl_c_while_a_server_does_not_answer_exits_130_at_once(tmp_path: Path) -> None:
    # Accepts connections, never answers: a hung server or a black-holing proxy.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    silent.setblocking(False)
    url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    held: list[socket.socket] = []
    try:
        proc = await asyncio.create_subprocess_exec(
            CLI,
            "events",
            "--url",
            url,
            "--key",
            "il_admin_x",
            cwd=tmp_path,
            env=cli_env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        # Started and waiting on the server (however long a loaded machine took to start it):
        # its request has arrived, on a connection held open without an answer.
        deadline = time.monotonic() + 30
        request = b""
        while not request:
            assert time.monotonic() < deadline and proc.returncode is None, "no request came"
            with contextlib.suppress(BlockingIOError):
                if not held:
                    conn = silent.accept()[0]
                    conn.setblocking(False)
                    held.append(conn)
                request = held[0].recv(65536)
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError("one Ctrl-C did not stop a command waiting on a server") from None
        assert proc.returncode == 130, err
        assert b"Traceback" not in err, err
    finally:
        for conn in held:
            conn.close()
        silent.close()


# Ctrl-C while the command line is still being imported, made certain: the import of
# ingestlayer.cli is interrupted as a Ctrl-C at that moment would.
_INTERRUPTED_IMPORT = """
import sys

class CtrlC:
    def find_spec(self, name, path=None, target=None):
        if name == "ingestlayer.cli":
            raise KeyboardInterrupt
        return None

sys.meta_path.insert(0, CtrlC())
from ingestlayer.entry import main
main()
"""


async def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _INTERRUPTED_IMPORT,
        "events",
        cwd=tmp_path,
        env=cli_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert (proc.returncode, out, err) == (130, b"", b"error: aborted\n")
    # The installed command is that entry point.
    scripts = [e for e in entry_points(group="console_scripts") if e.name == "ingestlayer"]
    assert [e.value for e in scripts] == ["ingestlayer.entry:main"], scripts


async def test_project_with_url_is_refused_not_ignored(tmp_path: Path, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    try:
        (tmp_path / "empty.yaml").write_text("pipelines: []\n")
        run = await cli(
            "apply", "-f", "empty.yaml", "--prune", "--project", "other",
            "--url", server.url, "--key", server.admin_key, cwd=tmp_path,
        )  # fmt: skip
        one_line_error(run, "--project", "--url")
    finally:
        await server.stop()


# ---- the same answers in both modes ------------------------------------------------------------


async def test_apply_refuses_and_accepts_the_same_files_in_both_modes(
    tmp_path: Path, sqlite_url: str
) -> None:
    ok(await cli("init", cwd=tmp_path, db_url=sqlite_url))
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "latin1.yaml").write_bytes(b"pipelines: []\n# caf\xe9\n")
    server = await start(sqlite_url)
    try:
        modes = {
            "database": ("--project", server.project_id),
            "server": ("--url", server.url, "--key", server.admin_key),
        }
        # Nothing here changes the (empty) configuration: every command at once.
        runs = {
            mode: await at_once(
                *(
                    cli("apply", "-f", *file, *args, cwd=tmp_path, db_url=local_db)
                    for file in (
                        ("empty.yaml",),
                        ("empty.yaml", "--prune"),
                        ("list.yaml",),
                        ("latin1.yaml",),
                        ("missing.yaml",),
                    )
                )
            )
            for mode, args, local_db in (
                ("database", modes["database"], sqlite_url),
                ("server", modes["server"], None),
            )
        }
        for mode, (empty, prune, listed, latin1, missing) in runs.items():
            assert ok(empty).out.strip() == "applied: nothing to do", (mode, empty)
            # ... but pruning to an empty file would delete everything: refused, as the API does.
            one_line_error(prune, "empty.yaml is empty: with --prune that would delete every pipeline")
            one_line_error(listed, "list.yaml: the file must be a mapping")
            one_line_error(latin1, "latin1.yaml: not UTF-8 text")
            assert one_line_error(missing) == "error: missing.yaml: No such file or directory", mode
    finally:
        await server.stop()


async def test_secrets_set_refuses_the_same_names_in_both_modes(tmp_path: Path, sqlite_url: str) -> None:
    server = await start(sqlite_url)
    try:
        local = ("--project", server.project_id)
        remote = ("--url", server.url, "--key", server.admin_key)
        # An endpoint's signing secret is the endpoint's, on the database as on the server.
        status, endpoint = await server.request(
            "POST", "/v1/endpoints", json={"url": "https://hooks.example.com/x", "events": ["a.b"]}
        )
        assert status == 201, endpoint
        owned = f"endpoint-{endpoint['id']}"
        cases = [(name, "secret names are 1 to 200 ASCII letters") for name in ("bad name!", "a/b")]
        cases.append((owned, f"belongs to endpoint {endpoint['id']}"))
        # All refused, none stored: at once.
        runs = await at_once(
            *(
                run
                for name, _ in cases
                for run in (
                    cli("secrets", "set", name, *local, cwd=tmp_path, db_url=sqlite_url, stdin=b"v"),
                    cli("secrets", "set", name, *remote, cwd=tmp_path, stdin=b"v"),
                )
            )
        )
        for (_, words), local_run, remote_run in zip(cases, runs[::2], runs[1::2], strict=True):
            one_line_error(local_run, words)
            one_line_error(remote_run, words)
    finally:
        await server.stop()


# ---- the database ------------------------------------------------------------------------------


async def test_a_database_that_cannot_be_reached_is_named_without_its_password(tmp_path: Path) -> None:
    unreachable = f"postgresql://postgres:sekrit@127.0.0.1:{free_port()}/x"
    missing = "postgresql://postgres:sekrit@127.0.0.1:5432/ingestlayer_no_such_database"
    # The management commands and the server's roles (which migrate as they start) alike.
    cases = [
        (command, url, problem)
        for url, problem in ((unreachable, "Connect call failed"), (missing, "does not exist"))
        for command in (("events",), ("init",), ("migrate",), ("worker",), ("api",))
    ]
    runs = await at_once(*(cli(*command, "--database-url", url, cwd=tmp_path) for command, url, _ in cases))
    for (_, _, problem), run in zip(cases, runs, strict=True):
        line = one_line_error(
            run, f"cannot open the database at postgresql://postgres:{MASK}@127.0.0.1:", problem
        )
        assert "sekrit" not in run.err + run.out and "sqlalche.me" not in line, line


async def test_a_database_url_that_cannot_be_read_is_named_without_its_password(tmp_path: Path) -> None:
    # SQLAlchemy reads the port as 's3cr3t@127.0.0.1' and says so: a piece of the password.
    url = "postgresql://postgres:p@ss:s3cr3t@127.0.0.1/x"
    for run in await at_once(
        *(cli(command, "--database-url", url, cwd=tmp_path) for command in ("migrate", "worker"))
    ):
        one_line_error(run, f"postgresql://postgres:{MASK}@127.0.0.1/x is not a URL that can be read")
        assert "s3cr3t" not in run.err + run.out and "p@ss" not in run.err + run.out, run


async def test_a_sqlite_file_in_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/no/such/dir/ingestlayer.db"
    for run in await at_once(
        *(cli(command, "--database-url", url, cwd=tmp_path) for command in ("events", "init", "migrate"))
    ):
        one_line_error(run, "cannot open the database", f"no directory {tmp_path}/no/such/dir")


async def test_a_question_mark_in_a_sqlite_path_is_refused_not_cut_off(tmp_path: Path) -> None:
    """Read as a URL's query, what follows '?' was dropped: init made ``q`` instead of
    ``q?dir/x.db``, and said nothing."""
    (tmp_path / "q?dir").mkdir()
    run = await cli("init", "--name", "x", "--database-url", f"sqlite:///{tmp_path}/q?dir/x.db", cwd=tmp_path)
    one_line_error(run, "a SQLite URL takes no ?query; a '?' in the file's path is written %3F")
    assert sorted(os.listdir(tmp_path)) == ["q?dir"]
    ok(await cli("init", "--name", "x", "--database-url", f"sqlite:///{tmp_path}/q%3Fdir/x.db", cwd=tmp_path))
    assert (tmp_path / "q?dir" / "x.db").is_file()


async def test_send_refuses_the_same_idempotency_keys_in_both_modes(tmp_path: Path, sqlite_url: str) -> None:
    """The API's rule for a key (1 to 255 characters, no control characters), in both modes: the
    database alone used to take a 300-character key and an empty one, which then matched every
    later empty one."""
    server = await start(sqlite_url)
    try:
        local = ("--project", server.project_id)
        remote = ("--url", server.url, "--key", server.ingest_key)
        rule = "--idempotency-key must be 1 to 255 characters, without control characters"
        # All refused, none stored: at once.
        for run in await at_once(
            *(
                run
                for bad in ("", "k" * 256, "tab\there")
                for run in (
                    cli(
                        "send", "a.b", "{}", "--idempotency-key", bad, *local, cwd=tmp_path, db_url=sqlite_url
                    ),
                    cli("send", "a.b", "{}", "--idempotency-key", bad, *remote, cwd=tmp_path),
                )
            )
        ):
            one_line_error(run, rule)
        # A good key still deduplicates, across the two modes.
        key = ("--idempotency-key", "k" * 255)
        first = ok(await cli("send", "a.b", "{}", *key, *local, cwd=tmp_path, db_url=sqlite_url)).out
        again = ok(await cli("send", "a.b", "{}", *key, *remote, cwd=tmp_path)).out
        assert again.strip() == first.strip() + " (duplicate)"
        status, listed = await server.request("GET", "/v1/events?limit=10")
        assert status == 200 and len(listed["data"]) == 1
    finally:
        await server.stop()
