"""Real ``ingestlayer`` processes for end-to-end tests, always cleaned up.

:class:`Cluster` launches ``serve``, ``api`` and ``worker`` subprocesses against one database, the
way an operator would: configuration through ``INGESTLAYER_*`` environment variables only, a
scratch working directory, each process's stderr collected to its own file (shown when a wait
fails, to make failures debuggable). Every wait is bounded, and :meth:`Cluster.aclose` kills
whatever is still running, so a failing test never leaves a process behind.

    async with Cluster(tmp_path, database_url, lease_seconds=2) as cluster:
        keys = await cluster.init_project()
        await cluster.apply(document)
        api = await cluster.start("api")
        worker = await cluster.start("worker")
        ...
        await worker.kill()
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import yaml

from tests.support.server import TEST_SECRET_KEY

# A worker has no HTTP port; it is ready once the runtime has logged that it started.
STARTED_LINE = "ingestlayer started"
START_TIMEOUT = 30.0
LOG_TAIL_CHARS = 4000
_KEY_RE = re.compile(r"^(ingest|admin)\s+(il_(?:ingest|admin)_\S+)\s*$", re.MULTILINE)
_PROJECT_RE = re.compile(r"^project\s+.*\((prj_\S+)\)\s*$", re.MULTILINE)


# Every process still running, so that even a test run that dies without unwinding (an
# interpreter exit mid-test) leaves nothing behind.
_LIVE: set[asyncio.subprocess.Process] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)


def free_port() -> int:
    """A port of 127.0.0.1 that was free a moment ago (the child binds it itself)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def command(*args: str) -> list[str]:
    """The ``ingestlayer`` command line, run by this interpreter (the project's venv)."""
    return [sys.executable, "-m", "ingestlayer.cli", *args]


@dataclass(frozen=True)
class Keys:
    project_id: str
    ingest: str
    admin: str


