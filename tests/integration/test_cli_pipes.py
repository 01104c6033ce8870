"""A reader that stops reading (``| head``, a closed pipe) ends the command quietly."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from tests.support.cli import CLI, cli, cli_env, ok


def _run_into_a_closed_pipe(args: list[str], cwd: Path, db_url: str) -> tuple[int, str]:
    proc = subprocess.Popen(
        [CLI, *args], cwd=cwd, env=cli_env(db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the command has written anything
    err = proc.stderr.read().decode()
    return proc.wait(timeout=60), err


async def test_json_into_a_closed_pipe_prints_no_error(tmp_path: Path, sqlite_url: str) -> None:
    ok(await cli("init", "--name", "p", cwd=tmp_path, db_url=sqlite_url))
    for command in (["events", "--json"], ["deliveries", "--json"]):
        rc, err = await asyncio.to_thread(_run_into_a_closed_pipe, command, tmp_path, sqlite_url)
        assert err == "", (command, err)  # was "error: [Errno 32] Broken pipe"
        assert rc == 141, (command, rc)
