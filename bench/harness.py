"""Shared plumbing for the benchmarks: processes, databases, CPU accounting, load generators.

Everything runs on 127.0.0.1 and is bounded in time: every wait has a timeout, every process
that a benchmark starts is stopped by its pid in a ``finally``, and :func:`deadline` turns an
overrun into an exception so the cleanup still runs. Nothing here needs a package beyond what
the project already installs (aiohttp, orjson, asyncpg); ``wrk`` is used when it is on PATH.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable
INGESTLAYER = str(VENV_BIN / "ingestlayer") if (VENV_BIN / "ingestlayer").exists() else "ingestlayer"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
PG_ADMIN_URL = os.environ.get("BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SECRET_KEY = "bench-master-key-not-for-production"
HOOK_SECRET = "whsec_YmVuY2gtc2lnbmluZy1zZWNyZXQtMzItYnl0ZXMhIQ=="


def server_cmd() -> list[str]:
    """How to start a server role: ``ingestlayer`` unless ``BENCH_SERVER_CMD`` names another
    command (for A/B measurements of a change, e.g. a launcher that patches something first)."""
    custom = os.environ.get("BENCH_SERVER_CMD")
    return shlex.split(custom) if custom else [INGESTLAYER]


# One small, realistic event (about 110 bytes on the wire): what the bare endpoint parses too.
SMALL_EVENT: dict[str, Any] = {
    "type": "feature.used",
    "payload": {"user_id": "u_1234", "feature": "csv.export", "count": 1, "plan": "pro"},
}


# Names of the processes under test in CPU reports (the baseline's is "server").
SERVER_PROCS = ("server", "serve", "api", "worker")


def server_cores(cpu: dict[str, float]) -> float:
    return sum(v for k, v in cpu.items() if k in SERVER_PROCS)


class BenchError(RuntimeError):
    """A benchmark could not run (a server did not start, a deadline passed)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def deadline(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`BenchError` inside the block if it runs longer than ``seconds``."""

    def fire(_sig: int, _frame: Any) -> None:
        raise BenchError(f"{what} did not finish within {seconds:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- CPU accounting (Linux /proc; no psutil) ---------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of one live process, in seconds."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds over all cores since boot, from /proc/stat."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    vals = [int(v) for v in parts[:8]]
    idle = vals[3] + vals[4]
    total = sum(vals)
    return (total - idle) / CLK_TCK, total / CLK_TCK


def postgres_cpu_by_pid(database: str) -> dict[int, float]:
    """CPU used so far by PostgreSQL's processes that work for ``database``: its backends, and
    the shared auxiliary processes (WAL writer, checkpointer, ...). Other databases' backends,
    such as a test suite's running beside the benchmark, are left out."""
    found: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if not (entry / "comm").read_text().startswith("postgres"):
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        is_backend = "(" in cmdline or "[local]" in cmdline
        if database in cmdline or not is_backend:
            found[int(entry.name)] = proc_cpu_seconds(int(entry.name))
    return found


@dataclass
class CpuWindow:
    """CPU used by named processes over a measured window, as a fraction of one core."""

    pids: dict[str, int]
    postgres_db: str | None = None  # also count this database's PostgreSQL processes
    wall: float = 0.0
    _t0: float = 0.0
    _start: dict[str, float] = field(default_factory=dict)
    _machine: tuple[float, float] = (0.0, 0.0)
    _pg_start: dict[int, float] = field(default_factory=dict)
    result: dict[str, float] = field(default_factory=dict)

    def __enter__(self) -> CpuWindow:
        self._t0 = time.monotonic()
        self._start = {name: proc_cpu_seconds(pid) for name, pid in self.pids.items()}
        if self.postgres_db:
            self._pg_start = postgres_cpu_by_pid(self.postgres_db)
        self._machine = machine_busy_seconds()
        return self

    def __exit__(self, *_exc: object) -> None:
        wall = self.wall = max(time.monotonic() - self._t0, 1e-9)
        for name, pid in self.pids.items():
            self.result[name] = (proc_cpu_seconds(pid) - self._start[name]) / wall
        if self.postgres_db:
            # A backend that exits inside the window takes its CPU with it: an undercount.
            end = postgres_cpu_by_pid(self.postgres_db)
            used = sum(max(0.0, cpu - self._pg_start.get(pid, 0.0)) for pid, cpu in end.items())
            self.result["postgres"] = used / wall
        busy, total = machine_busy_seconds()
        span = max(total - self._machine[1], 1e-9) / NCPU
        self.result["machine"] = (busy - self._machine[0]) / span  # in cores: NCPU = all busy


# ---- processes ---------------------------------------------------------------------------------


class Proc:
    """A child process with its output in a file; stopped by pid, gently first."""

    def __init__(self, name: str, cmd: list[str], *, env: dict[str, str] | None, cwd: Path, logdir: Path):
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.popen = subprocess.Popen(
            cmd,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()


def http_json(
    method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, timeout: float = 10
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def wait_http(url: str, proc: Proc, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200, or fail with the process's last log lines."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited ({proc.popen.returncode}):\n{proc.tail()}")
        try:
            status, _ = http_json("GET", url, timeout=2)
            if status == 200:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.1)
    raise BenchError(f"{proc.name} did not answer {url} within {timeout:.0f} s:\n{proc.tail()}")


# ---- databases ---------------------------------------------------------------------------------


def _pg(sql: str, url: str = PG_ADMIN_URL) -> None:
    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def pg_transactions(database: str) -> int:
    """Transactions committed or rolled back so far in ``database`` (pg_stat_database; the
    statistics lag by up to a second, so read them after a short pause)."""
    import asyncpg

    async def run() -> int:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
        try:
            await conn.execute("SELECT pg_stat_clear_snapshot()")
            value = await conn.fetchval(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", database
            )
            return int(value or 0)
        finally:
            await conn.close()

    return asyncio.run(run())


def query(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run one read-only query on a deployment's database (SQLite file or PostgreSQL)."""
    if db_url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(f"file:{db_url.split(':///', 1)[1]}?mode=ro", uri=True, timeout=30)
        try:
            return [tuple(r) for r in conn.execute(sql).fetchall()]
        finally:
            conn.close()
    import asyncpg

    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(db_url, timeout=5)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return asyncio.run(run())


def pg_available() -> str | None:
    """None when PostgreSQL answers at BENCH_PG_URL, else why not."""
    try:
        _pg("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@contextlib.contextmanager
def database(backend: str, workdir: Path, pg_prefix: str = "il_bench_") -> Iterator[str]:
    """A fresh, empty database URL: a SQLite file in ``workdir``, or a new PostgreSQL database
    (named ``pg_prefix`` and a random suffix) that is dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    if backend != "postgres":
        raise ValueError(backend)
    name = f"{pg_prefix}{uuid.uuid4().hex[:10]}"
    _pg(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with contextlib.suppress(Exception):
            _pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- an ingestlayer deployment -----------------------------------------------------------------


@dataclass
class Deployment:
    """``ingestlayer serve`` (or ``api`` + ``worker``) on a fresh database, with a project."""

    backend: str
    mode: str  # serve | split (api + worker processes) | api (no worker: ingest only)
    workdir: Path
    pipeline_yaml: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    command: list[str] = field(default_factory=server_cmd)  # how the server roles are started
    pg_prefix: str = "il_bench_"  # the start of a PostgreSQL database's name
    port: int = 0  # the server's port; 0: any free one
    url: str = ""
    db_url: str = ""
    db_name: str | None = None  # the PostgreSQL database, for CPU accounting
    ingest_key: str = ""
    admin_key: str = ""
    procs: list[Proc] = field(default_factory=list)

    def env(self, db_url: str) -> dict[str, str]:
        return {
            "INGESTLAYER_DATABASE_URL": db_url,
            "INGESTLAYER_ALLOW_PRIVATE_DESTINATIONS": "1",
            "INGESTLAYER_SECRET_KEY": SECRET_KEY,
            "INGESTLAYER_SECRET_KEY_FILE": str(self.workdir / "ingestlayer.key"),
            "COLUMNS": "200",
            "NO_COLOR": "1",
            **self.extra_env,
        }

    def _cli(self, env: dict[str, str], *args: str, stdin: str | None = None) -> str:
        res = subprocess.run(
            [*self.command, *args],  # the same version as the servers: it migrates the database
            env={**os.environ, **env},
            cwd=self.workdir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if res.returncode != 0:
            raise BenchError(f"ingestlayer {' '.join(args)} failed: {res.stderr.strip() or res.stdout}")
        return res.stdout

    @property
    def server_pids(self) -> dict[str, int]:
        return {p.name: p.pid for p in self.procs}

    @contextlib.contextmanager
    def run(self) -> Iterator[Deployment]:
        with database(self.backend, self.workdir, self.pg_prefix) as db_url:
            self.db_url = db_url
            self.db_name = db_url.rsplit("/", 1)[1] if self.backend == "postgres" else None
            env = self.env(db_url)
            out = self._cli(env, "init", "--name", "bench")
            keys = dict(re.findall(r"^(ingest|admin)\s+(il_\S+)", out, re.MULTILINE))
            self.ingest_key, self.admin_key = keys["ingest"], keys["admin"]
            if self.pipeline_yaml:
                self._cli(env, "secrets", "set", "bench-hooks", stdin=HOOK_SECRET + "\n")
                path = self.workdir / "pipelines.yaml"
                path.write_text(self.pipeline_yaml)
                self._cli(env, "apply", "-f", str(path))
            port = self.port or free_port()
            self.url = f"http://127.0.0.1:{port}"
            env["INGESTLAYER_PORT"] = str(port)
            try:
                if self.mode == "serve":
                    self.procs.append(
                        Proc(
                            "serve", [*self.command, "serve"], env=env, cwd=self.workdir, logdir=self.workdir
                        )
                    )
                else:  # split: api + worker; api: the api alone (nothing routes or delivers)
                    self.procs.append(
                        Proc("api", [*self.command, "api"], env=env, cwd=self.workdir, logdir=self.workdir)
                    )
                    if self.mode == "split":
                        self.procs.append(
                            Proc(
                                "worker",
                                [*self.command, "worker"],
                                env=env,
                                cwd=self.workdir,
                                logdir=self.workdir,
                            )
                        )
                wait_http(self.url + "/readyz", self.procs[0])
                yield self
            finally:
                for p in reversed(self.procs):
                    p.stop()
                self.procs.clear()

    @contextlib.contextmanager
    def profiled(self, label: str) -> Iterator[None]:
        """With ``BENCH_PROFILE_DIR`` set and py-spy installed, sample every server process over
        the block (GIL-holding samples only: where the CPU of the event loop goes)."""
        out_dir = os.environ.get("BENCH_PROFILE_DIR")
        spy = shutil.which("py-spy") or (str(VENV_BIN / "py-spy") if (VENV_BIN / "py-spy").exists() else None)
        if not out_dir or not spy:
            yield
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        spies: list[tuple[Path, subprocess.Popen[bytes]]] = []
        for p in self.procs:
            raw = Path(out_dir) / f"{self.backend}-{self.mode}-{label}-{p.name}.folded"
            cmd = [spy, "record", "--pid", str(p.pid), "--gil", "-r", "200", "-f", "raw", "-o", str(raw)]
            spies.append((raw, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
        try:
            yield
        finally:
            for raw, spy_proc in spies:
                spy_proc.send_signal(signal.SIGINT)
                try:
                    spy_proc.wait(20)
                except subprocess.TimeoutExpired:
                    spy_proc.kill()
                    spy_proc.wait()
                if raw.exists():
                    raw.with_suffix(".txt").write_text(summarize_profile(raw))

    def metric(self, name: str, labels: str = "") -> float:
        """One value from ``/metrics`` (served by the api process)."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10) as resp:
            text = resp.read().decode()
        want = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="ingestlayer-bench-"))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


# ---- load generators ---------------------------------------------------------------------------


def wrk_path() -> str | None:
    if os.environ.get("BENCH_NO_WRK"):
        return None
    return shutil.which("wrk")


@dataclass
class LoadResult:
    generator: str
    requests: int  # answered with 2xx
    errors: int  # non-2xx, timeouts, socket errors
    elapsed: float
    p50_ms: float
    p99_ms: float
    cpu: dict[str, float] = field(default_factory=dict)  # fraction of one core, per process
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0


def _wait_child(popen: subprocess.Popen[bytes], timeout: float) -> float:
    """Wait for a child; return the CPU seconds it used (from wait4's rusage)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pid, _status, ru = os.wait4(popen.pid, os.WNOHANG)
        if pid:
            popen.returncode = os.waitstatus_to_exitcode(_status)
            return float(ru.ru_utime + ru.ru_stime)
        time.sleep(0.05)
    popen.kill()
    os.wait4(popen.pid, 0)
    raise BenchError(f"load generator {popen.args!r} overran its {timeout:.0f} s budget")


def run_load(
    url: str,
    body: bytes,
    *,
    headers: dict[str, str],
    connections: int,
    duration: float,
    warmup: float,
    watch: dict[str, int],
    postgres_db: str | None = None,
    prefer_wrk: bool = True,
) -> LoadResult:
    """Closed-loop load: ``connections`` keep-alive connections POST ``body`` for ``duration``
    seconds after ``warmup`` seconds of unmeasured load. wrk when available, else aiohttp."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        body_file = tmp / "body.json"
        body_file.write_bytes(body)
        out_file = tmp / "out.json"
        wrk = wrk_path() if prefer_wrk else None
        idle_before = wait_for_quiet()
        if wrk:
            env = {
                **os.environ,
                "WRK_BODY_FILE": str(body_file),
                "WRK_HEADERS": json.dumps(headers),
                "WRK_OUT": str(out_file),
            }
            script = str(BENCH_DIR / "wrk_post.lua")
            base = [wrk, "-t1", f"-c{connections}", "--timeout", "10s", "-s", script]
            if warmup > 0:
                subprocess.run(
                    [*base, f"-d{max(1, round(warmup))}s", url],
                    env=env,
                    capture_output=True,
                    timeout=warmup + 30,
                    check=False,
                )
            cmd = [*base, f"-d{max(1, round(duration))}s", url]
        else:
            env = dict(os.environ)
            cmd = [
                PYTHON,
                str(BENCH_DIR / "loadgen.py"),
                "closed",
                url,
                "--body-file",
                str(body_file),
                "--headers",
                json.dumps(headers),
                "--connections",
                str(connections),
                "--duration",
                str(duration),
                "--warmup",
                str(warmup),
                "--out",
                str(out_file),
            ]
        with (tmp / "stderr.log").open("wb") as errlog:
            popen = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=errlog)
        try:
            # The generator's own CPU comes from wait4; the window covers the measured part.
            time.sleep(0 if wrk else warmup)
            with CpuWindow(watch, postgres_db=postgres_db) as win:
                gen_cpu = _wait_child(popen, duration + warmup + 60)
        finally:
            if popen.poll() is None:
                popen.kill()
                popen.wait()
        if not out_file.exists():
            raise BenchError(f"load generator failed: {(tmp / 'stderr.log').read_text()[-2000:]}")
        res = json.loads(out_file.read_text())
        cpu = dict(win.result)
        cpu["generator"] = gen_cpu / (res["elapsed"] + (0 if wrk else warmup))
        return LoadResult(
            generator="wrk" if wrk else "aiohttp",
            requests=int(res["requests"]),
            errors=int(res["errors"]),
            elapsed=float(res["elapsed"]),
            p50_ms=float(res["p50_ms"]),
            p99_ms=float(res["p99_ms"]),
            cpu=cpu,
            extra={"background_cores": idle_before, **{k: v for k, v in res.items() if k == "status"}},
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_loadgen(args: list[str], timeout: float) -> dict[str, Any]:
    """Run ``loadgen.py`` with ``args`` (plus ``--out``) and return its JSON report."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-load-"))
    try:
        out_file = tmp / "out.json"
        res = subprocess.run(
            [PYTHON, str(BENCH_DIR / "loadgen.py"), *args, "--out", str(out_file)],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if res.returncode != 0 or not out_file.exists():
            raise BenchError(f"loadgen {args[0]} failed: {res.stderr.decode(errors='replace')[-2000:]}")
        report: dict[str, Any] = json.loads(out_file.read_text())
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


def background_cores(seconds: float = 0.5) -> float:
    """How many cores something else keeps busy right now (sampled over ``seconds``)."""
    b0, t0 = machine_busy_seconds()
    time.sleep(seconds)
    b1, t1 = machine_busy_seconds()
    return (b1 - b0) / max((t1 - t0) / NCPU, 1e-9)


def wait_for_quiet(limit: float = 0.3, timeout: float = 5.0) -> float:
    """Wait (bounded) until fewer than ``limit`` cores are busy; return the last sample.

    The benchmarks share the machine; a test suite running beside them would skew every figure,
    so the measured load is recorded with each result and a busy machine is reported."""
    end = time.monotonic() + timeout
    busy = background_cores()
    while busy > limit and time.monotonic() < end:
        busy = background_cores()
    if busy > limit:
        log(f"warning: the machine is not idle ({busy:.2f} cores busy before the run)")
    return busy


def summarize_profile(folded: Path, top: int = 40) -> str:
    """Inclusive and self shares per function from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            re.sub(r" \((?:.*/site-packages/|.*/src/|.*/lib/python3\.\d+/)?(.*?):\d+\)$", r" (\1)", f)
            for f in stack.split(";")
        ]
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    lines = [f"{folded.name}: {total} samples while holding the GIL", "", "inclusive:"]
    scaffolding = re.compile(r"\((typer|ingestlayer/cli\.py|threading\.py|asyncio/runners\.py)|^<module>")
    ranked = [
        (f, c) for f, c in sorted(inclusive.items(), key=lambda kv: -kv[1]) if not scaffolding.search(f)
    ]
    lines += [f"{c / total:6.1%}  {f}" for f, c in ranked[:top]]
    lines += ["", "self:"]
    lines += [f"{c / total:6.1%}  {f}" for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:top]]
    return "\n".join(lines) + "\n"
