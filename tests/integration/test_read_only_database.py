"""A server on a SQLite file it cannot write refuses to start, naming the file.

It used to open it, answer /readyz "ready", and answer every event 503 "retry shortly" for
ever. Root writes any file whatever its mode, so as root the server runs without the
capability that lets it (``setpriv``): it then meets the file's mode as any user would."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from tests.support.cli import CLI, Run, cli, cli_env, ok, one_line_error
from tests.support.processes import free_port


def _as_a_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root, this test needs util-linux's setpriv to give up CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", *args]


async def test_serve_refuses_a_database_file_it_cannot_write(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'ro.db'}"
    ok(await cli("init", "--name", "ro", cwd=tmp_path, db_url=db_url))
    (tmp_path / "ro.db").chmod(0o444)
    proc = await asyncio.create_subprocess_exec(
        *_as_a_user([CLI, "serve", "--port", str(free_port())]),
        cwd=tmp_path,
        env=cli_env(db_url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("serve started on a database it cannot write") from None
    assert proc.returncode is not None
    run = Run(proc.returncode, out.decode(), err.decode())
    # The line saying where it would serve comes first (the port is bound before the database
    # is opened); then one error line.
    run.err = "\n".join(line for line in run.err.splitlines() if " serving on http://" not in line)
    message = one_line_error(run, "cannot be written by this process", str(tmp_path / "ro.db"))
    assert "read-only" in message
