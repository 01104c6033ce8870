"""Running the ``ingestlayer`` command as users run it: the installed entry point, in a subprocess.

Subprocesses are started with asyncio so an in-process server keeps routing and serving while a
command runs; every wait is bounded and a command that overruns is killed.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tests.support.server import TEST_SECRET_KEY

CLI = str(Path(sys.executable).with_name("ingestlayer"))
CLI_TIMEOUT = 60.0
# Commands run together by `at_once`: more would gain nothing on 2 cores (where CI runs 3 test
# workers besides) and only stretch each command towards CLI_TIMEOUT.
AT_ONCE = 4


@dataclass
class Run:
    rc: int
    out: str
    err: str

    def json(self) -> Any:
        return orjson.loads(self.out)


def cli_env(
    db_url: str | None = None, *, secret_key: str | None = TEST_SECRET_KEY, **extra: str
) -> dict[str, str]:
    """The environment of a user's shell: no INGESTLAYER_* but what the test sets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTLAYER_") and k != "COLUMNS"}
    if db_url is not None:
        env["INGESTLAYER_DATABASE_URL"] = db_url
    if secret_key is not None:
        # The in-process server's master key, so secrets set by the CLI can be used there.
        env["INGESTLAYER_SECRET_KEY"] = secret_key
    env.update(extra)
    return env


async def cli(
    *args: str,
    cwd: Path,
    db_url: str | None = None,
    stdin: bytes | None = None,
    run_as: Sequence[str] = (),
    **extra_env: str,
) -> Run:
    """``ingestlayer *args``; ``run_as``: a command that runs it (``setpriv …``), if any."""
    proc = await asyncio.create_subprocess_exec(
        *run_as,
        CLI,
        *args,
        cwd=cwd,
        env=cli_env(db_url, **extra_env),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), CLI_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"`ingestlayer {' '.join(args)}` took over {CLI_TIMEOUT}s") from None
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def at_once(*runs: Awaitable[Run], limit: int = AT_ONCE) -> list[Run]:
    """Independent commands (``cli(...)`` not yet awaited) run together, at most ``limit`` at a
    time; their results in the order given."""
    gate = asyncio.Semaphore(limit)

    async def one(run: Awaitable[Run]) -> Run:
        async with gate:
            return await run

    return list(await asyncio.gather(*(one(run) for run in runs)))


def ok(run: Run) -> Run:
    assert run.rc == 0, run
    assert "Traceback" not in run.err, run
    return run


def one_line_error(run: Run, *words: str, rc: int | None = 1) -> str:
    """Exit ``rc`` (any non-zero with None) and exactly one line on stderr, starting with
    ``error:``, never a traceback."""
    assert run.rc != 0 if rc is None else run.rc == rc, run
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    assert lines[0].startswith("error: "), run.err
    assert "Traceback" not in run.err + run.out, run
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]