class Proc:
    """One running ``ingestlayer`` process."""

    def __init__(
        self, role: str, name: str, process: asyncio.subprocess.Process, log_path: Path, port: int | None
    ) -> None:
        self.role = role
        self.name = name
        self.process = process
        self.log_path = log_path
        self.port = port
        self.url = f"http://127.0.0.1:{port}" if port else ""
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def describe(self) -> str:
        tail = self.log()[-LOG_TAIL_CHARS:]
        return f"{self.name} (pid {self.pid}, exit {self.returncode}); stderr tail:\n{tail}"

    async def wait_ready(self, session: aiohttp.ClientSession, timeout: float = START_TIMEOUT) -> None:
        """Until ``/healthz`` answers (HTTP roles) or the runtime has started (worker)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.returncode is not None:
                raise AssertionError(f"{self.name} exited while starting: {self.describe()}")
            if self.port is None:
                if STARTED_LINE in self.log():
                    return
            else:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(
                        self.url + "/healthz", timeout=aiohttp.ClientTimeout(total=2)
                    ) as resp:
                        if resp.status == 200:
                            return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} not ready within {timeout}s: {self.describe()}")

    def signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)

    async def wait_exit(self, timeout: float) -> int:
        """The exit status (negative: killed by that signal); fail if still running after ``timeout``."""
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.name} still running after {timeout}s: {self.describe()}") from None

    async def kill(self) -> None:
        """SIGKILL: no shutdown code runs, exactly like a crash or an OOM kill."""
        self.signal(signal.SIGKILL)
        await self.wait_exit(10)


class Cluster:
    """Processes sharing one database, launched from a scratch directory; all killed on close."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        *,
        lease_seconds: float | None = None,
        poll_interval: float = 0.02,
        grace_seconds: float | None = None,
        **extra_env: str,
    ) -> None:
        self.workdir = workdir
        self.database_url = database_url
        self.procs: list[Proc] = []
        self.session: aiohttp.ClientSession | None = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTLAYER_")}
        env.update(
            INGESTLAYER_DATABASE_URL=database_url,
            INGESTLAYER_SECRET_KEY=TEST_SECRET_KEY,
            INGESTLAYER_SECRET_KEY_FILE=str(workdir / "ingestlayer.key"),
            INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS="1",
            INGESTLAYER_POLL_INTERVAL=str(poll_interval),
            PYTHONUNBUFFERED="1",
            COLUMNS="200",  # keep rich from wrapping the keys `init` prints
            NO_COLOR="1",
        )
        if lease_seconds is not None:
            env["INGESTLAYER_DELIVERY_LEASE_SECONDS"] = str(lease_seconds)
        if grace_seconds is not None:
            env["INGESTLAYER_SHUTDOWN_GRACE_SECONDS"] = str(grace_seconds)
        env.update(extra_env)
        self.env = env
        self._counts: dict[str, int] = {}

    async def __aenter__(self) -> Cluster:
        self.session = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for p in self.procs:
            p.signal(signal.SIGKILL)
        for p in self.procs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(p.process.wait(), 10)
            if p.returncode is not None:
                _LIVE.discard(p.process)
        if self.session is not None:
            await self.session.close()
            self.session = None

    # ---- one-shot commands ------------------------------------------------------------------

    async def run(self, *args: str, timeout: float = 60.0) -> str:
        """Run a CLI command to completion; return its stdout, fail with its stderr."""
        proc = await asyncio.create_subprocess_exec(
            *command(*args),
            cwd=self.workdir,
            env=self.env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"`ingestlayer {' '.join(args)}` took over {timeout}s") from None
        assert proc.returncode == 0, (
            f"`ingestlayer {' '.join(args)}` exited {proc.returncode}: {err.decode(errors='replace')}"
        )
        return out.decode()

    async def init_project(self, name: str = "acme") -> Keys:
        """``ingestlayer init``; the keys are parsed from what it prints (shown once)."""
        out = await self.run("init", "--name", name)
        keys = dict(_KEY_RE.findall(out))
        project = _PROJECT_RE.search(out)
        assert project and set(keys) == {"ingest", "admin"}, f"unexpected `init` output:\n{out}"
        return Keys(project.group(1), keys["ingest"], keys["admin"])

    async def apply(self, document: dict[str, Any]) -> str:
        """``ingestlayer apply -f FILE`` on the database."""
        path = self.workdir / "pipelines.yaml"
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return await self.run("apply", "-f", str(path))

    # ---- long-running roles -------------------------------------------------------------------

    async def start(self, role: str, *, ready: bool = True, probes: bool = False, **extra_env: str) -> Proc:
        """Launch ``ingestlayer serve|api|worker``; by default wait until it is ready. A worker
        with ``probes`` serves its probes on a port of its own (``Proc.port``)."""
        assert role in ("serve", "api", "worker"), role
        assert self.session is not None, "use `async with Cluster(...)`"
        n = self._counts[role] = self._counts.get(role, 0) + 1
        name = f"{role}-{n}"
        for attempt in range(3):
            port = None if role == "worker" and not probes else free_port()
            env = {**self.env, **extra_env}
            if port is not None:
                env["INGESTLAYER_WORKER_PORT" if role == "worker" else "INGESTLAYER_PORT"] = str(port)
            log_path = self.workdir / f"{name}.stderr.log"
            with log_path.open("wb") as log_file:
                process = await asyncio.create_subprocess_exec(
                    *command(role),
                    cwd=self.workdir,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    start_new_session=True,  # a Ctrl-C in the terminal reaches pytest, not these
                )
            _LIVE.add(process)
            proc = Proc(role, name, process, log_path, port)
            self.procs.append(proc)
            if not ready:
                return proc
            try:
                await proc.wait_ready(self.session)
            except AssertionError:
                # The port picked was taken between our check and the child's bind: try another.
                # (The child says "Address already in use", capitalised as the OS words it.)
                taken = "address already in use" in proc.log().lower()
                if proc.returncode is not None and taken and attempt < 2:
                    continue
                raise
            return proc
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- talking to the API -----------------------------------------------------------------

    async def request(
        self,
        proc: Proc,
        method: str,
        path: str,
        *,
        key: str,
        json: Any = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        assert self.session is not None
        async with self.session.request(
            method,
            proc.url + path,
            json=json,
            headers={"Authorization": f"Bearer {key}"},
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            raw = await resp.read()
            try:
                body = await resp.json(content_type=None) if raw else None
            except ValueError:
                body = raw
            return resp.status, body

    async def all_deliveries(self, proc: Proc, admin_key: str) -> list[dict[str, Any]]:
        """Every delivery of the project, through ``GET /v1/deliveries`` paged with ``before``."""
        out: list[dict[str, Any]] = []
        before: str | None = None
        while True:
            path = "/v1/deliveries?limit=500" + (f"&before={before}" if before else "")
            status, body = await self.request(proc, "GET", path, key=admin_key)
            assert status == 200, body
            out.extend(body["data"])
            before = body["next_before"]
            if before is None:
                return out

    async def delivery_counts(self, proc: Proc, admin_key: str) -> dict[str, int]:
        """How many deliveries are in each status (the ``counts`` of ``GET /v1/deliveries``)."""
        status, body = await self.request(proc, "GET", "/v1/deliveries?limit=1", key=admin_key)
        assert status == 200, body
        counts: dict[str, int] = body["counts"]
        return counts

    async def wait_for_counts(
        self,
        proc: Proc,
        admin_key: str,
        expected: dict[str, int],
        timeout: float,
        *watch: Proc,
        interval: float = 0.1,
    ) -> None:
        """Until the delivery counts are exactly ``expected``; fail showing the last counts."""
        last: dict[str, int] = {}

        async def check() -> bool:
            nonlocal last
            last = await self.delivery_counts(proc, admin_key)
            return last == expected

        await wait_until(
            check,
            timeout,
            f"delivery counts {expected}",
            proc,
            *watch,
            interval=interval,
            progress=lambda: last,
        )


async def wait_until(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    *procs: Proc,
    interval: float = 0.05,
    progress: Callable[[], Any] | None = None,
) -> Any:
    """Poll ``check()`` (sync or async) until truthy; on timeout fail with the processes' stderr.

    A process in ``procs`` that exits fails the wait at once; ``progress()`` (sync) is shown in
    the failure message, e.g. how many of the expected requests did arrive.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        for p in procs:
            if p.returncode is not None:
                raise AssertionError(f"{what}: {p.name} died: {p.describe()}")
        await asyncio.sleep(interval)
    shown = progress() if progress is not None else last
    logs = "\n".join(p.describe() for p in procs)
    raise AssertionError(f"{what}: not within {timeout}s (last: {shown!r})\n{logs}")


async def post_events(
    cluster: Cluster, proc: Proc, keys: Keys, start: int, count: int, *, at_once: int = 20
) -> list[str]:
    """POST ``order.created`` events one by one, ``at_once`` at a time (so group commit batches
    them), payloads ``{"i": start..}``; each must be accepted as new. Returns their ids."""
    gate = asyncio.Semaphore(at_once)

    async def one(i: int) -> str:
        async with gate:
            status, body = await cluster.request(
                proc,
                "POST",
                "/v1/events",
                key=keys.ingest,
                json={"type": "order.created", "payload": {"i": i}},
            )
        assert status == 202, body
        assert body["duplicate"] is False
        event_id: str = body["id"]
        return event_id

    return list(await asyncio.gather(*(one(i) for i in range(start, start + count))))
