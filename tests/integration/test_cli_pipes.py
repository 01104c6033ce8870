"""A reader that stops reading (``| head``, a closed pipe) ends the command quietly."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tests.support.cli import CLI, cli, cli_env, ok


def _run_into_a_closed_pipe(
    args: list[str], cwd: Path, db_url: str, *, unbuffered: bool = True
) -> tuple[int, str]:
    env = cli_env(db_url)
    # Buffered stdout (a user's shell, unlike a test run with PYTHONUNBUFFERED set) meets the
    # closed pipe only when it is flushed, which Python does at exit if the command did not.
    env.pop("PYTHONUNBUFFERED", None)
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([CLI, *args], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command has written anything
    err = proc.stderr.read().decode()
    return proc.wait(timeout=60), err


async def test_json_into_a_closed_pipe_prints_no_error(tmp_path: Path, sqlite_url: str) -> None:
    ok(await cli("init", "--name", "p", cwd=tmp_path, db_url=sqlite_url))
    for command in (["events", "--json"], ["deliveries", "--json"]):
        for unbuffered in (True, False):
            rc, err = await asyncio.to_thread(
                _run_into_a_closed_pipe, command, tmp_path, sqlite_url, unbuffered=unbuffered
            )
            # Was "error: [Errno 32] Broken pipe"; buffered, "Exception ignored in: <_io.TextIOWrapper
            # name='<stdout>'…> BrokenPipeError" and status 120.
            assert err == "", (command, unbuffered, err)
            assert rc == 141, (command, unbuffered, rc)


async def test_a_table_into_a_closed_pipe_ends_as_json_does(tmp_path: Path, sqlite_url: str) -> None:
    # rich met the broken pipe itself and exited 1, silently: `ingestlayer events | head -1`
    # ended with status 1 where the docs (and --json) say 141.
    ok(await cli("init", "--name", "p", cwd=tmp_path, db_url=sqlite_url))
    ok(await cli("send", "a.b", "{}", cwd=tmp_path, db_url=sqlite_url))
    for command in (["events"], ["deliveries"], ["tail", "-n", "1", "--for", "0"]):
        for unbuffered in (True, False):
            rc, err = await asyncio.to_thread(
                _run_into_a_closed_pipe, command, tmp_path, sqlite_url, unbuffered=unbuffered
            )
            assert err == "", (command, unbuffered, err)
            assert rc == 141, (command, unbuffered, rc)
