"""A server on a SQLite file it cannot write refuses to start, naming the file.

It used to open it, answer /readyz "ready", and answer every event 503 "retry shortly" for
ever. Root writes any file whatever its mode, so as root the server runs without the
capability that lets it (``setpriv``): it then meets the file's mode as any user would."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.support.cli import cli, ok, one_line_error
from tests.support.processes import free_port


def _without_root_override() -> list[str]:
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root, this test needs util-linux's setpriv to give up CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


async def test_serve_refuses_a_database_file_it_cannot_write(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'ro.db'}"
    ok(await cli("init", "--name", "ro", cwd=tmp_path, db_url=db_url))
    (tmp_path / "ro.db").chmod(0o444)
    # Started on it, serve would run until cli()'s timeout, which fails the test.
    args = ("serve", "--port", str(free_port()))
    run = await cli(*args, cwd=tmp_path, db_url=db_url, run_as=_without_root_override())
    # The line saying where it would serve comes first (the port is bound before the database
    # is opened); then one error line.
    run.err = "\n".join(line for line in run.err.splitlines() if " serving on http://" not in line)
    message = one_line_error(run, "cannot be written by this process", str(tmp_path / "ro.db"))
    assert "read-only" in message
